"""checkpoint.py: the one save/load pair, and files it must refuse."""
import pytest
import torch


def test_an_empty_or_foreign_checkpoint_is_named_not_a_traceback(tmp_path):
    """Empty, not a PyTorch file at all, or pickled objects: each gets its own one-line reason."""
    import pathlib

    from model import safe_load
    from utils import UserError
    (tmp_path / "best.pth").write_bytes(b"")
    with pytest.raises(UserError, match="best.pth: not a readable checkpoint .*empty"):
        safe_load(tmp_path / "best.pth")
    (tmp_path / "best.pth").write_bytes(b"garbage\n")  # a text file: torch fails on an opcode, not a global
    with pytest.raises(UserError, match=r"best.pth: not a readable checkpoint \(UnpicklingError: not a PyTorch file\)"):
        safe_load(tmp_path / "best.pth")
    torch.save({"model": {}, "meta": pathlib.PurePosixPath("x")}, tmp_path / "best.pth")
    with pytest.raises(UserError, match="best.pth: refused, the file carries pickled code or objects"):
        safe_load(tmp_path / "best.pth")
