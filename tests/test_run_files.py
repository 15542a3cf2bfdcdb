"""Nothing trusted blindly: every file the toolkit reads back (decision.json, config.json, crop.json, checkpoint
metadata, model.json and model.onnx, .masktk-outputs, .env) is held to the rules it was written by, and odd photos,
arrays and inputs either predict or are one line naming them."""
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, assert_clean_error, run

from masktk.errors import UserError


def _copy(run_dir, tmp_path, name="run"):
    return shutil.copytree(run_dir, tmp_path / name, ignore=shutil.ignore_patterns("tb", "*.onnx", "model.json"))


def test_decision_json_with_nan_or_not_used_or_odd_is_refused_or_ignored(tmp_path):
    from masktk.train.decisions import read_offsets
    path = tmp_path / "decision.json"
    record = {"offsets": [0.5] * 18, "used": True}
    path.write_text(json.dumps(record))
    assert np.allclose(read_offsets(tmp_path), 0.5)
    path.write_text(json.dumps(record | {"used": False}))  # fitted, not kept: argmax, whatever the offsets say
    assert read_offsets(tmp_path) is None
    path.write_text(json.dumps({"offsets": [0.5] * 18}))  # from before "used" existed: kept offsets
    assert read_offsets(tmp_path) is not None
    path.write_text(json.dumps(record).replace("0.5", "NaN", 1))
    with pytest.raises(UserError, match="decision.json: offsets holds nan"):
        read_offsets(tmp_path)
    for bad, needle in ((record | {"used": "yes"}, "used is 'yes'"), (record | {"offsets": [1] * 17}, "17 values"),
                        ([1, 2], "not a decision file")):
        path.write_text(json.dumps(bad))
        with pytest.raises(UserError, match=needle):
            read_offsets(tmp_path)


def test_config_json_is_held_to_the_flags_rules(tiny_runs, tmp_path):
    from masktk.train.settings import from_values, read_run_config, upgrade_config
    for run_dir in tiny_runs.values():  # what train.py wrote reads back unchanged
        saved = json.loads((run_dir / "config.json").read_text())
        assert read_run_config(run_dir) == from_values(upgrade_config(saved))
    saved = json.loads((tiny_runs["cv"] / "config.json").read_text())
    for key, value, needle in (("k_folds", 10**9, "--k_folds: must be at most 100"), ("k_folds", 1.5, "whole number"),
                               ("img_size", [32, float("nan")], "--img_size"), ("loss", "magic", "--loss"),
                               ("lr", -1, "--lr")):
        (tmp_path / "config.json").write_text(json.dumps(saved | {key: value}))
        with pytest.raises(UserError, match=needle) as e:
            read_run_config(tmp_path)
        assert "config.json" in str(e.value) and len(str(e.value)) < 400
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="JSON object"):
        read_run_config(tmp_path)


@pytest.mark.e2e
def test_a_cv_run_whose_config_asks_for_a_billion_folds_is_one_line_at_once(tiny_root, tiny_runs, tmp_path):
    cv = _copy(tiny_runs["cv"], tmp_path)
    cfg = json.loads((cv / "config.json").read_text())
    (cv / "config.json").write_text(json.dumps(cfg | {"k_folds": 10**9}))
    p = run("predict.py", tiny_root / "eval" / "images", "--run_dir", cv, "--output_dir", tmp_path / "out",
            check=False, timeout=120)
    assert_clean_error(p, "config.json", "k_folds")
    assert len(p.stderr) < 2000


