"""Writing files safely: atomic writes (a temp file renamed into place), stale temp files of dead writers,
paths kept inside a folder, output folders checked writable, never-reused run folder names, a CSV's ID
column checked (none blank, none twice).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
from pathlib import Path

import numpy as np

from masktk.errors import UserError


def nearest_existing(path) -> Path:
    """`path` itself, or the nearest of its parents that exists (what a folder to be made would sit on)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def writable_dir(path, flag):
    """Check, before any work, that `path` can become a folder we write in: the nearest part of it that
    exists must be a folder this process may write to (a read-only filesystem says no here too). Nothing
    is created: a run that then fails leaves no empty folder behind."""
    path = Path(path)
    probe = nearest_existing(path)
    if not probe.is_dir():
        raise UserError(f"{probe} is a file, not a folder: choose another {flag}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{probe}: cannot write there (read-only or no permission): choose another {flag}")
    return path


_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40]


_UMASK = os.umask(0o022)  # read once (the call sets it), then put back
os.umask(_UMASK)


def clean_stale_temps(folder):
    """Remove the temp files of writers on this host that died (kill -9) before they renamed them."""
    for f in Path(folder).glob(".tmp-*~*~*~*"):
        _, pid, host, _ = f.name.rsplit("~", 3)
        if host == _HOST and pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temp path next to `path`; on success rename it over `path`, on failure delete it.

    Readers never see a half-written file, and an interrupted writer leaves only a temp file
    with a name that starts with '.tmp-' (ignored and cleaned by the next run).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    # the writer's pid and host in the name: a later run can tell a dead writer's file (clean_stale_temps)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.stem}~{os.getpid()}~{_HOST}~", suffix=suffix, dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600: results are for the user's group and containers too
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def temp_dir_beside(path):
    """A new folder of this writer's own beside `path` (.tmp-<name>~<pid>~<host>~...), with the mode a plain
    mkdir would give: renamed over `path` when complete, so no reader ever sees half of it."""
    path = Path(path)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{path.name}~{os.getpid()}~{_HOST}~", dir=path.parent)
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
    return Path(tmp)


def write_text_atomic(path, text: str):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json_atomic(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_csv_atomic(df, path, **kw):
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **kw)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def inside(root, rel) -> Path:
    """Resolve `rel` under `root`, refusing paths that escape it (e.g. '../../etc/passwd')."""
    root = Path(root).resolve()
    p = (root / rel).resolve()
    if p != root and root not in p.parents:
        raise UserError(f"path {rel!r} points outside the data directory {root}")
    return p


def increment_dir(base: Path, name: str) -> Path:
    """base/name, base/name2, base/name3, ...: never reuse a previous run's folder."""
    p = base / name
    n = 2
    while p.exists():
        p = base / f"{name}{n}"
        n += 1
    return p


def check_ids(ids, path, column="ImageID"):
    """A CSV's ID column (pandas, read as str): every row names something, and nothing twice (a
    submission has one answer per photo). Rows are numbered as in the file (the header is row 1)."""
    blank = ids.isna().to_numpy() | (ids.fillna("").str.strip() == "").to_numpy()
    if blank.any():
        raise UserError(f"{path}: row {int(blank.argmax()) + 2} has no {column}")
    dup = ids.duplicated().to_numpy()
    if dup.any():
        raise UserError(f"{path}: {column} {ids[dup].iloc[0]!r} appears twice (rows "
                        f"{', '.join(str(i + 2) for i in np.flatnonzero(ids == ids[dup].iloc[0]))})")
