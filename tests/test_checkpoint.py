"""masktk/checkpoint.py: the one save/load pair, and files it must refuse."""
import subprocess

import pytest
import torch
from conftest import BASE, assert_clean_error, run

from masktk.checkpoint import load_checkpoint


def test_an_empty_or_foreign_checkpoint_is_named_not_a_traceback(tmp_path):
    """Empty, not a PyTorch file at all, or pickled objects: each gets its own one-line reason."""
    import pathlib

    from masktk.errors import UserError
    from masktk.weights import safe_load
    (tmp_path / "best.pth").write_bytes(b"")
    with pytest.raises(UserError, match="best.pth: not a readable checkpoint .*empty"):
        safe_load(tmp_path / "best.pth")
    (tmp_path / "best.pth").write_bytes(b"garbage\n")  # a text file: torch fails on an opcode, not a global
    with pytest.raises(UserError, match=r"best.pth: not a readable checkpoint \(UnpicklingError: not a PyTorch file\)"):
        safe_load(tmp_path / "best.pth")
    torch.save({"model": {}, "meta": pathlib.PurePosixPath("x")}, tmp_path / "best.pth")
    with pytest.raises(UserError, match="best.pth: refused, the file carries pickled code or objects"):
        safe_load(tmp_path / "best.pth")


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB filesystem (tmpfs; needs root, as CI runs): a checkpoint does not fit on it."""
    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.e2e
def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_leaves_no_partial_file(tiny_root, tmp_path, small_disk):
    """It was two stacked RuntimeErrors from torch.save and exit 1."""
    run_dir = small_disk / "r"
    p = run("train.py", "--data_dir", tiny_root / "train", "--run_dir", run_dir, "--cache_dir", tmp_path / "cache",
            *BASE, "--img_size", "32", "32", "--epochs", "2", check=False)
    assert_clean_error(p, str(run_dir), "no space left", "MiB")
    assert not list(small_disk.rglob(".tmp-*"))
    for f in small_disk.rglob("*.pth"):
        load_checkpoint(f)  # whatever was saved is whole