def test_crop_json_is_held_to_face_image_flags_rules(tmp_path):
    from masktk.faces.crop import CropRecipe, read_crop_recipe
    good = CropRecipe("retinaface").to_dict()
    (tmp_path / "crop.json").write_text(json.dumps(good))
    assert read_crop_recipe(tmp_path) == CropRecipe("retinaface")
    for change, needle in (({"margin": [float("nan"), 0.1, 0.1]}, "margin"), ({"margin": [-0.1, 0.1, 0.1]}, "margin"),
                           ({"margin": [0.1, 0.1]}, "margin"), ({"detector": "magic"}, "detector"),
                           ({"detect_size": -3}, "detect_size"), ({"thresholds": [0.6, 0.7, 7]}, "thresholds"),
                           ({"align": "no"}, "align")):
        (tmp_path / "crop.json").write_text(json.dumps(good | change))
        with pytest.raises(UserError, match=needle) as e:
            read_crop_recipe(tmp_path)
        assert "crop.json" in str(e.value)


@pytest.mark.parametrize("field,value,needle", [("img_size", [-5, 32], "img_size"), ("img_size", [0, 32], "img_size"),
                                                ("img_size", [float("nan"), 32], "img_size"),
                                                ("img_size", [10**6, 10**6], "at most 4096"),
                                                ("std", [0.2, 0.0, 0.2], "std"), ("mean", [0.5, float("inf"), 0.5], "mean"),
                                                ("tasks", ["label", "shoe"], "tasks"), ("crop", "sideways", "crop"),
                                                ("face_crop", {"detector": "mtcnn"}, "margin")])
def test_a_checkpoint_whose_meta_does_not_hold_is_one_line(tiny_runs, tmp_path, field, value, needle):
    from masktk.checkpoint import model_from_checkpoint
    ckpt = torch.load(tiny_runs["single"] / "best.pth", weights_only=True)
    ckpt["meta"][field] = value
    torch.save(ckpt, tmp_path / "best.pth")
    with pytest.raises(UserError, match=needle) as e:
        model_from_checkpoint(tmp_path / "best.pth")
    assert "best.pth" in str(e.value)


@pytest.mark.e2e
def test_a_copied_or_foreign_model_onnx_is_refused_at_start(tiny_root, tiny_runs, tmp_path):
    """model.onnx carries its weights' fingerprint: one from another run of the same input size is refused, as is
    a model.json that is no description; an export from before fingerprints is used, size-checked, with a note."""
    single, other = _copy(tiny_runs["single"], tmp_path, "single"), _copy(tiny_runs["cv"] / "fold0", tmp_path, "other")
    run("export.py", "--run_dir", single)
    run("export.py", "--run_dir", other)
    photos = ["--run_dir", single, "--backend", "onnx", "--output_dir", tmp_path / "out"]
    first = sorted((tiny_root / "eval" / "images").glob("*.jpg"))[0]
    run("predict.py", first, *photos)
    shutil.copy(other / "model.onnx", single / "model.onnx")  # same size, same checkpoint name: other weights
    assert_clean_error(run("predict.py", first, *photos, check=False), "model.onnx", "other weights", "export.py")
    described = json.loads((single / "model.json").read_text())
    for bad in ("not json {", "[1, 2]"):
        (single / "model.json").write_text(bad)
        assert_clean_error(run("predict.py", first, *photos, check=False), "model.json", "export.py")
    (single / "model.json").write_text(json.dumps(described))
    run("export.py", "--run_dir", single)
    import onnx
    m = onnx.load(str(single / "model.onnx"))
    del m.metadata_props[:]  # as export.py wrote it before fingerprints
    onnx.save(m, str(single / "model.onnx"))
    assert "before files carried their weights' fingerprint" in run("predict.py", first, *photos).stderr


def test_the_outputs_list_keeps_every_name_of_concurrent_writers_and_refuses_a_folder(tmp_path):
    from masktk.outputs import MANIFEST, check_outputs, written_here
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from masktk.outputs import record_written\n"
            "for j in range(20): record_written(sys.argv[2], [f'f{sys.argv[3]}_{j}'], 'predict.py')\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(REPO), str(tmp_path / "out"), str(i)]) for i in range(20)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert len(written_here(tmp_path / "out")) == 400
    (tmp_path / "dir" / MANIFEST).mkdir(parents=True)
    with pytest.raises(UserError, match="is not a file"):
        check_outputs(tmp_path / "dir", ["a.json"], "--output_dir")


