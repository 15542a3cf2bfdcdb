"""evaluation.py: metrics equal sklearn's; bad submissions get one clear line and exit 2."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, assert_clean_error, run
from sklearn.metrics import f1_score

from masktk.metrics.classification import score


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


@pytest.mark.e2e
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


@pytest.mark.e2e
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


def _voc(path, objects):
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                   f"<ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    path.write_text(f"<annotation><filename>{path.stem}.jpg</filename>{objs}</annotation>")


@pytest.mark.e2e
def test_boxes_benchmark_matches_faces_by_iou_on_a_hand_made_case(tmp_path):
    from masktk.faces.boxes import match_boxes

    # two predictions overlap one face: the better one takes it, the other stays unmatched
    assert match_boxes([[0, 0, 10, 10]], [[1, 1, 10, 10], [0, 0, 10, 10]]) == [(0, 1)]
    assert match_boxes([[0, 0, 10, 10]], [[6, 6, 16, 16]]) == []  # IoU 0.09
    d = tmp_path / "kaggle"
    (d / "images").mkdir(parents=True)
    (d / "annotations").mkdir()
    for stem in ("a", "b"):
        (d / "images" / f"{stem}.png").write_bytes(b"")  # only the files' presence is read
    _voc(d / "annotations" / "a.xml", [("with_mask", (0, 0, 40, 40)), ("without_mask", (100, 0, 140, 40)),
                                      ("mask_weared_incorrect", (200, 0, 240, 40)), ("with_mask", (300, 0, 310, 10))])
    _voc(d / "annotations" / "b.xml", [("con_mascarilla", (0, 0, 100, 100))])  # the MaskON repository's Spanish name
    pred = tmp_path / "pred"
    pred.mkdir()
    faces_a = [dict(box=[2, 2, 40, 40], mask=0), dict(box=[100, 0, 140, 40], mask=0),  # not wear called wear
               dict(box=[500, 0, 540, 40], mask=2)]  # a face nobody annotated; the incorrect one is missed
    (pred / "a.json").write_text(json.dumps({"photo": str(d / "images" / "a.png"), "faces": faces_a}))
    (pred / "b.json").write_text(json.dumps({"photo": "elsewhere/b.png", "faces": [dict(box=[0, 0, 100, 95], mask=0)]}))
    p = run("evaluation.py", "--boxes", d, "--pred_dir", pred)
    res = json.loads(p.stdout.splitlines()[0])
    assert res["annotated"] == 4 and res["missed"] == 1 and res["n"] == 3  # the 10 px face is below --min_face
    assert res["mask_accuracy"] == pytest.approx(2 / 3) and res["always_wear_accuracy"] == pytest.approx(2 / 3)
    full = json.loads((pred / "boxes_scores.json").read_text())
    assert full["confusion"] == [[2, 0, 0], [0, 0, 0], [1, 0, 0]]
    # `... | head -1` (docs/results.md, make realmask-bench): a reader that leaves early is no error
    r, w = os.pipe()
    os.close(r)
    p = subprocess.run([sys.executable, "evaluation.py", "--boxes", str(d), "--pred_dir", str(pred)], cwd=REPO,
                       stdout=w, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(w)
    assert p.returncode == 0 and p.stderr == "", p.stderr[-2000:]
    assert full["by_size"]["32-63"]["n"] == 2 and full["by_size"]["64-127"]["n"] == 1
    (pred / "b.json").write_text("{damaged")  # its photo's face now counts as missed: said, not silent
    p = run("evaluation.py", "--boxes", d, "--pred_dir", pred)
    assert json.loads(p.stdout.splitlines()[0])["missed"] == 2 and "b.json" in p.stderr and "warning" in p.stderr
    (d / "images" / "c.png").write_bytes(b"")
    (d / "annotations" / "c.xml").write_text("<annotation><object><name>mask</name></object></annotation>")
    assert_clean_error(run("evaluation.py", "--boxes", d, "--pred_dir", pred, check=False), "c.xml", "'mask'")
