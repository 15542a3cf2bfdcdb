"""Run folders: naming and claiming a new one, the people a run started on, resuming, finding the newest.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
from pathlib import Path

from masktk import distributed
from masktk.cli import env_default
from masktk.data.splits import split_people
from masktk.errors import UserError
from masktk.files import increment_dir, writable_dir, write_json_atomic
from masktk.labels import MULTI_TASKS


def check_same_people(run_dir, table):
    """Record the run's people when it starts; refuse to go on (--resume, a fold job sharing the folder)
    with other people or labels: the folds would be drawn anew, so a fold's validation people could have
    been trained on, and the out-of-fold predictions would mix splits."""
    people = split_people(table)
    now = {"people": len(people), "digest": hashlib.sha1(people.to_csv(index=False).encode()).hexdigest()[:16]}
    path = run_dir / "people.json"

    def check():
        if not path.is_file():
            write_json_atomic(path, now)
            return
        saved = read_json_object(path, ("digest", "people"))
        if saved["digest"] != now["digest"]:
            raise UserError(f"{run_dir} started on other data ({saved['people']} people then, {now['people']} now, "
                            "or other labels), so its folds would be drawn anew: start a new run on this data "
                            "(another --run_dir), or go on with the data it started with")
    distributed.on_rank0(check)


def has_progress(run_dir):
    """True once some unit of the run finished an epoch (last.pth) or all of them (metrics.json)."""
    return any(Path(run_dir).rglob("last.pth")) or any(Path(run_dir).rglob("metrics.json"))


def interrupted_hint(run_dir):
    """What to run after Ctrl-C or a scheduler's SIGTERM stopped the training."""
    if has_progress(run_dir):
        return f"{run_dir}: interrupted; continue it with: python train.py --resume {run_dir}"
    return f"{run_dir}: interrupted before its first epoch ended; start it again (without --resume)"


def given_run_dir(cfg):
    """The run folder given (--resume, --run_dir), or None: a new one under --model_dir, checked here
    and named when it is created, once the data has loaded (a run that fails on its data leaves no folder)."""
    if cfg.resume or cfg.run_dir:
        return Path(cfg.resume or cfg.run_dir)
    writable_dir(cfg.model_dir, "--model_dir (SM_MODEL_DIR)")
    return None


def create_run_dir(run_dir, cfg, config, dist):
    """Create the run folder (rank 0; a new one is named exp, exp2, ...) and write its config.json -> the
    folder, on every rank. config: what to write, given the folder (settings.run_config). A new name is claimed with an exclusive mkdir: a run started at the same moment
    (seeds launched together) may have taken it while this one loaded its data; then the next free one."""
    def claim():
        if run_dir is not None:
            writable_dir(run_dir, "--run_dir").mkdir(parents=True, exist_ok=True)
            return str(run_dir)
        while True:
            new = increment_dir(Path(cfg.model_dir), cfg.name)
            try:
                new.mkdir(parents=True)
                return str(new)
            except FileExistsError:
                continue
    run_dir = Path(distributed.on_rank0(claim))
    if dist.is_main and not (run_dir / "config.json").is_file():
        write_json_atomic(run_dir / "config.json", config(run_dir))
    distributed.barrier()
    distributed.check_shared_dir(run_dir)
    return run_dir


@contextlib.contextmanager
def removed_if_it_fails_empty(run_dir, named_here, dist):
    """A run folder this run named (exp, exp2, ...) that fails before its first checkpoint is removed: it
    holds nothing to resume and would bump the next run's name. A --run_dir given is kept (fold jobs share it)."""
    try:
        yield
    except BaseException:
        if named_here and dist.is_main and not any(Path(run_dir).rglob("*.pth")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def resolve_run_path(path):
    """A folder as given, or under ./model/ as the original's --model_dir was (exp -> model/exp)."""
    p = Path(path)
    if not p.exists() and (Path("model") / p).is_dir():
        print(f"note: {p} not found; using model/{p}", file=sys.stderr)
        return Path("model") / p
    return p


def is_run(path):
    """A folder train.py wrote one run into: its config.json, a checkpoint, fold*/ or task folders."""
    p = Path(path)
    return (any((p / name).is_file() for name in ("config.json", "best.pth", "last.pth"))
            or any(d.is_dir() and d.name[4:].isdigit() for d in p.glob("fold*"))
            or any((p / t / "best.pth").is_file() for t in MULTI_TASKS))


def newest_run(model_dir):
    """The run in model_dir that started last (its config.json's time), or None."""
    runs = [d for d in Path(model_dir).iterdir() if d.is_dir() and not d.name.startswith(".") and is_run(d)]
    started = lambda d: ((d / "config.json") if (d / "config.json").is_file() else d).stat().st_mtime  # noqa: E731
    return max(runs, key=lambda d: (started(d), d.name)) if runs else None


def add_run_flags(ap):
    """--model_dir and --run_dir as every script that uses a trained run takes them."""
    ap.add_argument("--model_dir", default=env_default("SM_CHANNEL_MODEL", "model"),
                    help="folder of runs: its newest run is used; a run folder itself also works (env SM_CHANNEL_MODEL)")
    ap.add_argument("--run_dir", default=None, help="this run instead of the newest in --model_dir")


def chosen_run(model_dir, run_dir=None):
    """The run a prediction uses: --run_dir; else --model_dir itself when it is a run (the original's
    usage); else the newest run in it, named on stderr."""
    if run_dir:
        return resolve_run_path(run_dir)
    p = resolve_run_path(model_dir)
    if not p.is_dir() or is_run(p):
        return p
    run = newest_run(p)
    if run is None:
        raise UserError(f"{p}: no run in it (no folder with config.json or best.pth); train one with "
                        f"python train.py --model_dir {p}, or pass --run_dir RUN")
    print(f"using the newest run in {p}: {run} (pass --run_dir to choose another)", file=sys.stderr)
    return run


def read_json_object(path, keys):
    """A JSON object the toolkit wrote with `keys` in it, or one UserError naming the file."""
    try:
        d = json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        d = e
    if not isinstance(d, dict) or not all(k in d for k in keys):
        raise UserError(f"{path}: not as train.py writes it (a JSON object with {', '.join(keys)}); it was damaged "
                        "or edited: restore it, or start a new run")
    return d
