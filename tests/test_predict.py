"""predict.py: photos in, faces and labels out."""
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import assert_clean_error, run

from masktk.errors import UserError


def test_predict_gives_photos_that_share_a_stem_their_own_outputs(tmp_path):
    from pathlib import Path

    from masktk.predict.photos import output_names
    files = [Path("a/x.jpg"), Path("b/x.jpg"), Path("c/y.jpg"), Path("a/x.png")]
    names = output_names(files)
    assert len(set(names.values())) == 4 and names[Path("c/y.jpg")] == "y"


def test_annotation_numbers_faces_inside_the_photo_and_lists_them_below():
    from masktk.predict.predictor import annotate
    img = np.zeros((300, 400, 3), np.uint8)
    faces = [dict(box=[b, 10, b + 30, 40], mask=k % 3, mask_name="wear", gender_name="male", age_name="<30",
                  probs=[0.9] + [0.1 / 17] * 17) for k, b in enumerate((0, 20, 40, 380))]  # crowded, one at the edge
    out = annotate(img, faces)
    assert out.size[0] == 400 and out.size[1] > 300 + 4 * 12  # a legend line per face below the photo
    legend = np.asarray(out)[300:].min(axis=2)
    line = (out.size[1] - 300 - 8) // 4
    assert all((legend[4 + k * line:4 + (k + 1) * line] < 200).any() for k in range(4))  # text on every line
    assert np.asarray(out)[10:40, 380:400].any()  # the edge face's box and tag are drawn inside the photo


@pytest.mark.e2e
def test_predict_never_replaces_an_input_or_a_users_file_and_says_when_it_replaces_its_own(tiny_root, tiny_runs,
                                                                                          tmp_path):
    run_dir = tiny_runs["single"]
    src = sorted((tiny_root / "eval" / "images").glob("*.jpg"))[0]
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(src, photos / "x.jpg")
    shutil.copy(src, photos / "x_pred.jpg")  # the user's own photo, named like x.jpg's annotation
    before = (photos / "x_pred.jpg").read_bytes()
    assert_clean_error(run("predict.py", photos, "--run_dir", run_dir, "--out", photos, check=False), "x_pred.jpg")
    assert (photos / "x_pred.jpg").read_bytes() == before and sorted(os.listdir(photos)) == ["x.jpg", "x_pred.jpg"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "x.json").write_text("my notes")  # a file the user made where an output would go
    assert_clean_error(run("predict.py", photos / "x.jpg", "--run_dir", run_dir, "--out", mine, check=False),
                       "x.json", "not written by this toolkit")
    assert (mine / "x.json").read_text() == "my notes"
    here = tmp_path / "here"
    here.mkdir()
    shutil.copy(src, here / "y.jpg")
    first = run("predict.py", here, "--run_dir", run_dir, "--out", here)
    assert "replacing" not in first.stderr and (here / "y_pred.jpg").is_file()
    again = run("predict.py", here, "--run_dir", run_dir, "--out", here)  # its own annotation is not a new photo
    assert "replacing 2 earlier result file(s)" in again.stderr and "1 photo(s)" in again.stderr


@pytest.mark.e2e
def test_the_python_api_gives_the_rows_predict_py_writes(tiny_root, tiny_runs, tmp_path):
    from masktk.images import read_rgb
    from masktk.predict.predictor import Predictor
    photos = sorted((tiny_root / "eval" / "images").glob("*.jpg"))[:4]
    run("predict.py", *photos, "--run_dir", tiny_runs["single"], "--output_dir", tmp_path)
    p = Predictor.from_run(tiny_runs["single"], device="cpu")
    found = 0
    for f in photos:
        written = json.loads((tmp_path / f"{f.stem}.json").read_text())["faces"]
        assert p.predict(f) == written == p.predict(read_rgb(f))  # a path or an RGB array
        found += len(written)
        for face in written:
            assert set(face) >= {"box", "score", "label", "mask", "gender", "age", "mask_name", "gender_name",
                                 "age_name", "probs"}
    assert found
    with pytest.raises(UserError, match="RGB uint8"):
        p.predict(np.zeros((8, 8), np.uint8))


@pytest.mark.e2e
def test_a_video_gets_an_annotated_copy_and_a_row_per_face_per_sampled_frame(tiny_root, tiny_runs, tmp_path):
    import cv2
    photos = sorted((tiny_root / "eval" / "images").glob("*.jpg"))[:6]
    frames = [cv2.imread(str(f)) for f in photos for _ in range(2)]  # each photo at an even frame too
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 5, frames[0].shape[1::-1])
    for f in frames:
        writer.write(f)
    writer.release()
    out = tmp_path / "out"
    run("predict.py", clip, "--run_dir", tiny_runs["single"], "--output_dir", out)
    every = pd.read_csv(out / "clip.csv")
    assert len(every) and list(every.columns[:8]) == ["frame", "time", "track", "x1", "y1", "x2", "y2", "score"]
    assert np.allclose(every["time"], every["frame"] / 5)
    assert (out / "clip_tracks.csv").is_file() and (out / "clip_counts.csv").is_file()
    run("predict.py", clip, "--run_dir", tiny_runs["single"], "--output_dir", out, "--every", "2")
    sampled = pd.read_csv(out / "clip.csv")
    own = [c for c in every.columns if not c.startswith("track")]  # a frame's own answer; tracks see other frames
    assert len(sampled) and sampled[own].equals(every[every["frame"] % 2 == 0][own].reset_index(drop=True))
    annotated = cv2.VideoCapture(str(out / "clip_pred.mp4"))
    assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 100)
    p = run("predict.py", broken, "--run_dir", tiny_runs["single"], "--output_dir", out, check=False)
    assert_clean_error(p, "broken.mp4", "cannot be read as a video")
    assert not (out / "broken_pred.mp4").exists() and not (out / "broken.csv").exists()


def test_a_small_photo_is_seen_upscaled_and_its_boxes_stay_in_its_own_pixels(tiny_runs):
    """A 13 px face in a 300 x 200 photo: RetinaFace misses it as the photo is, finds it in the photo upscaled
    to 512 (predict.py's default), and the box comes back in the photo's own pixels, where the face is."""
    import cv2
    import skimage.data

    from masktk.faces.detectors import UPSCALE_TO
    from masktk.predict.predictor import Predictor
    canvas = np.full((200, 300, 3), 120, np.uint8)
    canvas[50:110, 100:160] = cv2.resize(skimage.data.astronaut(), (60, 60), interpolation=cv2.INTER_AREA)
    assert Predictor.from_run(tiny_runs["single"], "cpu", upscale_to=0).predict(canvas) == []
    assert UPSCALE_TO == 512
    faces = Predictor.from_run(tiny_runs["single"], "cpu").predict(canvas)
    assert len(faces) == 1
    x1, y1, x2, y2 = faces[0]["box"]
    assert 100 <= x1 < x2 <= 160 and 50 <= y1 < y2 <= 110 and x2 - x1 < 20  # the face, in the photo's pixels
