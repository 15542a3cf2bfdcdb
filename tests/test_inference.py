"""inference.py and predict.py: modes, order, combination by hand, TTA, clear failures."""
import json
import os
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, assert_clean_error, run

from masktk.checkpoint import load_checkpoint, model_from_checkpoint
from masktk.data.cache import decode_many
from masktk.data.table import read_eval
from masktk.predict.backends import load_torch_models
from masktk.predict.pipeline import find_groups, predict_probs, run_groups
from masktk.train.decisions import decide, read_offsets


def _infer(tiny_root, out, *args, check=True):
    env = {"SM_CHANNEL_EVAL": str(tiny_root / "eval"), "SM_OUTPUT_DATA_DIR": str(out)}
    return run("inference.py", *args, env=env, check=check)


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["single", "cv", "multi", "heads", "ensemble"])
def test_each_mode_writes_rows_in_info_order(tiny_root, tiny_runs, tmp_path, mode):
    r = tiny_runs
    args = {"single": ["--model_dir", r["single"]], "cv": ["--model_dir", r["cv"], "--cv=True", "--tta", "flip"],
            "multi": ["--model_dir", r["multi"], "--multi", "True"], "heads": ["--model_dir", r["heads"]],
            "ensemble": ["--ensemble=True", "--ensemble_model_dir", r["single"], r["cv"], r["multi"],
                         "--ensemble_model_name", "a", "b", "c", "--vote", "hard"]}[mode]
    p = _infer(tiny_root, tmp_path, *args, "--output_name", mode)
    assert "Warning" not in p.stderr, p.stderr  # e.g. PyTorch's about non-writable NumPy arrays
    sub = pd.read_csv(tmp_path / f"{mode}.csv", dtype={"ImageID": str})
    info = pd.read_csv(tiny_root / "eval" / "info.csv", dtype={"ImageID": str})
    assert sub["ImageID"].tolist() == info["ImageID"].tolist() and list(sub.columns) == ["ImageID", "ans"]
    assert sub["ans"].between(0, 17).all() and sub["ans"].dtype.kind == "i"
    probs = np.load(tmp_path / f"{mode}_probs.npy")
    assert probs.shape == (len(info), 18) and np.allclose(probs.sum(1), 1, atol=1e-4)
    if mode != "ensemble":  # the run's fitted macro-F1 offsets decide, when it has them
        assert (decide(probs, read_offsets(args[1])) == sub["ans"]).all()
    # evaluation reads it
    p = run("evaluation.py", "--gt_dir", tiny_root / "eval", "--output_dir", tmp_path, "--output_name", mode)
    assert 0 <= json.loads(p.stdout.splitlines()[0])["f1"] <= 1


