"""A public mask set as the whole training set: VOC, YOLO and folder-per-class sets drawn by synthetic.py each
train a mask-only run (splits by photo), and every prediction path answers the mask state alone, saying so."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, assert_clean_error, run

from masktk.data.face_boxes import read_face_boxes
from masktk.data.sources import mask_only_layout
from masktk.labels import FULL, MASK_ONLY, face_text
from masktk.metrics.classification import score
from masktk.predict.submission import common_answer, vote
from masktk.probs import combine_probs
from masktk.train.decisions import decide, fit_decision


@pytest.fixture(scope="module")
def mask_sets(tmp_path_factory):
    """The three layouts drawn from the same 8 people (24 faces; VOC and YOLO: 8 photos of three faces)."""
    root = tmp_path_factory.mktemp("mask_sets")
    for layout in ("voc", "yolo", "folders"):
        run("synthetic.py", "--layout", layout, "--out", root / layout, "--people", "8", "--seed", "5")
    return root


def test_synthetic_writes_each_mask_set_layout_with_its_labels(mask_sets):
    assert [mask_only_layout(mask_sets / x) for x in ("voc", "yolo", "folders")] == ["boxes", "boxes", "folders"]
    voc, yolo = read_face_boxes(mask_sets / "voc"), read_face_boxes(mask_sets / "yolo")
    assert len(voc) == len(yolo) == 24 and np.bincount(voc["mask"]).tolist() == [8, 8, 8]
    assert voc["photo"].nunique() == 8  # three faces a photo
    # the same boxes written two ways: VOC's whole pixels, YOLO's fractions
    corners = ["xmin", "ymin", "xmax", "ymax"]
    assert np.allclose(voc[corners].to_numpy(), yolo[corners].to_numpy(), atol=1.0)
    counts = {d.name: len(list(d.glob("*.jpg"))) for d in (mask_sets / "folders").iterdir() if d.is_dir()}
    assert counts == {"with_mask": 8, "incorrect_mask": 8, "without_mask": 8}


def test_a_voc_set_alone_trains_a_mask_only_run_that_every_path_serves(mask_sets, tiny_root, tmp_path):
    md = tmp_path / "model"
    p = run("train.py", "--train_dir", mask_sets / "voc", "--model_dir", md, *TINY, "--epochs", "1", "--cv", "True",
            "--k_folds", "2", "--run_dir", md / "voc")
    assert "24 faces labelled with mask status only" in p.stdout + p.stderr
    oof = pd.read_csv(md / "voc" / "oof.csv")
    assert list(oof.columns[3:6]) == ["mask0", "mask1", "mask2"] and "p0" not in oof.columns
    assert oof.groupby("people_path")["fold"].nunique().max() == 1  # a photo's three faces on one side of every split
    assert oof["people_path"].nunique() == 8
    assert len(json.loads((md / "voc" / "decision.json").read_text())["offsets"]) == 3
    out = tmp_path / "pred"
    scene = sorted((mask_sets / "voc" / "images").glob("*.jpg"))[0]
    run("predict.py", scene, "--run_dir", md / "voc", "--out", out)
    answer = json.loads((out / f"{scene.stem}.json").read_text())
    assert answer["tasks"] == ["mask"] and answer["faces"]
    face = answer["faces"][0]
    assert face["gender"] is None and face["age"] is None and face["label"] is None and len(face["probs"]) == 3
    assert face["mask_name"] in ("wear", "incorrect", "not wear")
    run("export.py", "--run_dir", md / "voc")  # checks onnxruntime against torch on each fold's model
    assert json.loads((md / "voc" / "fold0" / "model.json").read_text())["tasks"] == {"mask": 3}
    # inference.py's submission names its column for what it answers; evaluation.py scores the mask state
    run("inference.py", "--run_dir", md / "voc", "--eval_dir", tiny_root / "eval", "--output_dir", tmp_path / "sub")
    sub = pd.read_csv(tmp_path / "sub" / "output.csv")
    assert list(sub.columns) == ["ImageID", "mask"] and sub["mask"].between(0, 2).all()
    assert np.load(tmp_path / "sub" / "output_probs.npy").shape == (len(sub), 3)
    p = run("evaluation.py", "--gt_dir", tiny_root / "eval", "--output_dir", tmp_path / "sub")
    scores = json.loads(p.stdout.splitlines()[0])
    assert scores["tasks"] == ["mask"] and "f1_gender" not in scores
    gt = pd.read_csv(tiny_root / "eval" / "gt.csv").merge(sub, on="ImageID")
    assert scores["accuracy"] == pytest.approx(float((gt["ans"] // 6 == gt["mask"]).mean()))


def test_a_folder_set_with_a_yolo_set_beside_it_trains_a_mask_only_run_the_predictor_serves(mask_sets, tmp_path):
    """A YOLO set as the training set takes the VOC set's path once read (read_face_boxes: tested with the readers);
    here it joins a folder-per-class training set as extra data, both read into one run."""
    from masktk.predict.predictor import Predictor
    p = run("train.py", "--train_dir", mask_sets / "folders", "--extra_data", mask_sets / "yolo", "--model_dir",
            tmp_path, *TINY, "--epochs", "1", "--run_dir", tmp_path / "r")
    assert "24 faces labelled with mask status only" in p.stdout + p.stderr  # each set's own line
    assert "24 extra images" in p.stdout + p.stderr
    pred = Predictor.from_run(tmp_path / "r", device="cpu")
    assert pred.answer == MASK_ONLY
    photo = sorted((mask_sets / "voc" / "images").glob("*.jpg"))[0]
    faces = pred.predict(photo)
    assert faces and all(f["gender_name"] is None and len(f["probs"]) == 3 for f in faces)
    assert face_text(faces[0]) == faces[0]["mask_name"]


def test_gender_and_age_modes_are_refused_for_a_mask_set(mask_sets, tmp_path):
    p = run("train.py", "--train_dir", mask_sets / "folders", "--model_dir", tmp_path, *TINY, "--multi", "True",
            check=False)
    assert_clean_error(p, "mask set", "--multi")
    assert not (tmp_path / "exp").exists()  # no half-made run folder


def test_a_mask_only_answer_is_scored_and_decided_on_the_three_states():
    torch.manual_seed(0)
    mask = torch.softmax(torch.randn(5, 3), 1)
    assert torch.equal(combine_probs({"mask": mask}), mask)  # no gender or age invented
    labels18 = np.array([0, 6, 12, 3, 17])  # mask states 0, 1, 2, 0, 2
    m = score(labels18, np.array([0, 1, 2, 0, 0]), MASK_ONLY)
    assert set(m) == {"f1", "accuracy", "f1_mask"} and m["accuracy"] == pytest.approx(0.8)
    assert decide(mask.numpy(), np.zeros(3)).tolist() == mask.argmax(1).tolist()
    with pytest.raises(Exception, match="another run"):
        decide(mask.numpy(), np.zeros(18))
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), 60)
    record, _ = fit_decision(probs, rng.integers(0, 3, 60), np.arange(60), "test")
    assert len(record["offsets"]) == 3


def test_runs_answering_different_tasks_vote_on_the_mask_state():
    rng = np.random.default_rng(1)
    p18, p3 = rng.dirichlet(np.ones(18), 4), rng.dirichlet(np.ones(3), 4)
    answer, probs, offsets = common_answer([FULL, MASK_ONLY], [p18, p3], [np.zeros(18), None])
    assert answer == MASK_ONLY and probs[0].shape == (4, 3) and offsets == [None, None]
    assert np.allclose(probs[0], p18.reshape(4, 3, 6).sum(2))
    soft, ans = vote(probs, [1, 1], "hard")
    assert soft.shape == (4, 3) and ans.max() <= 2
