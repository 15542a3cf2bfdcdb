"""train.py: every mode end to end with a tiny real timm model; CV coverage; resume; reproducibility."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import BASE, REPO, TINY, assert_clean_error, run

from masktk.checkpoint import load_checkpoint
from masktk.data.table import build_table
from masktk.errors import Log
from masktk.metrics.classification import score
from masktk.probs import combine_probs


def _base(tiny_root, model_dir):
    return ["train.py", "--data_dir", tiny_root / "train", "--model_dir", model_dir, *TINY]


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_every_run_fits_its_decision_on_people_it_did_not_train_on(tiny_runs):
    for name in ("single", "cv"):
        rec = json.loads((tiny_runs[name] / "decision.json").read_text())
        assert len(rec["offsets"]) == 18 and rec["used"] == (rec["f1_cross_fitted"] > rec["f1_argmax"])
        assert ("oof.csv" if name == "cv" else "valid_preds.csv") in rec["fitted_on"]
    vp = pd.read_csv(tiny_runs["single"] / "valid_preds.csv")
    assert json.loads((tiny_runs["single"] / "decision.json").read_text())["n"] == len(vp)


@pytest.mark.e2e
def test_cv_false_means_false_and_runs_never_overwrite(tiny_root, tmp_path):
    run(*_base(tiny_root, tmp_path), "--cv", "False", "--epochs", "1")
    run(*_base(tiny_root, tmp_path), "--cv=false", "--epochs", "1")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["exp", "exp2"]
    assert not list((tmp_path / "exp").glob("fold*"))


@pytest.mark.e2e
def test_same_seed_same_metrics(tiny_root, tmp_path):
    a = run(*_base(tiny_root, tmp_path), "--run_dir", tmp_path / "a", "--epochs", "1")
    b = run(*_base(tiny_root, tmp_path), "--run_dir", tmp_path / "b", "--epochs", "1")
    ha = json.loads((tmp_path / "a" / "metrics.json").read_text())["history"]
    hb = json.loads((tmp_path / "b" / "metrics.json").read_text())["history"]
    drop = ("time",)
    assert [{k: v for k, v in h.items() if k not in drop} for h in ha] == \
           [{k: v for k, v in h.items() if k not in drop} for h in hb]
    assert a.returncode == b.returncode == 0


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
@pytest.mark.parametrize("flag,value,needle", [("--model", "efficientnet_b99", "efficientnet_b0"),
                                               ("--loss", "hinge", "label_smoothing"),
                                               ("--optimizer", "adamx", "adamw")])
def test_unknown_names_fail_listing_valid_ones(tiny_root, tmp_path, flag, value, needle):
    p = run(*_base(tiny_root, tmp_path), flag, value, check=False)
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr


@pytest.mark.e2e
def test_extra_data_only_trains(tiny_root, tmp_path):
    run("synthetic.py", "--out", tmp_path / "extra", "--people", "8", "--seed", "9")
    run(*_base(tiny_root, tmp_path), "--run_dir", tmp_path / "r", "--epochs", "1", "--extra_data", tmp_path / "extra" / "train")
    vp = pd.read_csv(tmp_path / "r" / "valid_preds.csv")
    assert not vp["people_path"].str.startswith("extra").any()
    meta = load_checkpoint(tmp_path / "r" / "best.pth")["meta"]
    n_main = len(pd.read_csv(tiny_root / "train" / "train.csv"))
    n_extra = len(pd.read_csv(tmp_path / "extra" / "train" / "train.csv"))
    assert meta["train_people"] + meta["valid_people"] == n_main + n_extra


@pytest.mark.e2e
def test_age_bounds_train_labels_but_validate_officially(tiny_root, tmp_path):
    run(*_base(tiny_root, tmp_path), "--run_dir", tmp_path / "r", "--epochs", "1", "--age_bounds", "29", "58")
    vp = pd.read_csv(tmp_path / "r" / "valid_preds.csv")
    t = build_table(tiny_root / "train", log=Log(quiet=True)).set_index("path")
    assert (vp["label"].to_numpy() == t.loc[vp["path"], "label"].to_numpy()).all()  # official 30/60 labels
    assert load_checkpoint(tmp_path / "r" / "best.pth")["meta"]["age_bounds"] == [29, 58]


@pytest.mark.e2e
def test_original_train_command_line_with_the_crops_folder_as_channel(tiny_root, tmp_path):
    """SM_CHANNEL_TRAIN at images/ (the original pointed it at the crops), and the original's flag names."""
    env = {"SM_CHANNEL_TRAIN": str(tiny_root / "train" / "images"), "SM_MODEL_DIR": str(tmp_path / "model")}
    p = run("train.py", "--model_name", "test_efficientnet", "--resize", "32", "32", "--criterion", "symmetric",
            "--optimizer", "Adam", "--augmentation", "BaseAugmentation", "--name", "exp", "--pretrained", "False",
            "--batch_size", "16", "--epochs", "1", "--progress", "False", env=env)
    assert f"training on {tiny_root / 'train'} with --source images" in p.stdout
    cfg = json.loads((tmp_path / "model" / "exp" / "config.json").read_text())
    assert (cfg["model"], cfg["img_size"], cfg["loss"], cfg["optimizer"], cfg["augment"]) == \
        ("test_efficientnet", [32, 32], "symmetric_ce", "adam", "none")
    assert cfg["train_dir"] == str(tiny_root / "train") and cfg["source"] == "images"