@pytest.mark.e2e
def test_cv_average_and_multi_product_by_hand(tiny_root, tiny_runs):
    info, paths = read_eval(tiny_root / "eval")
    arrays, _ = decode_many(paths, [((32, 32), "center")])
    x = arrays[((32, 32), "center")]
    groups = find_groups(tiny_runs["cv"])
    assert len(groups) == 3
    per_fold = []
    for (ck,) in groups:
        m, meta = model_from_checkpoint(ck)
        per_fold.append(predict_probs(m, meta, x)["label"].numpy())
    assert np.allclose(run_groups(groups, arrays, load_torch_models(groups, "cpu"), batch_size=64), np.mean(per_fold, 0), atol=1e-6)
    mgroups = find_groups(tiny_runs["multi"])
    parts = {}
    for ck in mgroups[0]:
        m, meta = model_from_checkpoint(ck)
        parts.update({t: p.numpy() for t, p in predict_probs(m, meta, x).items()})
    assert "years" in parts  # the age model's training aid is predicted, and takes no part in the decision
    hand = np.stack([parts["mask"][:, c // 6] * parts["gender"][:, (c // 3) % 2] * parts["age"][:, c % 3]
                     for c in range(18)], 1)
    assert np.allclose(run_groups(mgroups, arrays, load_torch_models(mgroups, "cpu"), batch_size=64), hand, atol=1e-6)


@pytest.mark.e2e
def test_flip_tta_on_a_symmetric_input_changes_nothing(tiny_runs):
    m, meta = model_from_checkpoint(tiny_runs["single"] / "best.pth")
    half = np.random.default_rng(0).integers(0, 255, (4, 32, 16, 3), dtype=np.uint8)
    sym = np.concatenate([half, half[:, :, ::-1]], axis=2)
    a, b = predict_probs(m, meta, sym, "none")["label"], predict_probs(m, meta, sym, "flip")["label"]
    assert torch.allclose(a, b, atol=1e-6)
    asym = np.random.default_rng(1).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    assert not torch.allclose(predict_probs(m, meta, asym, "none")["label"], predict_probs(m, meta, asym, "flip")["label"])


@pytest.mark.e2e
def test_default_views_are_the_ones_the_run_fitted_its_decisions_on(tiny_root, tiny_runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_runs["single"], run_dir)
    ck = load_checkpoint(run_dir / "best.pth")
    ck["meta"]["config"]["tta"] = "none"  # as if trained with train.py --tta none
    torch.save(ck, run_dir / "best.pth")
    probs, said = {}, {}
    for name, args in {"default": [], "none": ["--tta", "none"], "flip_zoom": ["--tta", "flip_zoom"]}.items():
        said[name] = _infer(tiny_root, tmp_path, "--model_dir", run_dir, "--output_name", name, *args).stderr
        probs[name] = np.load(tmp_path / f"{name}_probs.npy")
    assert "tta=none," in said["default"]
    assert np.array_equal(probs["default"], probs["none"])
    assert not np.allclose(probs["default"], probs["flip_zoom"], atol=1e-4)


@pytest.mark.e2e
def test_corrupt_eval_image_exits_2_and_writes_nothing(tiny_root, tiny_runs, tmp_path):
    ev = tmp_path / "eval"
    shutil.copytree(tiny_root / "eval", ev)
    victim = pd.read_csv(ev / "info.csv")["ImageID"][3]
    (ev / "images" / victim).write_bytes(b"this is not a jpeg")
    out = tmp_path / "out"
    p = run("inference.py", "--data_dir", ev, "--model_dir", tiny_runs["single"], "--output_dir", out, check=False)
    assert_clean_error(p, victim)
    assert not list(out.glob("*.csv")) + list(out.glob("*.npy"))  # no submission, not even a partial one
    (ev / "images" / victim).unlink()
    p = run("inference.py", "--data_dir", ev, "--model_dir", tiny_runs["single"], "--output_dir", out, check=False)
    assert_clean_error(p, victim, "missing")


@pytest.mark.e2e
def test_mismatched_checkpoint_exits_2_and_writes_nothing(tiny_root, tiny_runs, tmp_path):
    ck = load_checkpoint(tiny_runs["single"] / "best.pth")
    bad = tmp_path / "run"
    bad.mkdir()
    ck["meta"]["tasks"] = ["mask"]  # claims 3 classes, holds 18
    torch.save(ck, bad / "best.pth")
    p = _infer(tiny_root, tmp_path / "out", "--model_dir", bad, check=False)
    assert_clean_error(p, "best.pth")
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
def test_a_cv_run_with_a_fold_unfinished_or_not_started_is_refused(tiny_runs, tmp_path):
    """Inference while fold jobs still ran averaged whatever folds had a best.pth (a fold in training has
    one from its best epoch so far), silently fewer or weaker models than the run has."""
    from masktk.errors import UserError
    from masktk.predict.pipeline import find_groups
    run = tmp_path / "cv"
    shutil.copytree(tiny_runs["cv"], run)
    assert len(find_groups(run)) == 3
    (run / "fold1" / "metrics.json").unlink()  # still training
    with pytest.raises(UserError, match="fold1 not finished"):
        find_groups(run)
    shutil.copytree(tiny_runs["cv"] / "fold1", run / "fold1", dirs_exist_ok=True)
    shutil.rmtree(run / "fold2")  # its job has not started
    with pytest.raises(UserError, match="fold2 not finished"):
        find_groups(run, cv=True)


@pytest.mark.e2e
def test_a_single_run_not_finished_is_predicted_with_a_warning(tiny_root, tiny_runs, tmp_path):
    """A run killed mid-training (out of memory, a reboot) or still training has a best.pth from its best
    epoch so far and no fitted decision: inference used it without a word."""
    done = _infer(tiny_root, tmp_path / "a", "--model_dir", tiny_runs["single"])
    assert "warning" not in done.stderr
    run_dir = tmp_path / "single"
    shutil.copytree(tiny_runs["single"], run_dir)
    (run_dir / "metrics.json").unlink()
    p = _infer(tiny_root, tmp_path / "b", "--model_dir", run_dir)
    warning = [line for line in p.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and str(run_dir) in warning[0] and f"--resume {run_dir}" in warning[0], p.stderr
    assert (tmp_path / "b" / "output.csv").is_file()


@pytest.mark.e2e
def test_cv_flag_means_what_it_says(tiny_root, tiny_runs, tmp_path):
    p = _infer(tiny_root, tmp_path, "--model_dir", tiny_runs["single"], "--cv", "True", check=False)
    assert_clean_error(p, "fold")
    p = _infer(tiny_root, tmp_path, "--model_dir", tiny_runs["cv"], "--cv", "False", check=False)
    assert_clean_error(p, "--cv True")


@pytest.mark.e2e
def test_predict_holds_a_chunk_of_photos_in_memory_not_the_whole_folder(tiny_runs, tmp_path):
    """A folder of phone photos (12 MP: 34 MiB each decoded) used to stay in memory whole until the end, so
    a few thousand did not fit; photos now go through in chunks (predict.CHUNK). Peak memory for three
    chunks' photos must be one chunk's above that for 4 photos, give or take half a chunk (without chunks it
    was 44 photos more; with a loop that kept the last chunk while reading the next, 28)."""
    import cv2
    import skimage.data

    from masktk.predict.photos import CHUNK
    cv2.imwrite(str(tmp_path / "p.jpg"), cv2.resize(cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR),
                                                    (3000, 2250)))
    peak = {}
    for n in (4, 3 * CHUNK):
        (tmp_path / f"in{n}").mkdir()
        for i in range(n):
            os.link(tmp_path / "p.jpg", tmp_path / f"in{n}" / f"{i}.jpg")
        code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        p = run("-c", code, sys.executable, REPO / "predict.py", tmp_path / f"in{n}", "--model_dir",
                tiny_runs["single"], "--out", tmp_path / f"out{n}", "--detect_size", "256")
        peak[n] = int(p.stdout) / 1024  # MiB
    assert len(list((tmp_path / f"out{3 * CHUNK}").glob("*.json"))) == 3 * CHUNK
    photo_mib = 3000 * 2250 * 3 / 2**20
    assert peak[3 * CHUNK] - peak[4] < (CHUNK - 4 + CHUNK / 2) * photo_mib, peak


@pytest.mark.e2e
def test_predict_finds_the_astronaut_face_and_writes_both_outputs(tiny_runs, tmp_path):
    import cv2
    import skimage.data
    photo = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(photo), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    blank = tmp_path / "wall.jpg"
    cv2.imwrite(str(blank), np.full((200, 300, 3), 128, np.uint8))
    p = run("predict.py", photo, blank, "--model_dir", tiny_runs["cv"], "--out", tmp_path / "pred")
    assert "wall.jpg: no face found" in p.stderr
    faces = json.loads((tmp_path / "pred" / "astronaut.json").read_text())["faces"]
    assert len(faces) == 1
    x1, y1, x2, y2 = faces[0]["box"]
    assert 150 < x1 < 215 and 30 < y1 < 100 and 240 < x2 < 300 and 140 < y2 < 210  # her face
    f = faces[0]
    assert f["label"] == f["mask"] * 6 + f["gender"] * 3 + f["age"] and len(f["probs"]) == 18
    assert (tmp_path / "pred" / "astronaut_pred.jpg").stat().st_size > 10000
    assert json.loads((tmp_path / "pred" / "wall.json").read_text())["faces"] == []
    # a folder of photos in formats other than the competition's (WebP, BMP, TIFF) is read too
    (tmp_path / "more").mkdir()
    for ext in ("webp", "bmp", "tif"):
        cv2.imwrite(str(tmp_path / "more" / f"astronaut_{ext}.{ext}"), cv2.imread(str(photo)))
    run("predict.py", tmp_path / "more", "--model_dir", tiny_runs["cv"], "--out", tmp_path / "pred2")
    for ext in ("webp", "bmp", "tif"):
        assert len(json.loads((tmp_path / "pred2" / f"astronaut_{ext}.json").read_text())["faces"]) == 1


def test_ensemble_weights_and_hard_vote_by_hand():
    from masktk.predict.submission import vote
    a = np.array([[0.6, 0.4] + [0] * 16, [0.2, 0.8] + [0] * 16])
    b = np.array([[0.1, 0.9] + [0] * 16, [0.3, 0.7] + [0] * 16])
    soft, ans = vote([a, b], [1, 3], "soft")
    assert np.allclose(soft, (a + 3 * b) / 4) and ans.tolist() == [1, 1]
    _, hard = vote([a, b, a], [1, 1, 1], "hard")  # votes: row 0 -> 0, 1, 0; row 1 -> 1, 1, 1
    assert hard.tolist() == [0, 1]
    _, tie = vote([a, b], [1, 1], "hard")  # row 0: one vote each; the soft vote (0.35 vs 0.65) breaks it
    assert tie.tolist() == [1, 1]


def test_zoom_tta_view_is_the_central_90_percent():
    from masktk.tta import view
    x = torch.arange(2 * 3 * 20 * 20, dtype=torch.float32).view(2, 3, 20, 20)
    z = view(x, "zoom")
    ref = torch.nn.functional.interpolate(x[..., 1:19, 1:19], size=(20, 20), mode="bilinear", align_corners=False)
    assert torch.equal(z, ref) and torch.equal(view(x, "flip_zoom"), ref.flip(-1))


@pytest.mark.e2e
def test_an_interrupted_faces_folder_is_not_used_by_inference(tiny_root, tiny_runs, tmp_path):
    """train and inference ask the same question (faces/boxes.csv, written last): a faces/ folder that an
    interrupted face_image.py left without it is ignored, and faces are cropped on the fly instead."""
    ck = torch.load(tiny_runs["single"] / "best.pth", weights_only=True)
    ck["meta"]["crop"] = "none"  # as if trained on faces/
    (tmp_path / "r").mkdir()
    torch.save(ck, tmp_path / "r" / "best.pth")
    data = tmp_path / "eval"
    shutil.copytree(tiny_root / "eval", data)
    (data / "faces").mkdir()
    shutil.copy(next((data / "images").iterdir()), data / "faces")  # one crop written, then the run stopped
    run("inference.py", "--data_dir", data, "--model_dir", tmp_path / "r", "--output_dir", tmp_path / "o")
    assert (tmp_path / "o" / "output.csv").is_file()


@pytest.mark.e2e
def test_inference_and_evaluation_never_replace_the_answers_or_a_users_file(tiny_root, tiny_runs, tmp_path):
    ev = tmp_path / "eval"
    shutil.copytree(tiny_root / "eval", ev)
    answers = (ev / "gt.csv").read_bytes()
    p = run("inference.py", "--data_dir", ev, "--model_dir", tiny_runs["single"], "--output_dir", ev,
            "--output_name", "gt", check=False)  # it used to overwrite gt.csv: evaluation then said accuracy 1.0
    assert_clean_error(p, "gt.csv", "not written by this toolkit")
    assert (ev / "gt.csv").read_bytes() == answers
    out = tmp_path / "out"
    args = ("inference.py", "--data_dir", ev, "--model_dir", tiny_runs["single"], "--output_dir", out)
    assert "replacing" not in run(*args).stderr
    assert "replacing 2 earlier result file(s)" in run(*args).stderr
    (out / "output_confusion.png").write_bytes(b"my figure")  # a file the user made where evaluation writes
    p = run("evaluation.py", "--gt_dir", ev, "--pred_dir", out, check=False)
    assert_clean_error(p, "output_confusion.png")
    assert (out / "output_confusion.png").read_bytes() == b"my figure"


@pytest.mark.e2e
def test_group_people_decides_gender_and_age_over_each_group(tiny_root, tiny_runs, tmp_path):
    """--group_people: each photo keeps its mask distribution; gender x age is its group's mean (a distance
    that joins every photo: one group, so every photo gets the same gender x age distribution)."""
    from masktk.predict.person_pooling import pool_people
    base = ["--model_dir", tiny_runs["single"], "--decision", "none"]
    _infer(tiny_root, tmp_path, *base, "--output_name", "alone")
    p = _infer(tiny_root, tmp_path, *base, "--output_name", "pooled", "--group_people", "True", "--group_distance", "1000")
    assert "people grouped:" in p.stderr and "in 1 groups" in p.stderr, p.stderr
    alone, pooled = (np.load(tmp_path / f"{n}_probs.npy") for n in ("alone", "pooled"))
    assert np.allclose(pooled, pool_people(alone, np.zeros(len(alone), int)), atol=1e-5)
    person = pooled.reshape(-1, 3, 6).sum(1)
    assert np.allclose(person, person[0], atol=1e-5) and not np.allclose(alone, pooled)
