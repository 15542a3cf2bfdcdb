"""Scale-out: real torchrun processes on CPU (gloo), and fold jobs as separate processes."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, TINY, run
from test_mask_only import _voc_dir

from masktk.checkpoint import model_from_checkpoint
from masktk.data.cache import decode_many
from masktk.data.table import build_table
from masktk.errors import Log
from masktk.metrics.classification import score
from masktk.predict.pipeline import predict_probs
from masktk.tta import DEFAULT_TTA

CHECK = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, {repo!r})
sys.argv = ['train.py'] + {args!r}
import train
from masktk.train import trainer
orig = trainer.evaluate
def checked(model, loader, ctx):  # every rank reports a checksum of its weights and buffers
    s = torch.tensor([sum(float(v.double().sum()) for v in model.state_dict().values() if v.is_floating_point())],
                     dtype=torch.float64)
    every = [torch.zeros(1, dtype=torch.float64) for _ in range(dist.get_world_size())]
    dist.all_gather(every, s)
    if dist.get_rank() == 0:
        print('SUMS', ' '.join(repr(float(v)) for v in every), flush=True)
    return orig(model, loader, ctx)
trainer.evaluate = checked
train.main()
"""


@pytest.mark.e2e
def test_torchrun_two_processes(tiny_root, tmp_path):
    """train.py under torchrun (2 processes, gloo): one run folder, one set of checkpoints, rank 0 alone
    prints, ranks hold identical weights, and the logged validation F1 equals the F1 of the saved best
    checkpoint computed in a single process on the same validation people. Mask-only photos (VOC boxes)
    train on both ranks and are never validated."""
    voc = _voc_dir(tiny_root, tmp_path / "voc")
    args = ["--data_dir", str(tiny_root / "train"), "--model_dir", str(tmp_path / "m"), *TINY, "--name", "ddp", "--ema", "0.9",
            "--extra_data", str(voc)]
    script = tmp_path / "check.py"
    script.write_text(CHECK.format(repo=str(REPO), args=args))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = [d for d in (tmp_path / "m").iterdir() if not d.name.startswith(".")]
    assert [d.name for d in runs] == ["ddp"]  # exactly one run folder
    assert sorted(f.name for f in runs[0].glob("*.pth")) == ["best.pth", "last.pth"]
    assert p.stdout.count("epoch 2/2") == 1  # only rank 0 prints
    assert "3 faces labelled with mask status only" in p.stdout + p.stderr
    sums = [line.split()[1:] for line in p.stdout.splitlines() if line.startswith("SUMS")]
    assert len(sums) == 2 and all(a == b for a, b in sums)  # identical weights on both ranks, every epoch
    vp = pd.read_csv(runs[0] / "valid_preds.csv")
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    table = build_table(tiny_root / "train", log=Log(quiet=True))
    valid_people = set(vp["people_path"])
    assert sorted(vp["path"]) == sorted(table.loc[table["people_path"].isin(valid_people), "path"])  # each once
    model, meta = model_from_checkpoint(runs[0] / "best.pth")
    arrays, _ = decode_many([tiny_root / "train" / p for p in vp["path"]], [((32, 32), "center")])
    # validation averages the run's views (DEFAULT_TTA here), which inference.py averages by default, so the
    # fitted decisions fit them
    assert meta.config["tta"] == meta.tta == DEFAULT_TTA
    probs = predict_probs(model, meta, arrays[((32, 32), "center")], tta=DEFAULT_TTA)["label"].numpy()
    assert np.allclose(probs, vp[[f"p{i}" for i in range(18)]].to_numpy(), atol=1e-5)
    assert score(vp["label"].to_numpy(), probs.argmax(1))["f1"] == pytest.approx(metrics["best_f1"], abs=1e-12)


@pytest.mark.e2e
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
