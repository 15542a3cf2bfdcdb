"""evaluation.py: metrics equal sklearn's; bad submissions get one clear line and exit 2."""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from conftest import assert_clean_error, run
from evaluation import score


def test_macro_f1_matches_sklearn_on_random_labels():
    rng = np.random.default_rng(0)
    for n in (10, 100, 1000):
        y, p = rng.integers(0, 18, n), rng.integers(0, 18, n)
        y[y == 5] = 4  # a class absent from the truth still counts, as in the competition
        s = score(y, p)
        assert s["f1"] == pytest.approx(f1_score(y, p, average="macro", labels=range(18), zero_division=0))
        assert s["accuracy"] == pytest.approx((y == p).mean())
        assert s["f1_mask"] == pytest.approx(f1_score(y // 6, p // 6, average="macro", labels=range(3), zero_division=0))


def test_macro_f1_against_a_count_by_hand():
    """Three classes present of the 18; every other class has F1 0 and still counts in the mean."""
    y = np.array([0, 0, 0, 1, 1, 17])
    p = np.array([0, 0, 1, 1, 1, 0])
    # class 0: tp 2, fp 1, fn 1 -> F1 2/3; class 1: tp 2, fp 1, fn 0 -> 0.8; class 17: tp 0 -> 0
    assert score(y, p)["f1"] == pytest.approx((2 / 3 + 0.8 + 0) / 18)
    assert score(y, p)["accuracy"] == pytest.approx(4 / 6)


def _write(tmp_path, gt, sub):
    (tmp_path / "gt").mkdir(exist_ok=True)
    (tmp_path / "out").mkdir(exist_ok=True)
    gt.to_csv(tmp_path / "gt" / "gt.csv", index=False)
    sub.to_csv(tmp_path / "out" / "output.csv", index=False)
    return {"SM_GROUND_TRUTH_DIR": str(tmp_path / "gt"), "SM_OUTPUT_DATA_DIR": str(tmp_path / "out")}


def test_cli_scores_and_writes_confusion_png(tmp_path):
    rng = np.random.default_rng(1)
    ids = [f"{i:04d}.jpg" for i in range(60)]
    gt = pd.DataFrame({"ImageID": ids, "ans": rng.integers(0, 18, 60)})
    sub = pd.DataFrame({"ImageID": ids[::-1], "ans": rng.integers(0, 18, 60)})  # any order
    env = _write(tmp_path, gt, sub)
    p = run("evaluation.py", env=env)
    out = json.loads(p.stdout.splitlines()[0])
    m = gt.merge(sub, on="ImageID")
    assert out["f1"] == pytest.approx(f1_score(m.ans_x, m.ans_y, average="macro", labels=range(18), zero_division=0))
    assert (tmp_path / "out" / "output_confusion.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "output_scores.json").read_text())["n"] == 60


@pytest.mark.parametrize("case,needle", [
    ("missing", "missing"), ("extra", "extra"), ("range", "0-17"), ("column", "'ans'"), ("text", "0-17"),
    ("dupe", "twice")])
def test_bad_submissions_exit_2(tmp_path, case, needle):
    ids = [f"{i}.jpg" for i in range(20)]
    gt = pd.DataFrame({"ImageID": ids, "ans": np.arange(20) % 18})
    sub = gt.copy()
    if case == "missing":
        sub = sub.iloc[1:]
    elif case == "extra":
        sub = pd.concat([sub, pd.DataFrame({"ImageID": ["x.jpg"], "ans": [1]})])
    elif case == "range":
        sub.loc[3, "ans"] = 18
    elif case == "column":
        sub = sub.rename(columns={"ans": "answer"})
    elif case == "text":
        sub["ans"] = sub["ans"].astype(str)
        sub.loc[2, "ans"] = "cat"
    elif case == "dupe":
        sub.loc[1, "ImageID"] = sub.loc[0, "ImageID"]
    env = _write(tmp_path, gt, sub)
    assert_clean_error(run("evaluation.py", env=env, check=False), needle, "output.csv")
    assert not (tmp_path / "out" / "output_scores.json").exists()
