"""Masked faces from real photos: build a small dataset, crop faces, train briefly, evaluate."""
import json

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED, TINY, run

from masktk.checkpoint import load_checkpoint
from masktk.faces.boxes import box_iou

UTK = SHARED / "utkface_subset"


@pytest.mark.e2e
@pytest.mark.skipif(not UTK.is_dir(), reason="../shared/realdata/utkface_subset is absent")
def test_real_face_dataset_end_to_end(tmp_path):
    root = tmp_path / "rf"
    p = run("synthetic.py", "--faces", UTK, "--out", root, "--limit", "24", "--seed", "1")
    assert "people written" in p.stderr
    train = pd.read_csv(root / "train" / "train.csv", dtype={"id": str})
    assert train["age"].between(18, 60).all() and set(train["gender"]) <= {"male", "female"}
    for folder in train["path"]:
        names = sorted(f.name for f in (root / "train" / "images" / folder).iterdir())
        assert names == sorted([f"mask{i}.jpg" for i in range(1, 6)] + ["incorrect_mask.jpg", "normal.jpg"])
    # RetinaFace (the default) finds the real faces again in the composed photos (MTCNN: 163 of these 168 with
    # its second pass, face_image.RETRY_THRESHOLDS; 86% without it). The rest get the centre crop.
    out = run("face_image.py", "--data_dir", root).stdout.strip().splitlines()[-1]
    n, found = int(out.split()[0]), int(out.split(", ")[1].split()[0])
    assert found / n >= 0.93, out
    # masked faces at the true box (IoU >= 0.5, any detection score), of the 120 here: MTCNN with its second
    # pass 0.76 (once: 0.64); OpenCV's SSD, then MTCNN where it finds none (--detector ssd_mtcnn) 0.94;
    # RetinaFace 0.96
    def masked_recall(*flags):
        return json.loads(run("face_image.py", "--score", root, "--min_score", "0", *flags).stdout)["by_mask"]["wear"]["recall"]
    mtcnn, ssd, retina = (masked_recall("--detector", d) for d in ("mtcnn", "ssd_mtcnn", "retinaface"))
    assert mtcnn >= masked_recall("--detector", "mtcnn", "--second_pass", "False") + 0.08 and mtcnn >= 0.72, mtcnn
    assert ssd >= 0.9 and ssd >= mtcnn + 0.12, (ssd, mtcnn)
    assert retina >= 0.92 and retina >= mtcnn + 0.12, (retina, mtcnn)
    boxes = pd.read_csv(root / "train" / "faces" / "boxes.csv")
    assert (boxes.loc[boxes["path"].str.endswith("normal.jpg"), "detected"] == 1).mean() >= 0.75
    # the builder writes the true face box of every photo it composed; the default detector's finds agree with it
    gt = pd.read_csv(root / "faces_gt.csv")
    assert len(gt) == 7 * (len(train) + len(pd.read_csv(root / "eval" / "gt.csv")) // 7)
    both = boxes[boxes["detected"] == 1].merge(gt[gt["split"] == "train"], on="path", suffixes=("", "_gt"))
    assert len(both) == int((boxes["detected"] == 1).sum())
    iou = box_iou(both[["x1", "y1", "x2", "y2"]].to_numpy(), both[["x1_gt", "y1_gt", "x2_gt", "y2_gt"]].to_numpy())
    assert (np.diag(iou) >= 0.5).mean() >= 0.8, np.diag(iou)  # measured 0.86 here with the second pass (0.85 without)
    run("train.py", "--data_dir", root / "train", "--model_dir", tmp_path / "m", *TINY, "--run_dir", tmp_path / "m" / "r")
    assert load_checkpoint(tmp_path / "m" / "r" / "best.pth")["meta"]["crop"] == "none"  # trained on faces/
    run("inference.py", "--data_dir", root / "eval", "--model_dir", tmp_path / "m" / "r", "--output_dir", tmp_path / "o")
    r = json.loads(run("evaluation.py", "--gt_dir", root / "eval", "--output_dir", tmp_path / "o").stdout.splitlines()[0])
    assert r["n"] == len(pd.read_csv(root / "eval" / "gt.csv")) and 0 <= r["f1"] <= 1


@pytest.mark.parametrize("name", ["flat", "fitted"])
def test_mask_renderers_cover_what_each_state_says(name):
    # a face box and 5 landmarks as MTCNN gives them on a composed photo; grey canvas
    from masktk.data.composed import H, W, create_mask_renderer
    box = np.array([110.0, 130.0, 275.0, 330.0])
    lm = np.array([[160.0, 200.0], [225.0, 200.0], [192.0, 245.0], [165.0, 280.0], [220.0, 280.0]])
    chin = (192, 322)
    canvas = np.full((H, W, 3), 128, np.uint8)
    changed = {}
    for state in ("wear", "nose", "chin"):
        out = create_mask_renderer(name)(canvas, lm, box, state, np.random.default_rng(0)).astype(int)
        changed[state] = {k: np.abs(out[int(y), int(x)] - 128).max() > 12 for k, (x, y) in
                          dict(eye=lm[0], nose=lm[2], mouth=(192, 280), chin=chin).items()}
    assert changed["wear"] == dict(eye=False, nose=True, mouth=True, chin=True), changed
    assert changed["nose"] == dict(eye=False, nose=False, mouth=True, chin=True), changed
    assert changed["chin"] == dict(eye=False, nose=False, mouth=False, chin=True), changed
    with pytest.raises(Exception, match="flat, fitted"):
        create_mask_renderer("paper")
