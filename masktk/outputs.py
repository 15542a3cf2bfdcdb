"""What the toolkit wrote where: each output folder keeps a manifest of the files the toolkit wrote into
it, so an output never replaces an input or a file the user made, and a later run may replace only
the toolkit's own earlier results (saying so)."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from pathlib import Path

from masktk.errors import UserError
from masktk.files import write_json_atomic

MANIFEST = ".masktk-outputs"  # JSON, in each folder the toolkit writes results into (no .json: not a result)


def read_manifest(folder) -> tuple[str | None, set[str]]:
    """(the script that made the folder's manifest, the names relative to `folder` it recorded writing);
    (None, nothing) for a missing or damaged manifest, which is then never trusted."""
    path = Path(folder) / MANIFEST
    if path.exists() and not path.is_file():
        raise UserError(f"{path} is not a file: it is the name of the toolkit's list of the files it wrote there; "
                        "move it away")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, set()
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list):
        return None, set()
    return str(data.get("made_by")), {f for f in files if isinstance(f, str)}


def written_here(folder) -> set[str]:
    return read_manifest(folder)[1]


def record_written(folder, names, made_by):
    """Add `names` to the folder's manifest (before they are written: a kill leaves them listed, and
    listed files that do not exist are harmless)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with folder_locked(folder):  # read, merge, replace: a writer beside us would otherwise drop our names or its own
        files = sorted(written_here(folder) | set(names))
        write_json_atomic(folder / MANIFEST, {"made_by": made_by, "files": files})


@contextlib.contextmanager
def folder_locked(folder):
    """An exclusive lock on the folder itself (flock on its descriptor): no lock file is left beside the user's."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_outputs(folder, names, flag, inputs=(), say_replaced=True):
    """Before any work: refuse an output that is an input of this run or a file the toolkit did not write;
    say in one line when earlier results will be replaced. record_written follows, just before writing."""
    folder = Path(folder)
    ours, inputs = written_here(folder), {Path(p).resolve() for p in inputs}
    for name in names:
        path = folder / name
        if path.resolve() in inputs:
            raise UserError(f"{path} is an input of this run and would be replaced by its output: choose "
                            f"another {flag}")
        if path.is_dir():
            raise UserError(f"{path} is a folder, not a file this run may write: choose another {flag}")
        if path.exists() and name not in ours:
            raise UserError(f"{path} exists and was not written by this toolkit, so it is not replaced: move it, "
                            f"or choose another {flag}")
    again = [n for n in names if (folder / n).exists()]
    if again and say_replaced:
        print(f"note: replacing {len(again)} earlier result file(s) in {folder} ({again[0]}"
              f"{', ...' if len(again) > 1 else ''})", file=sys.stderr)


def foreign_files(root):
    """Files under `root` that no manifest under it lists (the manifests themselves are the toolkit's)."""
    root = Path(root)
    ours = set()
    for manifest in root.rglob(MANIFEST):
        ours |= {(manifest.parent / n).resolve() for n in written_here(manifest.parent)} | {manifest.resolve()}
    found = []
    for dirpath, _, filenames in os.walk(root):
        found += [Path(dirpath) / f for f in filenames if (Path(dirpath) / f).resolve() not in ours]
    return sorted(found)
