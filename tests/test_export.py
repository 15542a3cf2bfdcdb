"""export.py and the onnx backend: a run exported to ONNX, checked against torch, predicting the same."""
import json
import shutil

import pytest
from conftest import assert_clean_error, run


@pytest.mark.e2e
def test_a_cv_run_exports_one_checked_file_per_fold_and_onnx_predicts_as_torch(tiny_root, tiny_runs, tmp_path):
    cv = tmp_path / "cv"
    shutil.copytree(tiny_runs["cv"], cv)  # the shared runs are only read
    p = run("export.py", "--run_dir", cv)
    folds = sorted(cv.glob("fold*/model.onnx"))
    assert len(folds) == 3 and p.stderr.count("max abs difference") == 3
    described = json.loads(folds[0].with_suffix(".json").read_text())
    assert described["checkpoint"] == "best.pth" and described["img_size"] == [32, 32]
    assert_clean_error(run("export.py", "--run_dir", cv, "--out", tmp_path / "one.onnx", check=False), "--out")
    photos = sorted((tiny_root / "eval" / "images").glob("*.jpg"))[:6]
    labels = {}
    for backend in ("torch", "onnx"):
        run("predict.py", *photos, "--run_dir", cv, "--output_dir", tmp_path / backend, "--backend", backend)
        rows = [json.loads((tmp_path / backend / f"{f.stem}.json").read_text())["faces"] for f in photos]
        labels[backend] = [[r["label"] for r in faces] for faces in rows]
    assert labels["onnx"] == labels["torch"] and any(labels["torch"])


@pytest.mark.e2e
def test_the_onnx_backend_without_an_export_says_how_to_make_one(tiny_root, tiny_runs, tmp_path):
    photo = sorted((tiny_root / "eval" / "images").glob("*.jpg"))[0]
    p = run("predict.py", photo, "--run_dir", tiny_runs["heads"], "--output_dir", tmp_path, "--backend", "onnx",
            check=False)
    assert_clean_error(p, "model.onnx", "export.py")