@pytest.mark.e2e
def test_original_multi_2_is_three_models_with_cv_and_inference_reads_it_the_original_way(tiny_root, tmp_path):
    md = tmp_path / "model"
    run("train.py", "--data_dir", tiny_root / "train", "--model_dir", md, *BASE, "--img_size", "32", "32",
        "--multi", "2", "--k_folds", "2", "--name", "multi")
    assert all((md / "multi" / f"fold{i}" / t / "best.pth").is_file() for i in (0, 1) for t in ("mask", "gender", "age"))
    oof = __import__("pandas").read_csv(md / "multi" / "oof.csv")  # merge_cv joins the three tasks of each fold
    assert np.allclose(oof[[f"p{k}" for k in range(18)]].sum(axis=1), 1, atol=1e-4)
    # --model_dir relative to ./model, --pth_name as a prefix, --multi_label, --model_name/--resize accepted
    p = run(REPO / "inference.py", "--data_dir", tiny_root / "eval", "--model_dir", "multi", "--pth_name", "best",
            "--multi_label", "True", "--cv", "True", "--model_name", "x", "--resize", "32", "32",
            "--output_dir", tmp_path / "out", cwd=tmp_path)
    assert "using model/multi" in p.stderr and (tmp_path / "out" / "output.csv").is_file()


def test_best_epoch_after_a_resume_is_the_last_improvement():
    from masktk.train.trainer import best_epoch_of
    history = [{"epoch": 1, "best": True}, {"epoch": 2, "best": False}, {"epoch": 3, "best": True},
               {"epoch": 4, "best": False}]
    assert best_epoch_of(history)["epoch"] == 3


@pytest.mark.e2e
def test_resume_refuses_other_settings_and_empty_runs_and_reused_folders_refuse_stale_state(tiny_root, tmp_path):
    base = ["train.py", "--data_dir", tiny_root / "train", "--model_dir", tmp_path, *BASE, "--img_size", "32", "32"]
    run(*base, "--run_dir", tmp_path / "r")
    assert_clean_error(run("train.py", "--resume", tmp_path / "r", "--epochs", "3", check=False), "--epochs differ")
    (tmp_path / "r" / "metrics.json").unlink()  # as if killed after its first epoch
    assert_clean_error(run(*base, "--run_dir", tmp_path / "r", check=False), "unfinished run", "--resume")
    (tmp_path / "empty").mkdir()
    shutil.copy(tmp_path / "r" / "config.json", tmp_path / "empty")
    assert_clean_error(run("train.py", "--resume", tmp_path / "empty", check=False), "nothing to resume")