@pytest.mark.e2e
def test_env_files_are_read_by_predict_and_a_bad_one_is_one_line(tiny_root, tiny_runs, tmp_path):
    shutil.copytree(tiny_runs["single"], tmp_path / "models" / "single")
    (tmp_path / ".env").write_text(f"SM_CHANNEL_MODEL={tmp_path / 'models'}\n")
    first = sorted((tiny_root / "eval" / "images").glob("*.jpg"))[0]
    p = run(REPO / "predict.py", first, "--output_dir", tmp_path / "out", cwd=tmp_path)
    assert str(tmp_path / "models" / "single") in p.stderr  # the newest run of the .env's folder, said
    (tmp_path / ".env").write_bytes(b"SM_CHANNEL_MODEL=\xff\xfe\n")
    assert_clean_error(run(REPO / "predict.py", first, cwd=tmp_path, check=False), ".env", "UTF-8")


@pytest.mark.e2e
def test_synthetic_touches_only_its_own_temporary_names(tmp_path):
    theirs = tmp_path / ".tmp-X"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("someone's")
    run(REPO / "synthetic.py", "--output_dir", "X", "--people", "12", cwd=tmp_path)
    assert (theirs / "keep.txt").read_text() == "someone's" and (tmp_path / "X" / "train" / "train.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-X", "X"]  # nothing of its own left behind
    assert_clean_error(run(REPO / "synthetic.py", "--output_dir", ".", cwd=tmp_path / "X", check=False), "current folder")


@pytest.mark.e2e
def test_a_broken_video_among_inputs_stops_nothing_else(tiny_root, tiny_runs, tmp_path):
    import cv2
    frames = [cv2.imread(str(f)) for f in sorted((tiny_root / "eval" / "images").glob("*.jpg"))[:3]]
    writer = cv2.VideoWriter(str(tmp_path / "one.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, frames[0].shape[1::-1])
    for f in frames:
        writer.write(f)
    writer.release()
    (tmp_path / "corrupt.mp4").write_bytes(b"not a video" * 100)
    out = tmp_path / "out"
    p = run("predict.py", tmp_path / "corrupt.mp4", tmp_path / "one.mp4", "--run_dir", tiny_runs["single"],
            "--output_dir", out, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert (out / "one_pred.mp4").is_file() and (out / "one.csv").is_file()
    assert not (out / "corrupt_pred.mp4").exists() and not (out / "corrupt.csv").exists()
    assert "failed: 1 of 2 input(s)" in p.stderr and "corrupt.mp4" in p.stderr.splitlines()[-1]


def test_odd_shapes_predict_or_are_one_line(tiny_runs, tmp_path):
    """A 1 x 200000 photo (its short side once rounded to 0 px when scaled) predicts: no face; a 0 x 0 array and a
    folder are one UserError each."""
    from masktk.predict.predictor import Predictor
    pred = Predictor.from_run(tiny_runs["single"], "cpu")
    for shape in ((1, 200000, 3), (200000, 1, 3), (2, 2, 3)):
        assert pred.predict(np.zeros(shape, np.uint8)) == []
    with pytest.raises(UserError, match="empty"):
        pred.predict(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(UserError, match="is a folder"):
        pred.predict(tmp_path)
    assert math.isfinite(len(pred.predict(np.full((40, 30, 3), 128, np.uint8))))


@pytest.mark.e2e
def test_export_refuses_an_opset_the_exporter_cannot_write(tiny_runs, tmp_path):
    single = _copy(tiny_runs["single"], tmp_path)
    assert_clean_error(run("export.py", "--run_dir", single, "--opset", "99", check=False), "--opset", "99")
    assert not (single / "model.onnx").exists()
