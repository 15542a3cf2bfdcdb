"""synthetic.py: the drawn dataset and the folders it may replace."""
import pandas as pd
import pytest
from conftest import assert_clean_error, run


@pytest.mark.e2e
def test_synthetic_replaces_only_folders_it_made(tmp_path):
    """--out is replaced whole: a mistyped --out naming real data used to be deleted without a word."""
    (tmp_path / "real" / "train").mkdir(parents=True)
    (tmp_path / "real" / "train" / "train.csv").write_text("id,gender,race,age,path\n")
    p = run("synthetic.py", "--out", tmp_path / "real", "--people", "10", "--eval_ratio", "0.5", check=False)
    assert_clean_error(p, str(tmp_path / "real"), "not made by synthetic.py")
    assert (tmp_path / "real" / "train" / "train.csv").is_file() and len(list(tmp_path.iterdir())) == 1
    for people in ("10", "12"):  # its own output is replaced whole
        run("synthetic.py", "--out", tmp_path / "gen", "--people", people, "--eval_ratio", "0.5")
    assert len(pd.read_csv(tmp_path / "gen" / "eval" / "gt.csv")) + 7 * len(
        pd.read_csv(tmp_path / "gen" / "train" / "train.csv")) == 12 * 7


@pytest.mark.e2e
def test_synthetic_never_deletes_a_file_it_did_not_write(tmp_path):
    """An empty, hand-made marker proves nothing (a folder holding one used to be deleted whole), and a
    file added to a folder synthetic.py made is the user's: the folder is refused, every file kept."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / ".made-by-synthetic").write_text("")
    (fake / "notes.txt").write_text("mine")
    for marker in (".made-by-synthetic", ".masktk-outputs"):
        (fake / marker).write_text("")
        assert_clean_error(run("synthetic.py", "--out", fake, "--people", "10", "--eval_ratio", "0.5", check=False),
                           str(fake))
        assert (fake / "notes.txt").read_text() == "mine"
    gen = tmp_path / "gen"
    run("synthetic.py", "--out", gen, "--people", "10", "--eval_ratio", "0.5")
    (gen / "train" / "my_notes.txt").write_text("mine")
    p = run("synthetic.py", "--out", gen, "--people", "12", "--eval_ratio", "0.5", check=False)
    assert_clean_error(p, "my_notes.txt")
    assert (gen / "train" / "my_notes.txt").read_text() == "mine"
    assert len(pd.read_csv(gen / "train" / "train.csv")) + len(pd.read_csv(gen / "eval" / "gt.csv")) // 7 == 10
