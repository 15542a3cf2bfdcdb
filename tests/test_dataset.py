"""Data layer: labels, the label table, label fixes, person-level splits, the demo table."""
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, assert_clean_error, run

from masktk.data.table import build_table
from masktk.errors import Log
from masktk.labels import age_class, decode, encode


def test_label_encode_decode_round_trip():
    for label in range(18):
        m, g, a = decode(label)
        assert encode(m, g, a) == label
        assert 0 <= m < 3 and 0 <= g < 2 and 0 <= a < 3
    assert encode(2, 1, 2) == 17 and encode(1, 0, 1) == 7


def test_age_bounds():
    ages = np.array([18, 29, 30, 57, 58, 59, 60])
    assert age_class(ages).tolist() == [0, 0, 1, 1, 1, 1, 2]
    assert age_class(ages, (29, 58)).tolist() == [0, 1, 1, 1, 2, 2, 2]


def test_table_skips_hidden_and_unknown_files_and_applies_fixes(tiny_root, tmp_path):
    d = tmp_path / "train"
    shutil.copytree(tiny_root / "train", d)
    csv = pd.read_csv(d / "train.csv", dtype=str)
    male = csv.index[csv["gender"] == "male"][0]
    other = csv.index[csv.index != male][0]
    csv.loc[male, "id"] = "004432"  # published fix: male -> female
    csv.loc[other, "id"] = "000020"  # published fix: incorrect_mask and normal swapped
    csv.to_csv(d / "train.csv", index=False)
    folder = d / "images" / csv.loc[male, "path"]
    (folder / "._mask1.jpg").write_bytes(b"\0\0")
    (folder / "notes.txt").write_text("x")
    log = Log(quiet=True)
    t = build_table(d, log=log)
    assert log.counts["hidden file"] == 1 and log.counts["unknown file"] == 1
    assert len(t) == 7 * len(csv)
    assert (t.loc[t["people_path"] == csv.loc[male, "path"], "gender"] == 1).all()
    swapped = t[t["people_path"] == csv.loc[other, "path"]]
    swapped = swapped.set_index(swapped["path"].str.rsplit("/", n=1).str[-1])
    assert swapped.loc["incorrect_mask.jpg", "mask"] == 2 and swapped.loc["normal.jpg", "mask"] == 1
    assert (t["label"] == encode(t["mask"], t["gender"], t["age"])).all()
    assert (t["sub_label"] == t["gender"] * 3 + t["age"]).all()
    assert not t["path"].str.startswith("/").any()  # relative: the file moves with the data


def test_fixes_file_holds_the_published_fixes():
    f = pd.read_csv(REPO / "masktk" / "data" / "label_fixes.csv", dtype=str)
    assert set(f.loc[f["value"] == "female", "id"]) == {"001498-1", "004432"}
    assert set(f.loc[f["value"] == "male", "id"]) == {f"00636{i}" for i in range(5)} | {"006359"}
    assert set(f.loc[f["field"] == "mask", "id"]) == {"000020", "004418", "005227"}


@pytest.mark.e2e
def test_committed_perfect_train_is_the_demo_table(tmp_path):
    run("synthetic.py", "--out", tmp_path / "demo")
    run("dataset.py", "--data_dir", tmp_path / "demo" / "train")
    assert (tmp_path / "demo" / "train" / "perfect_train.csv").read_bytes() == (REPO / "perfect_train.csv").read_bytes()


@pytest.mark.e2e
def test_a_mistyped_fixes_file_and_a_bad_fix_value_are_errors(tiny_root, tmp_path):
    base = ["dataset.py", "--data_dir", tiny_root / "train", "--out", tmp_path / "t.csv"]
    assert_clean_error(run(*base, "--fixes", tmp_path / "nope.csv", check=False), "nope.csv", "not found")
    pid = (tiny_root / "train" / "train.csv").read_text().splitlines()[1].split(",")[0]
    (tmp_path / "f.csv").write_text(f"id,field,value\n{pid},gender,unknown\n")
    assert_clean_error(run(*base, "--fixes", tmp_path / "f.csv", check=False), "unknown fix")


