"""Shared fixtures: tiny datasets rendered into tmp dirs, and a runner for the real scripts."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "realdata"
sys.path.insert(0, str(REPO))

# The suite checks the CPU paths (what CI runs) and compares CPU results exactly, so on a machine with
# a GPU it hides the GPU from itself and from the scripts it starts; tests/test_cuda.py gives the GPU
# back to the processes it starts (GPU_ENV) and checks the CUDA paths.
# The value before hiding is kept in the environment: pytest-xdist starts its workers after the main
# process hid the GPU, and they must hand test_cuda.py the GPUs the user had, not the hidden value (they
# did: under `make test` on an H100 the CUDA tests skipped as if no GPU were there).
_UNSET = "<unset>"
os.environ.setdefault("MASKTK_TEST_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", _UNSET))
_visible = os.environ["MASKTK_TEST_VISIBLE_DEVICES"]
GPU_ENV = {"CUDA_VISIBLE_DEVICES": None if _visible == _UNSET else _visible}
os.environ["CUDA_VISIBLE_DEVICES"] = ""

# Under pytest-xdist every worker, and every script it starts, would otherwise use all the cores, so the
# machine runs workers x cores threads: on 2 cores the suite took 7 min 46 s that way and 4 min 44 s with a
# thread per worker. Each process gets its share of the cores (an explicit OMP_NUM_THREADS wins).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

# a real timm network, small enough to train in seconds on CPU
TINY = ["--model", "test_efficientnet", "--pretrained", "False", "--img_size", "32", "32", "--batch_size", "16",
        "--progress", "False", "--epochs", "2"]
# one epoch of that network, for tests of what happens around training
BASE = ["--model", "test_efficientnet", "--pretrained", "False", "--batch_size", "16", "--progress", "False",
        "--epochs", "1"]


def run(*args, check=True, env=None, timeout=600, cwd=REPO):
    """Run a script of the toolkit as a user would; returns the CompletedProcess."""
    e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    e = {k: v for k, v in e.items() if v is not None}  # None in env: unset
    for k in ("SM_CHANNEL_TRAIN", "SM_CHANNEL_EVAL", "SM_CHANNEL_MODEL", "SM_MODEL_DIR", "SM_OUTPUT_DATA_DIR",
              "SM_GROUND_TRUTH_DIR"):
        if not (env and k in env):
            e.pop(k, None)
    p = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=e, capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}")
    return p


def assert_clean_error(p, *needles):
    """Exit status 2, one 'error:' line naming what is wrong, no traceback."""
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    lines = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, p.stderr[-2000:]
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])


def _built_once(tmp_path_factory, name, build):
    """A folder built once per test session, shared by pytest-xdist's workers (each used to build its own)."""
    from filelock import FileLock  # a dependency of torch
    base = tmp_path_factory.getbasetemp()
    base = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the session's, not a worker's
    target = base / name
    with FileLock(str(target) + ".lock"):
        if not (target / ".built").is_file():
            shutil.rmtree(target, ignore_errors=True)
            build(target)
            (target / ".built").touch()
    return target


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """30 drawn people (about 24 train, 6 eval), rendered once per session."""
    built = _built_once(tmp_path_factory, "tiny", lambda d: run("synthetic.py", "--out", d / "data", "--people", "30",
                                                                "--seed", "3"))
    return built / "data"


RUN_MODES = {"single": [], "cv": ["--cv", "True", "--k_folds", "3", "--years_weight", "1"],
             "multi": ["--multi=True", "--years_weight", "1"], "heads": ["--heads", "--years_weight", "1"]}


@pytest.fixture(scope="session")
def tiny_runs(tiny_root, tmp_path_factory):
    """Tiny runs of every training mode (the years head in all but the plain single run), shared by the
    inference tests, which only read them."""
    def build(md):
        for name, extra in RUN_MODES.items():
            run("train.py", "--data_dir", tiny_root / "train", "--model_dir", md, *TINY, "--run_dir", md / name, *extra)
    md = _built_once(tmp_path_factory, "runs", build)
    return {name: md / name for name in RUN_MODES}
