"""The crop recipe travels: faces/crop.json records how face_image.py cut a folder, checkpoints trained on
it carry it, and inference on raw photos and predict.py cut eval photos the same way without being told."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import skimage.data
import torch
from conftest import TINY, assert_clean_error, run
from PIL import Image

from masktk.faces.crop import CropRecipe

# not the defaults (retinaface, 0.25 0.1 0.05, no alignment); the photos MTCNN finds (its landmarks) are turned upright
RECIPE = ["--detector", "ssd_mtcnn", "--margin", "0.2", "0.1", "0.1", "--align", "True"]


def test_each_detector_cuts_with_its_own_margins_and_unrecorded_crops_read_as_mtcnn():
    """RetinaFace's box reaches lower than MTCNN's, so its default margins differ; checkpoints trained on
    crops cut before crop.json existed (MTCNN's) keep being served MTCNN's crops, whatever the default."""
    from types import SimpleNamespace

    from masktk.faces.crop import DEFAULT_MARGIN, MARGINS
    from masktk.faces.detectors import DEFAULT_DETECTOR
    from masktk.predict.pipeline import eval_crop_recipe
    assert CropRecipe().detector == DEFAULT_DETECTOR == "retinaface"
    assert CropRecipe().margin == MARGINS["retinaface"] != DEFAULT_MARGIN
    assert CropRecipe("mtcnn").margin == CropRecipe("union").margin == DEFAULT_MARGIN
    assert CropRecipe("mtcnn", margin=(0.1, 0.1, 0.1)).margin == (0.1, 0.1, 0.1)
    unrecorded = [SimpleNamespace(crop="none", face_crop=None)]
    assert eval_crop_recipe(unrecorded) == CropRecipe("mtcnn", margin=DEFAULT_MARGIN)
    assert eval_crop_recipe(unrecorded, "retinaface").margin == DEFAULT_MARGIN  # the margins the model trained with


@pytest.mark.e2e
def test_faces_folder_records_its_recipe_and_refuses_another(tmp_path):
    Image.fromarray(skimage.data.astronaut()).save((tmp_path / "eval" / "images").mkdir(parents=True) or
                                                   tmp_path / "eval" / "images" / "a.png")
    run("face_image.py", "--data_dir", tmp_path, *RECIPE)
    faces = tmp_path / "eval" / "faces"
    recipe = json.loads((faces / "crop.json").read_text())
    assert recipe == {"detector": "ssd_mtcnn", "detect_size": 256, "thresholds": [0.6, 0.7, 0.7], "second_pass": True,
                      "margin": [0.2, 0.1, 0.1], "align": True}
    del recipe["align"]  # a recipe recorded before alignment existed reads as unaligned, so its runs still predict
    assert CropRecipe.from_dict(recipe) == CropRecipe("ssd_mtcnn", 256, (0.6, 0.7, 0.7), True, (0.2, 0.1, 0.1), False)
    before = {p.name: p.read_bytes() for p in faces.iterdir()}
    p = run("face_image.py", "--data_dir", tmp_path, check=False)  # the defaults would mix two kinds of crops
    assert_clean_error(p, str(faces), "--detector ssd_mtcnn", "--margin 0.2 0.1 0.1")
    assert {p.name: p.read_bytes() for p in faces.iterdir()} == before
    run("face_image.py", "--data_dir", tmp_path, *RECIPE)  # the same settings again: fine, nothing changes
    assert {p.name: p.read_bytes() for p in faces.iterdir()} == before
    (faces / "crop.json").write_text("{")  # damaged: named, with what to do
    assert_clean_error(run("face_image.py", "--data_dir", tmp_path, *RECIPE, check=False), str(faces / "crop.json"),
                       "delete")


def _eval_dir(root, tiny_root):
    """Six drawn eval photos and the astronaut (a real face, which the SSD and MTCNN box differently), as
    PNG so that faces/ holds exactly the pixels a crop on the fly has."""
    images = root / "eval" / "images"
    images.mkdir(parents=True)
    names = []
    for src in sorted((tiny_root / "eval" / "images").iterdir())[:6]:
        Image.open(src).convert("RGB").save(images / (src.stem + ".png"))
        names.append(src.stem + ".png")
    Image.fromarray(skimage.data.astronaut()).save(images / "astronaut.png")
    names.append("astronaut.png")
    pd.DataFrame({"ImageID": names, "ans": 0}).to_csv(root / "eval" / "info.csv", index=False)
    return root / "eval"


@pytest.fixture(scope="module")
def recipe_run(tiny_root, tmp_path_factory):
    """A tiny run trained on faces/ cut with RECIPE."""
    root = tmp_path_factory.mktemp("recipe")
    shutil.copytree(tiny_root / "train", root / "data" / "train")
    run("face_image.py", "--data_dir", root / "data", *RECIPE)
    run("train.py", "--data_dir", root / "data" / "train", "--source", "faces", "--model_dir", root / "m",
        "--run_dir", root / "m" / "r", *TINY)
    return root / "m" / "r"


@pytest.mark.e2e
def test_inference_and_predict_cut_eval_photos_as_the_training_crops_were_cut(recipe_run, tiny_root, tmp_path):
    meta = torch.load(recipe_run / "best.pth", map_location="cpu", weights_only=False)["meta"]
    assert meta["face_crop"]["detector"] == "ssd_mtcnn" and meta["face_crop"]["margin"] == [0.2, 0.1, 0.1]
    assert meta["face_crop"]["align"]
    ev = _eval_dir(tmp_path, tiny_root)
    infer = ["inference.py", "--model_dir", recipe_run, "--data_dir", ev, "--output_dir", tmp_path / "o"]
    run(*infer, "--output_name", "on_the_fly")  # no eval faces/: found and cut on the fly, by the recorded recipe
    run("face_image.py", "--data_dir", tmp_path, *RECIPE)  # now eval faces/ as face_image.py cuts them
    run(*infer, "--output_name", "faces")
    fly, cut = (np.load(tmp_path / "o" / f"{n}_probs.npy") for n in ("on_the_fly", "faces"))
    assert np.allclose(fly, cut, atol=1e-6), np.abs(fly - cut).max()
    run("predict.py", ev / "images" / "astronaut.png", "--model_dir", recipe_run, "--out", tmp_path / "p",
        "--detect_size", "256")
    found = json.loads((tmp_path / "p" / "astronaut.json").read_text())
    face, = found["faces"]
    assert found["detector"] == "ssd_mtcnn"
    box = pd.read_csv(ev / "faces" / "boxes.csv").set_index("path").loc["astronaut.png"]
    assert np.allclose(face["box"], box[["x1", "y1", "x2", "y2"]].to_numpy(float), atol=0.06)


@pytest.mark.e2e
def test_eval_crops_cut_otherwise_than_the_training_crops_are_refused(recipe_run, tiny_root, tmp_path):
    ev = _eval_dir(tmp_path, tiny_root)
    run("face_image.py", "--data_dir", tmp_path)  # eval cut with the defaults
    p = run("inference.py", "--model_dir", recipe_run, "--data_dir", ev, "--output_dir", tmp_path / "o", check=False)
    assert_clean_error(p, str(ev / "faces"), "--detector retinaface", "--detector ssd_mtcnn", "--source images")
    assert not (tmp_path / "o" / "output.csv").exists()
