"""benchmark.py is a tool, not a timed test: it runs on a tiny input and writes its JSON."""
import json

import pytest
from conftest import run


@pytest.mark.e2e
def test_benchmark_runs_on_a_tiny_input(tiny_root, tiny_runs, tmp_path):
    out = tmp_path / "bench.json"
    p = run("benchmark.py", "--data_dir", tiny_root, "--model", "test_efficientnet", "--img_size", "32", "32",
            "--batch_size", "8", "--train_images", "32", "--eval_images", "16", "--face_images", "4", "--workers", "0",
            "--cache_dir", tmp_path / "cache", "--out", out, "--live_run", tiny_runs["single"],
            "--live_frames", "4")
    r = json.loads(out.read_text())
    for k in ("train_model_only", "train_toolkit", "train_plain", "infer_model_only", "infer_toolkit", "infer_toolkit_warm",
              "cv5_tta_toolkit_s", "cv5_tta_redecode_s", "face_batched", "face_plain", "face_ssd_mtcnn", "face_retinaface",
              "peak_rss_mib", "infer_cpu_torch", "infer_cpu_onnxruntime", "live_1_faces_fps", "live_5_detector_fps",
              "live_5_classifier_fps"):
        assert r[k] > 0, k
    assert r["onnx_max_abs_diff"] < 1e-3 and "onnxruntime / torch, CPU inference" in r["ratios"]
    assert "train toolkit / model only (target >= 0.90)" in r["ratios"]
    assert "| train: toolkit end to end" in p.stdout