@pytest.mark.e2e
def test_a_run_that_fails_on_its_data_leaves_no_folder(tmp_path):
    p = run("train.py", "--data_dir", tmp_path / "missing", "--model_dir", tmp_path / "m", *BASE, check=False)
    assert_clean_error(p, "missing")
    assert not [d for d in (tmp_path / "m").glob("exp*")]


@pytest.mark.e2e
def test_extra_data_holding_the_training_photos_is_refused(tiny_root, tmp_path):
    """The same folder (here through a link) as --data_dir and --extra_data put every person on both
    sides of the split: trained on and validated on, a flattering validation F1, silently."""
    (tmp_path / "link").symlink_to(tiny_root / "train")
    p = run("train.py", "--data_dir", tiny_root / "train", "--extra_data", tmp_path / "link", "--model_dir",
            tmp_path / "m", *BASE, "--img_size", "32", "32", check=False)
    assert_clean_error(p, str(tmp_path / "link"), "--extra_data", "validated on")
    assert not (tmp_path / "m").exists()


@pytest.mark.e2e
def test_a_run_goes_on_only_with_the_people_it_started_with(tiny_root, tmp_path):
    """Fold jobs (or --resume) on data that changed since the run started drew other folds: a fold's
    validation people could have been trained on by another fold, silently."""
    data = tmp_path / "train"
    shutil.copytree(tiny_root / "train", data)
    cv = ["--data_dir", data, "--run_dir", tmp_path / "run", *BASE, "--img_size", "32", "32", "--cv", "True",
          "--k_folds", "2"]
    run("train.py", *cv, "--fold", "0")
    assert json.loads((tmp_path / "run" / "people.json").read_text())["people"] > 0
    shutil.rmtree(sorted((data / "images").iterdir())[0])  # one person gone
    p = run("train.py", *cv, "--fold", "1", check=False)
    assert_clean_error(p, str(tmp_path / "run"), "started on other data")
    assert not (tmp_path / "run" / "fold1").exists()
    shutil.rmtree(data)
    shutil.copytree(tiny_root / "train", data)  # the data it started with: the fold job goes on
    run("train.py", *cv, "--fold", "1")
    assert (tmp_path / "run" / "oof.csv").is_file()


@pytest.mark.e2e
def test_runs_started_together_get_a_folder_each(tiny_root, tmp_path):
    """Seeds launched together (`for s in 1 2; do python train.py --seed $s & done`) both chose the free
    name exp, loaded their data, then trained into that one folder, each overwriting the other's
    checkpoints. The new folder is now named when it is created, after the data has loaded, and claimed
    with an exclusive mkdir (which closes what remains of the race)."""
    from concurrent.futures import ThreadPoolExecutor
    md = tmp_path / "model"
    with ThreadPoolExecutor(2) as ex:
        procs = list(ex.map(lambda s: run("train.py", "--data_dir", tiny_root / "train", "--model_dir", md, *BASE,
                                          "--img_size", "32", "32", "--seed", str(s)), (1, 2)))
    runs = sorted(md.glob("exp*"))
    assert [r.name for r in runs] == ["exp", "exp2"], runs
    assert sorted(json.loads((r / "config.json").read_text())["seed"] for r in runs) == [1, 2]
    assert all((r / "best.pth").is_file() and json.loads((r / "config.json").read_text())["run_dir"] == str(r)
               for r in runs)
    assert sorted(p.stdout.strip().splitlines()[-1].split("-> ")[-1] for p in procs) == [str(r) for r in runs]


@pytest.mark.e2e
def test_early_stopping_clip_grad_and_ema_run_and_resume(tiny_root, tmp_path):
    base = ["train.py", "--data_dir", tiny_root / "train", "--model_dir", tmp_path, *TINY, "--epochs", "10",
            "--patience", "1", "--clip_grad", "1.0", "--ema", "0.9", "--lr", "1e-6", "--run_dir", tmp_path / "r"]
    p = run(*base)
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    # lr 1e-6: the weights barely move, so validation F1 stops rising once BatchNorm's running statistics
    # settle (it still rose for 3 epochs here), and patience 1 ends the run well before 10 epochs
    assert "early stop" in p.stdout and len(metrics["history"]) < 10
    last = torch.load(tmp_path / "r" / "last.pth", weights_only=True)
    assert {k.removeprefix("module.") for k in last["ema"]} == set(last["model"])  # EMA weights kept for --resume