def test_a_truncated_jpeg_makes_its_person_incomplete_at_table_time(tiny_root, tmp_path):
    from masktk.data.table import build_table
    from masktk.errors import Log
    data = tmp_path / "train"
    shutil.copytree(tiny_root / "train", data)
    person = sorted((data / "images").iterdir())[0]
    f = person / "mask2.jpg"
    f.write_bytes(f.read_bytes()[:2000])
    log = Log(quiet=True)
    t = build_table(data, log=log, max_bad=1.0)
    assert log.counts.get("incomplete person") == 1 and log.counts.get("unreadable image") == 1
    assert not (t["path"] == f"images/{person.name}/mask2.jpg").any()


def test_tiny_images_are_kept_with_a_warning(tiny_root, tmp_path):
    from PIL import Image

    from masktk.data.table import build_table
    from masktk.errors import Log
    data = tmp_path / "train"
    shutil.copytree(tiny_root / "train", data)
    person = sorted((data / "images").iterdir())[0]
    Image.new("RGB", (1, 1)).save(person / "normal.jpg")
    log = Log(quiet=True)
    build_table(data, log=log)
    assert log.counts.get("tiny image") == 1


def test_image_ids_must_be_present_and_unique_in_info_csv_and_in_answers(tmp_path):
    """A blank ImageID used to end in a TypeError, and a repeated one in a submission that evaluation.py
    then refused: both are one line naming the file and the rows, in info.csv and in scored files alike."""
    from masktk.data.table import read_eval
    from masktk.errors import UserError
    from masktk.metrics.classification import read_answers
    (tmp_path / "images").mkdir()
    for n in ("a.jpg", "b.jpg"):
        (tmp_path / "images" / n).write_bytes(b"x")
    cases = {"ImageID,ans\na.jpg,0\nb.jpg,1\na.jpg,2\n": "'a.jpg' appears twice (rows 2, 4)",
             "ImageID,ans\na.jpg,0\n,1\n": "row 3 has no ImageID",
             "ImageID,ans\na.jpg,0\n  ,1\n": "row 3 has no ImageID"}
    for text, needle in cases.items():
        (tmp_path / "info.csv").write_text(text)
        for read in (lambda: read_eval(tmp_path), lambda: read_answers(tmp_path / "info.csv", "submission")):
            with pytest.raises(UserError, match=__import__("re").escape(needle)):
                read()
    (tmp_path / "info.csv").write_text("ImageID,ans\na.jpg,0\nb.jpg,1\n")
    assert len(read_eval(tmp_path)[1]) == 2 and len(read_answers(tmp_path / "info.csv", "x")) == 2


@pytest.mark.e2e
def test_the_label_table_never_replaces_train_csv_or_a_users_file(tiny_root, tmp_path):
    train = tmp_path / "train"
    shutil.copytree(tiny_root / "train", train)
    before = (train / "train.csv").read_bytes()
    for target, needle in ((train / "train.csv", "input"), (train / "images", "folder")):
        assert_clean_error(run("dataset.py", "--data_dir", train, "--out", target, check=False), str(target), needle)
    assert (train / "train.csv").read_bytes() == before
    (tmp_path / "table.csv").write_text("my own table\n")
    assert_clean_error(run("dataset.py", "--data_dir", train, "--out", tmp_path / "table.csv", check=False),
                       "not written by this toolkit")
    assert (tmp_path / "table.csv").read_text() == "my own table\n"
    for _ in range(2):  # its own table is written again
        run("dataset.py", "--data_dir", train)
    assert pd.read_csv(train / "perfect_train.csv").shape[0] == 7 * len(pd.read_csv(train / "train.csv"))


@pytest.mark.parametrize("age", ["-5", "999", "0"])
def test_implausible_ages_are_bad_rows(tiny_root, tmp_path, age, capsys):
    train = tmp_path / "train"
    shutil.copytree(tiny_root / "train", train)
    csv = pd.read_csv(train / "train.csv", dtype=str)
    csv.loc[0, "age"] = age
    csv.to_csv(train / "train.csv", index=False)
    log = Log()
    t = build_table(train, log=log)
    assert csv.loc[0, "path"] not in set(t["people_path"]) and len(t) == 7 * (len(csv) - 1)
    assert log.counts.get("bad age") == 1 and f"age {age!r}" in capsys.readouterr().err


def test_boundary_years_are_the_ages_just_under_each_band_edge():
    from masktk.labels import near_bound
    ages = np.arange(18, 61)
    assert ages[near_bound(ages, (30, 60), 2)].tolist() == [28, 29, 58, 59]
    assert ages[near_bound(ages, (29, 58), 1)].tolist() == [28, 57]
    assert not near_bound(ages, (30, 60), 0).any()
