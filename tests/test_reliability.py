"""Bad input gets a clear message: training data is skipped with a count, everything else exits 2."""
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, assert_clean_error, run
from PIL import Image

from masktk.data.table import Log, build_table
from masktk.images import read_rgb


@pytest.fixture
def data(tiny_root, tmp_path):
    d = tmp_path / "train"
    shutil.copytree(tiny_root / "train", d)
    return d


def _train(d, tmp_path, *extra, check=False):
    return run("train.py", "--data_dir", d, "--model_dir", tmp_path / "m", *TINY, "--epochs", "1", *extra, check=check)


def _folders(d):
    return sorted(p for p in (d / "images").iterdir())


@pytest.mark.e2e
def test_bad_training_files_are_skipped_with_names_and_counts(data, tmp_path):
    f = _folders(data)
    (f[0] / "mask1.jpg").write_bytes(b"")  # zero bytes
    (f[1] / "mask2.jpg").write_text("not an image at all")  # text named .jpg
    (f[2] / "mask3.jpg").unlink()  # missing photo
    shutil.copy(f[3] / "mask4.jpg", f[3] / "mask4.png")  # extra photo for the same stem
    (f[4] / "selfie.jpg").write_bytes((f[4] / "normal.jpg").read_bytes())  # unknown name
    raw = (f[5] / "mask5.jpg").read_bytes()
    (f[5] / "mask5.jpg").write_bytes(raw[:len(raw) // 2])  # truncated: header fine, data cut
    p = _train(data, tmp_path, "--max_bad", "0.05", check=True)
    err = p.stderr
    for needle in (f"{f[0].name}/mask1.jpg", f"{f[1].name}/mask2.jpg", f"{f[2].name}: missing mask3",
                   f"{f[3].name}/mask4.png", f"{f[4].name}/selfie.jpg", f"{f[5].name}/mask5.jpg"):
        assert needle in err, needle
    assert "skipped data (" in err and "unreadable image: 3" in err and "unknown file: 1" in err


@pytest.mark.e2e
def test_too_many_bad_images_fail_the_run(data, tmp_path):
    for folder in _folders(data)[:3]:
        for img in folder.iterdir():
            img.write_bytes(b"garbage")
    p = _train(data, tmp_path)
    assert_clean_error(p, "unreadable", "--max_bad")
    assert not list((tmp_path / "m").glob("*/best.pth"))


def test_bad_csv_rows_are_skipped(data, tmp_path):
    csv = pd.read_csv(data / "train.csv", dtype=str)
    csv.loc[0, "age"] = "forty"
    csv.loc[1, "gender"] = "unknown"
    csv = pd.concat([csv, csv.iloc[[2]]])  # duplicate id
    extra = csv.iloc[[3]].copy()
    extra["id"], extra["path"] = "999999", "999999_male_Asian_40"  # row without a folder
    csv = pd.concat([csv, extra])
    csv.to_csv(data / "train.csv", index=False)
    shutil.copytree(_folders(data)[4], data / "images" / "888888_female_Asian_33")  # folder without a row
    log = Log(quiet=True)
    t = build_table(data, log=log)
    assert log.counts == {"bad age": 1, "bad gender": 1, "duplicate id": 1, "row without folder": 1,
                          "folder without row": 1}
    assert t["people_path"].nunique() == len(_folders(data)) - 3


@pytest.mark.e2e
@pytest.mark.parametrize("case,needle", [
    ("no_dir", "not a directory"), ("no_csv", "train.csv not found"), ("columns", "missing columns"),
    ("empty", "no usable images"), ("escape", "outside the data directory")])
def test_wrong_layouts_exit_2(data, tmp_path, case, needle):
    if case == "no_dir":
        d = tmp_path / "nowhere"
    else:
        d = data
        csv = pd.read_csv(d / "train.csv", dtype=str)
        if case == "no_csv":
            (d / "train.csv").unlink()
        elif case == "columns":
            csv.rename(columns={"age": "years"}).to_csv(d / "train.csv", index=False)
        elif case == "empty":
            for f in _folders(d):
                for img in f.iterdir():
                    img.unlink()
        elif case == "escape":
            csv.loc[0, "path"] = "../../../etc"
            csv.to_csv(d / "train.csv", index=False)
    assert_clean_error(_train(d, tmp_path), needle)


def test_odd_image_formats_are_converted(tmp_path):
    rgb = np.zeros((40, 30, 3), np.uint8)
    rgb[:10] = (255, 0, 0)  # red band on top
    Image.fromarray(rgb).convert("L").save(tmp_path / "grey.jpg")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.dstack([rgb, np.full((40, 30), 128, np.uint8)])).save(tmp_path / "rgba.png")
    cv2.imwrite(str(tmp_path / "deep.png"), (rgb[..., ::-1].astype(np.uint16) * 257))
    im = Image.fromarray(np.rot90(rgb, -1).copy())  # stored sideways with an EXIF 'rotate back' tag
    exif = im.getexif()
    exif[0x0112] = 8
    im.save(tmp_path / "exif.jpg", exif=exif)
    for name in ("grey.jpg", "cmyk.jpg", "rgba.png", "deep.png", "exif.jpg"):
        a = read_rgb(tmp_path / name)
        assert a is not None and a.dtype == np.uint8 and a.shape == (40, 30, 3), name
        if name != "grey.jpg":
            assert a[:10, :, 0].mean() > 200 and a[20:, :, 0].mean() < 60, name  # the red band is on top


@pytest.mark.e2e
def test_nan_loss_stops_with_a_clear_message(data, tmp_path):
    p = _train(data, tmp_path, "--lr", "1e30", "--optimizer", "sgd", "--scheduler", "constant")
    assert_clean_error(p, "loss became", "no checkpoint was saved yet", "--lr")  # epoch 1: no last.pth to name


class Payload:
    def __reduce__(self):
        return (print, ("this ran on load",))


@pytest.mark.e2e
def test_pickled_code_checkpoint_is_refused(tiny_root, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"model": {}, "meta": {}, "extra": Payload()}, run_dir / "best.pth")
    p = run("inference.py", "--data_dir", tiny_root / "eval", "--model_dir", run_dir, "--output_dir", tmp_path / "o",
            check=False)
    assert_clean_error(p, "best.pth", "pickled")
    assert "this ran on load" not in p.stdout + p.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.e2e
def test_eval_paths_must_stay_inside(tiny_root, tiny_runs, tmp_path):
    ev = tmp_path / "eval"
    shutil.copytree(tiny_root / "eval", ev)
    info = pd.read_csv(ev / "info.csv")
    info.loc[0, "ImageID"] = "../../secret.jpg"
    info.to_csv(ev / "info.csv", index=False)
    p = run("inference.py", "--data_dir", ev, "--model_dir", tiny_runs["single"], "--output_dir", tmp_path / "o",
            check=False)
    assert_clean_error(p, "outside")


@pytest.mark.e2e
def test_debug_flag_shows_the_traceback(tmp_path):
    p = run("evaluation.py", "--gt_dir", tmp_path, "--output_dir", tmp_path, "--debug", check=False)
    assert p.returncode != 0 and "Traceback" in p.stderr
