"""Extra training data: photos labelled with mask status only (both layouts load, the loss ignores the
missing labels) and pseudo-labelled eval photos; such photos only ever train."""
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, run

from masktk.data.sources import mask_only_faces, mask_only_layout
from masktk.faces.crop import crop_for_model
from masktk.images import read_rgb
from masktk.labels import YEARS, joint_targets
from masktk.train.engine import heads_loss
from masktk.train.losses import create_loss, mask_marginal_loss, years_loss


def _photos(tiny_root, n):
    return sorted((tiny_root / "train" / "images").rglob("mask1.jpg"))[:n]


def _voc_dir(tiny_root, root):
    """Three competition photos as a VOC dataset: a 200 px face box each, and one 20 px box."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    names = ("with_mask", "without_mask", "mask_weared_incorrect")
    for k, (photo, name) in enumerate(zip(_photos(tiny_root, 3), names)):
        shutil.copy(photo, root / "images" / f"p{k}.jpg")
        objs = [(name, (92, 130, 292, 330))] + ([("with_mask", (10, 10, 30, 30))] if k == 0 else [])
        body = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                       f"<ymax>{b[3]}</ymax></bndbox></object>" for n, b in objs)
        (root / "annotations" / f"p{k}.xml").write_text(f"<annotation>{body}</annotation>")
    return root


def _folder_dir(tiny_root, root):
    for k, (photo, name) in enumerate(zip(_photos(tiny_root, 4), ("with_mask", "with_mask", "incorrect_mask",
                                                                   "without_mask"))):
        (root / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, root / name / f"{k}.jpg")
    return root


def test_both_mask_only_layouts_load_their_faces_and_labels(tiny_root, tmp_path):
    voc = _voc_dir(tiny_root, tmp_path / "voc")
    folders = _folder_dir(tiny_root, tmp_path / "folders")
    assert (mask_only_layout(voc), mask_only_layout(folders), mask_only_layout(tiny_root / "train")) == \
        ("boxes", "folders", None)
    faces = mask_only_faces(voc, "center", 32, tmp_path / "c1")
    assert faces["mask"].tolist() == [0, 2, 1]  # the 20 px face is left out
    img = read_rgb(voc / "images" / "p1.jpg")
    want = crop_for_model(img, (92, 130, 292, 330), "center")  # the shared crop function
    assert np.array_equal(read_rgb(faces["file"][1]), want)
    faces = mask_only_faces(folders, "none", 32, tmp_path / "c2")
    assert sorted(faces["mask"].tolist()) == [0, 0, 1, 2]
    assert all(read_rgb(f) is not None for f in faces["file"])
    again = mask_only_faces(folders, "none", 32, tmp_path / "c2")  # complete crops are reused
    assert again.equals(faces)


def test_mask_only_rows_add_nothing_to_gender_age_and_years():
    torch.manual_seed(0)
    tasks = ("mask", "gender", "age", "years")
    loss_fns = {t: create_loss("label_smoothing") for t in ("mask", "gender", "age")}
    loss_fns["years"] = years_loss(3.0)
    weights = dict(mask=1.0, gender=1.0, age=1.0, years=1.0)
    logits = torch.randn(4, 3 + 2 + 3 + YEARS, requires_grad=True)
    target = torch.nn.functional.one_hot(torch.as_tensor(joint_targets([6, 12, 0, 1], [18, 18, 40, 50])),
                                         18 * YEARS).float()
    full = torch.tensor([0.0, 0.0, 1.0, 1.0])  # rows 0-1: mask status only
    heads_loss(logits, target, tasks, loss_fns, weights, full).backward()
    g = logits.grad
    assert torch.all(g[:2, 3:] == 0)  # no push on gender, age or years for the mask-only rows
    assert torch.all(g[:2, :3].abs().sum(1) > 0) and torch.all(g[2:, 3:].abs().sum(1) > 0)


def test_the_18_class_output_learns_only_the_mask_marginal_from_mask_only_rows():
    torch.manual_seed(1)
    logits = torch.randn(3, 18, requires_grad=True)
    mask = torch.nn.functional.one_hot(torch.tensor([1, 2, 0]), 3).float()
    rows = torch.tensor([1.0, 1.0, 0.0])
    loss = mask_marginal_loss(logits, mask, rows)
    p = torch.softmax(logits.detach(), 1)
    hand = -(torch.log(p[0, 6:12].sum()) + torch.log(p[1, 12:18].sum())) / 3  # row 2 is not a mask-only row
    assert float(loss.detach()) == pytest.approx(float(hand), rel=1e-5)
    loss.backward()
    # within the labelled mask group the gradient moves each class in proportion to its probability:
    # gender and age keep their odds
    g = -logits.grad[0, 6:12]
    assert torch.allclose(g / g.sum(), p[0, 6:12] / p[0, 6:12].sum(), atol=1e-5)
    assert torch.all(logits.grad[2] == 0)


def _pseudo_probs(tiny_root, path):
    """Predictions for the eval photos: a third confident (0.95), the rest not (0.5)."""
    info = pd.read_csv(tiny_root / "eval" / "info.csv", dtype={"ImageID": str})
    probs = np.full((len(info), 18), 0.5 / 17)
    probs[np.arange(len(info)), np.arange(len(info)) % 18] = 0.5
    confident = np.arange(len(info)) % 3 == 0
    probs[confident] = 0.05 / 17
    probs[confident, 2] = 0.95  # wear / male / >=60
    np.save(path, probs)
    return int(confident.sum()), len(info)


@pytest.mark.e2e
def test_mask_only_photos_and_pseudo_labels_train_and_never_validate(tiny_root, tmp_path):
    voc = _voc_dir(tiny_root, tmp_path / "voc")
    folders = _folder_dir(tiny_root, tmp_path / "folders")
    n_conf, n_eval = _pseudo_probs(tiny_root, tmp_path / "p_probs.npy")
    md = tmp_path / "m"
    p = run("train.py", "--data_dir", tiny_root / "train", "--model_dir", md, *TINY, "--epochs", "1", "--cv", "True",
            "--k_folds", "2", "--extra_data", voc, folders, "--pseudo", tmp_path / "p_probs.npy", "--pseudo_data",
            tiny_root / "eval", "--run_dir", md / "cv")
    assert "3 faces labelled with mask status only" in p.stdout and "4 faces labelled" in p.stdout
    assert f"pseudo-labels: {n_conf} of {n_eval} eval photos at probability >= 0.9 (highest 0.950)" in p.stdout
    assert f"({3 + 4 + n_conf} extra images)" in p.stdout  # all of them reach the training table
    oof = pd.read_csv(md / "cv" / "oof.csv")
    assert oof["path"].str.startswith("images/").all()  # only the main dataset's photos are validated
    p = run("train.py", "--data_dir", tiny_root / "train", "--model_dir", md, *TINY, "--epochs", "1",
            "--extra_data", voc, "--cutmix", "0.5", check=False)
    assert p.returncode == 2 and "mask-only" in p.stderr
    np.save(tmp_path / "bad.npy", np.zeros((3, 18)))
    p = run("train.py", "--data_dir", tiny_root / "train", "--model_dir", md, *TINY, "--pseudo", tmp_path / "bad.npy",
            "--pseudo_data", tiny_root / "eval", check=False)
    assert p.returncode == 2 and "bad.npy" in p.stderr and "Traceback" not in p.stderr


def test_mask_only_weight_scales_what_those_rows_teach():
    torch.manual_seed(2)
    tasks = ("mask", "gender", "age")
    loss_fns = {t: create_loss("cross_entropy") for t in tasks}
    logits = torch.randn(4, 8)
    target = torch.nn.functional.one_hot(torch.as_tensor(joint_targets([6, 12, 0, 1], [18] * 4)), 18 * YEARS).float()
    full = torch.tensor([0.0, 0.0, 1.0, 1.0])
    w = dict(mask=1.0, gender=1.0, age=1.0)
    base, half, none = (float(heads_loss(logits, target, tasks, loss_fns, w, full, m)) for m in (1.0, 0.5, 0.0))
    mask_ce = torch.nn.functional.cross_entropy(logits[:2, :3], torch.tensor([1, 2]), reduction="sum") / 4
    assert base - none == pytest.approx(float(mask_ce), rel=1e-5) and half - none == pytest.approx(float(mask_ce) / 2, rel=1e-5)


def test_split_by_photo_keeps_every_photo_once_and_each_side_readable(tiny_root, tmp_path):
    from masktk.data.voc import read_voc, split_by_photo
    src = _voc_dir(tiny_root, tmp_path / "voc")
    out = split_by_photo(src, tmp_path / "split", 1, seed=0)
    train, test = read_voc(out / "train"), read_voc(out / "test")
    assert test["stem"].nunique() == 1 and train["stem"].nunique() == 2
    assert sorted(set(train["stem"]) | set(test["stem"])) == ["p0", "p1", "p2"]
    assert len(train) + len(test) == len(read_voc(src))  # every face of a photo stays with it
    assert split_by_photo(src, tmp_path / "again", 1, seed=0) and read_voc(tmp_path / "again" / "test")["stem"].tolist() \
        == test["stem"].tolist()  # the same seed, the same split
    split_by_photo(src, out, 2, seed=1)  # an earlier split into the folder is replaced
    assert read_voc(out / "test")["stem"].nunique() == 2 and read_voc(out / "train")["stem"].nunique() == 1
    # a folder of real files (somebody's data, not an earlier split) is never deleted
    from masktk.errors import UserError
    mine = tmp_path / "mine" / "train" / "images"
    mine.mkdir(parents=True)
    shutil.copy(src / "images" / "p0.jpg", mine / "mine.jpg")
    with pytest.raises(UserError, match="not links"):
        split_by_photo(src, tmp_path / "mine", 1, seed=0)
    assert (mine / "mine.jpg").is_file()
