"""train.py: every mode end to end with a tiny real timm model; CV coverage; resume; reproducibility."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, TINY, run

from checkpoint import load_checkpoint
from dataset import Log, build_table
from evaluation import score
from model import combine_probs


def _base(tiny_root, model_dir):
    return ["train.py", "--data_dir", tiny_root / "train", "--model_dir", model_dir, *TINY]


def test_single_run_writes_a_self_describing_run_folder(tiny_runs):
    d = tiny_runs["single"]
    for f in ("config.json", "best.pth", "last.pth", "metrics.json", "valid_preds.csv", "summary.json"):
        assert (d / f).is_file(), f
    assert list((d / "tb").iterdir())
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model"] == "test_efficientnet" and cfg["cv"] is False and cfg["img_size"] == [32, 32]
    meta = load_checkpoint(d / "best.pth")["meta"]
    for k in ("arch", "tasks", "img_size", "mean", "std", "crop", "age_bounds", "config", "metrics", "epoch"):
        assert k in meta, k
    m = json.loads((d / "metrics.json").read_text())
    assert m["best_f1"] == max(h["valid_f1"] for h in m["history"])  # best chosen by validation macro F1
    # the logged F1 is over all validation predictions at once (not a mean over batches)
    vp = pd.read_csv(d / "valid_preds.csv")
    assert score(vp["label"], vp[[f"p{i}" for i in range(18)]].to_numpy().argmax(1))["f1"] == pytest.approx(m["best_f1"])


def test_cv_folds_are_person_disjoint_and_oof_covers_every_image_once(tiny_root, tiny_runs):
    d = tiny_runs["cv"]
    oof = pd.read_csv(d / "oof.csv")
    table = build_table(tiny_root / "train", log=Log(quiet=True))
    assert sorted(oof["path"]) == sorted(table["path"])  # every training image exactly once
    folds = oof.groupby("fold")["people_path"].apply(set)
    assert len(folds) == 3
    for i in range(3):
        for j in range(i + 1, 3):
            assert not folds[i] & folds[j]
    cv = json.loads((d / "cv.json").read_text())
    assert cv["f1"] == pytest.approx(score(oof["label"], oof[[f"p{i}" for i in range(18)]].to_numpy().argmax(1))["f1"])
    for i in range(3):
        assert (d / f"fold{i}" / "best.pth").is_file()


def test_multi_and_heads_runs_carry_the_years_head_where_asked(tiny_runs):
    for t in ("mask", "gender", "age"):
        meta = load_checkpoint(tiny_runs["multi"] / t / "best.pth")["meta"]
        assert meta["tasks"] == [t] + (["years"] if t == "age" else [])  # only the age model learns years
    assert load_checkpoint(tiny_runs["heads"] / "best.pth")["meta"]["tasks"] == ["mask", "gender", "age", "years"]
    for i in range(3):
        assert load_checkpoint(tiny_runs["cv"] / f"fold{i}" / "best.pth")["meta"]["tasks"] == ["label", "years"]
        vp = pd.read_csv(tiny_runs["cv"] / f"fold{i}" / "valid_preds.csv")
        assert {"years0", "years42"} <= set(vp.columns) and np.allclose(vp.filter(like="years").sum(axis=1), 1, atol=1e-4)
    assert load_checkpoint(tiny_runs["single"] / "best.pth")["meta"]["tasks"] == ["label"]
    # the unit's validation F1 is scored on the label/age heads alone
    m = json.loads((tiny_runs["heads"] / "metrics.json").read_text())
    vp = pd.read_csv(tiny_runs["heads"] / "valid_preds.csv")
    probs = {t: torch.tensor(vp.filter(regex=f"^{t}\\d+$").to_numpy()) for t in ("mask", "gender", "age", "years")}
    assert score(vp["label"], combine_probs(probs).argmax(1).numpy())["f1"] == pytest.approx(m["best_f1"], abs=1e-4)


def test_every_run_fits_its_decision_on_people_it_did_not_train_on(tiny_runs):
    for name in ("single", "cv"):
        rec = json.loads((tiny_runs[name] / "decision.json").read_text())
        assert len(rec["offsets"]) == 18 and rec["used"] == (rec["f1_cross_fitted"] > rec["f1_argmax"])
        assert ("oof.csv" if name == "cv" else "valid_preds.csv") in rec["fitted_on"]
    vp = pd.read_csv(tiny_runs["single"] / "valid_preds.csv")
    assert json.loads((tiny_runs["single"] / "decision.json").read_text())["n"] == len(vp)


def test_cv_false_means_false_and_runs_never_overwrite(tiny_root, tmp_path):
    run(*_base(tiny_root, tmp_path), "--cv", "False", "--epochs", "1")
    run(*_base(tiny_root, tmp_path), "--cv=false", "--epochs", "1")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["exp", "exp2"]
    assert not list((tmp_path / "exp").glob("fold*"))


def test_same_seed_same_metrics(tiny_root, tmp_path):
    a = run(*_base(tiny_root, tmp_path), "--run_dir", tmp_path / "a", "--epochs", "1")
    b = run(*_base(tiny_root, tmp_path), "--run_dir", tmp_path / "b", "--epochs", "1")
    ha = json.loads((tmp_path / "a" / "metrics.json").read_text())["history"]
    hb = json.loads((tmp_path / "b" / "metrics.json").read_text())["history"]
    drop = ("time",)
    assert [{k: v for k, v in h.items() if k not in drop} for h in ha] == \
           [{k: v for k, v in h.items() if k not in drop} for h in hb]
    assert a.returncode == b.returncode == 0


def test_killed_run_resumes_to_the_same_weights(tiny_root, tmp_path):
    args = [*_base(tiny_root, tmp_path), "--epochs", "4", "--augment", "strong", "--cutmix", "0.5", "--ema", "0.9"]
    run(*args, "--run_dir", tmp_path / "full")
    # the same run, killed (SIGKILL) once epoch 2's checkpoint is on disk, then resumed
    cmd = [sys.executable, *map(str, args), "--run_dir", tmp_path / "cut"]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_epoch(p, tmp_path / "cut" / "last.pth", 1)
    assert p.poll() is None, "the run ended before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "cut" / "metrics.json").exists()
    run("train.py", "--resume", tmp_path / "cut", "--progress", "False")
    a, b = load_checkpoint(tmp_path / "full" / "last.pth"), load_checkpoint(tmp_path / "cut" / "last.pth")
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["ema"] and all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])  # the EMA resumes exactly too
    ma = json.loads((tmp_path / "full" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert ma["best_f1"] == mb["best_f1"] and ma["best_epoch"] == mb["best_epoch"]


def _wait_for_epoch(p, last, epoch):
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if last.is_file() and load_checkpoint(last)["epoch"] >= epoch:
            return
        time.sleep(0.05)


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_run_says_how_to_resume_and_leaves_no_temp_file(tiny_root, tmp_path, sig, status):
    # Ctrl-C, or a scheduler's SIGTERM at its time limit: one line with the command that continues the run
    run_dir = tmp_path / "r"
    cmd = [sys.executable, *map(str, _base(tiny_root, tmp_path)), "--epochs", "8", "--run_dir", str(run_dir)]
    # SIGINT as a terminal sends it (a parent that ignores it would pass that on, and Python would keep it)
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_epoch(p, run_dir / "last.pth", 0)
    assert p.poll() is None, "the run ended before it could be interrupted"
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == status and "Traceback" not in err, (p.returncode, err[-2000:])
    hints = [line for line in err.splitlines() if "--resume" in line]
    assert hints and hints[0].endswith(f"continue it with: python train.py --resume {run_dir}"), err[-2000:]
    assert not (run_dir / "metrics.json").exists() and not list(run_dir.rglob(".tmp-*"))
    run("train.py", *hints[0].split("python train.py ")[1].split(), "--progress", "False")
    assert json.loads((run_dir / "metrics.json").read_text())["history"][-1]["epoch"] == 8


@pytest.mark.parametrize("flag,value,needle", [("--model", "efficientnet_b99", "efficientnet_b0"),
                                               ("--loss", "hinge", "label_smoothing"),
                                               ("--optimizer", "adamx", "adamw")])
def test_unknown_names_fail_listing_valid_ones(tiny_root, tmp_path, flag, value, needle):
    p = run(*_base(tiny_root, tmp_path), flag, value, check=False)
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr


def test_extra_data_only_trains(tiny_root, tmp_path):
    run("synthetic.py", "--out", tmp_path / "extra", "--people", "8", "--seed", "9")
    run(*_base(tiny_root, tmp_path), "--run_dir", tmp_path / "r", "--epochs", "1", "--extra_data", tmp_path / "extra" / "train")
    vp = pd.read_csv(tmp_path / "r" / "valid_preds.csv")
    assert not vp["people_path"].str.startswith("extra").any()
    meta = load_checkpoint(tmp_path / "r" / "best.pth")["meta"]
    n_main = len(pd.read_csv(tiny_root / "train" / "train.csv"))
    n_extra = len(pd.read_csv(tmp_path / "extra" / "train" / "train.csv"))
    assert meta["train_people"] + meta["valid_people"] == n_main + n_extra


def test_age_bounds_train_labels_but_validate_officially(tiny_root, tmp_path):
    run(*_base(tiny_root, tmp_path), "--run_dir", tmp_path / "r", "--epochs", "1", "--age_bounds", "29", "58")
    vp = pd.read_csv(tmp_path / "r" / "valid_preds.csv")
    t = build_table(tiny_root / "train", log=Log(quiet=True)).set_index("path")
    assert (vp["label"].to_numpy() == t.loc[vp["path"], "label"].to_numpy()).all()  # official 30/60 labels
    assert load_checkpoint(tmp_path / "r" / "best.pth")["meta"]["age_bounds"] == [29, 58]