@pytest.mark.e2e
def test_heads_cv_run_merges_its_out_of_fold_predictions(tiny_root, tmp_path):
    run("train.py", "--data_dir", tiny_root / "train", "--model_dir", tmp_path, *BASE, "--img_size", "32", "32",
        "--heads", "--cv", "True", "--k_folds", "2", "--run_dir", tmp_path / "h")
    import pandas as pd
    oof = pd.read_csv(tmp_path / "h" / "oof.csv")
    from masktk.data.table import build_table
    from masktk.errors import Log
    assert sorted(oof["path"]) == sorted(build_table(tiny_root / "train", log=Log(quiet=True))["path"])
    assert np.allclose(oof[[f"p{k}" for k in range(18)]].sum(axis=1), 1, atol=1e-4)


def _all_finite(path):
    """Every floating tensor in a checkpoint (weights, BatchNorm statistics, optimizer state) is finite."""
    def walk(v):
        if torch.is_tensor(v):
            return not v.is_floating_point() or bool(torch.isfinite(v).all())
        if isinstance(v, dict):
            return all(walk(x) for x in v.values())
        if isinstance(v, (list, tuple)):
            return all(walk(x) for x in v)
        return True
    return walk(torch.load(path, map_location="cpu", weights_only=True))


@pytest.mark.e2e
def test_a_nan_stop_names_a_checkpoint_whose_tensors_are_all_finite(tiny_root, tmp_path):
    """With lite0 at --lr 1e3 the loss stays finite while BatchNorm statistics overflow: the run used to end
    'done', its last.pth holding inf (and a NaN stop to name such a file 'the last good checkpoint')."""
    run_dir = tmp_path / "r"
    p = run("train.py", "--data_dir", tiny_root / "train", "--run_dir", run_dir, *BASE, "--img_size", "32", "32",
            "--model", "efficientnet_lite0", "--epochs", "4", "--lr", "1e3", check=False)
    assert_clean_error(p, "nan or inf")
    line = next(x for x in p.stderr.splitlines() if x.startswith("error:"))
    assert "last good checkpoint is" in line or "no checkpoint was saved yet" in line, line
    saved = list(run_dir.rglob("*.pth"))
    assert all(_all_finite(f) for f in saved), [f for f in saved if not _all_finite(f)]
    if "last good checkpoint is" in line:
        assert _all_finite(line.split("last good checkpoint is ")[1].split(";")[0])


@pytest.mark.e2e
def test_a_finished_run_folder_reused_with_other_settings_is_an_error(tiny_root, tmp_path):
    """It used to print 'already finished, skipped', exit 0 and rewrite summary.json with wall_time_s 0.0."""
    run_dir = tmp_path / "r"
    args = ["train.py", "--data_dir", tiny_root / "train", "--run_dir", run_dir, *BASE, "--img_size", "32", "32"]
    run(*args)
    summary = (run_dir / "summary.json").read_bytes()
    assert_clean_error(run(*args, "--lr", "0.01", check=False), str(run_dir), "--lr")
    assert (run_dir / "summary.json").read_bytes() == summary
    again = run(*args)  # the same settings: nothing to do, and nothing rewritten
    assert "already finished" in again.stdout and (run_dir / "summary.json").read_bytes() == summary


@pytest.mark.e2e
def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tiny_root, tmp_path):
    """Such folders (config.json and people.json only) used to bump the next run to exp2."""
    md = tmp_path / "m"
    args = ["train.py", "--data_dir", tiny_root / "train", "--model_dir", md, *BASE, "--img_size", "32", "32"]
    assert_clean_error(run(*args, "--lr", "1e6", check=False), "no checkpoint was saved yet")
    assert not list(md.glob("exp*"))
    run(*args)
    assert [d.name for d in md.glob("exp*")] == ["exp"]
