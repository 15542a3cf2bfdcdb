"""Scale-out: real torchrun processes on CPU (gloo), and fold jobs as separate processes."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, TINY, run
from dataset import BatchDataset, Log, build_table, make_loader, task_targets
from evaluation import score
from inference import predict_probs
from model import load_checkpoint, model_from_checkpoint


def test_torchrun_two_processes_match_a_single_process_evaluation(tiny_root, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
           "--data_dir", str(tiny_root / "train"), "--model_dir", str(tmp_path), *TINY, "--name", "ddp"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = [d for d in tmp_path.iterdir() if not d.name.startswith(".")]
    assert [d.name for d in runs] == ["ddp"]  # exactly one run folder
    assert sorted(f.name for f in runs[0].glob("*.pth")) == ["best.pth", "last.pth"]
    assert p.stdout.count("epoch 2/2") == 1  # only rank 0 prints
    # validation F1 logged under DDP == F1 of the saved best weights in one process, same people
    vp = pd.read_csv(runs[0] / "valid_preds.csv")
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    model, meta = model_from_checkpoint(runs[0] / "best.pth")
    table = build_table(tiny_root / "train", log=Log(quiet=True)).set_index("path")
    assert len(vp) == len(set(vp["path"])) == table.loc[table["people_path"].isin(set(vp["people_path"]))].shape[0]
    from dataset import decode_many
    arrays, _ = decode_many([tiny_root / "train" / p for p in vp["path"]], [((32, 32), "center")])
    probs = predict_probs(model, meta, arrays[((32, 32), "center")])["label"].numpy()
    f1 = score(vp["label"].to_numpy(), probs.argmax(1))["f1"]
    assert f1 == pytest.approx(metrics["best_f1"], abs=1e-9)
    assert np.allclose(probs, vp[[f"p{i}" for i in range(18)]].to_numpy(), atol=1e-4)


def test_ranks_end_with_identical_weights(tiny_root, tmp_path):
    """train.py under torchrun, with evaluate wrapped to all-gather each rank's parameter checksum."""
    script = tmp_path / "check.py"
    script.write_text(f"""
import sys, torch, torch.distributed as dist
sys.path.insert(0, {str(REPO)!r})
sys.argv = ['train.py', '--data_dir', {str(tiny_root / 'train')!r}, '--model_dir', {str(tmp_path)!r},
            *{TINY!r}, '--run_dir', {str(tmp_path / 'r')!r}]
import train
orig = train.evaluate
def checked(model, loader, ctx):
    s = torch.tensor([sum(float(p.double().sum()) for p in model.parameters())], dtype=torch.float64)
    every = [torch.zeros(1, dtype=torch.float64) for _ in range(dist.get_world_size())]
    dist.all_gather(every, s)
    if dist.get_rank() == 0:
        print('SUMS', ' '.join(repr(float(v)) for v in every), flush=True)
    return orig(model, loader, ctx)
train.evaluate = checked
train.main()
""")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [line.split()[1:] for line in p.stdout.splitlines() if line.startswith("SUMS")]
    assert len(lines) == 2  # one per epoch
    for a, b in lines:
        assert a == b


def test_two_fold_jobs_as_separate_processes_then_merge(tiny_root, tmp_path):
    rd = tmp_path / "cv"
    base = [sys.executable, "train.py", "--data_dir", str(tiny_root / "train"), "--model_dir", str(tmp_path), *TINY,
            "--epochs", "1", "--cv", "True", "--k_folds", "2", "--run_dir", str(rd)]
    procs = [subprocess.Popen(base + ["--fold", str(i)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    p = run("train.py", "--merge", rd)
    assert "CV (2 folds" in p.stdout
    oof = pd.read_csv(rd / "oof.csv")
    assert sorted(oof["path"]) == sorted(build_table(tiny_root / "train", log=Log(quiet=True))["path"])
    # a merge with a fold missing says which
    (rd / "fold1" / "metrics.json").unlink()
    p = run("train.py", "--merge", rd, check=False)
    assert p.returncode == 2 and "fold1" in p.stderr
