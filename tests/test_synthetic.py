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
