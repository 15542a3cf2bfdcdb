"""Export a trained run to ONNX, checked against torch with onnxruntime.

    python export.py                                  # the newest run in model/
    python export.py --run_dir model/exp [--out exp.onnx] [--opset 17]

Writes model.onnx beside each checkpoint of the run (a single run: <run>/model.onnx; a CV run: one per
fold, fold<i>/model.onnx; --multi: one per task), each with model.json describing its input (size,
normalisation) and outputs. Each file is checked on a batch against the checkpoint it came from: the
largest absolute difference of the logits is printed, and a file that disagrees is not kept.
`predict.py --backend onnx` runs them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from masktk.cli import cli, load_dotenv_once, make_parser, positive
from masktk.errors import UserError
from masktk.outputs import check_outputs, record_written
from masktk.predict.backends import export_one, onnx_path
from masktk.predict.pipeline import find_groups
from masktk.runs import add_run_flags, chosen_run

try:  # the newest opset the TorchScript exporter (export_onnx's) writes; a private name, hence the fallback
    from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as MAX_OPSET
except ImportError:
    MAX_OPSET = 17


def opset(v):
    """argparse type: an opset torch's exporter writes."""
    x = positive(int, 7, inclusive=True)(v)
    if x > MAX_OPSET:
        raise argparse.ArgumentTypeError(f"torch {torch.__version__} exports opsets 7 to {MAX_OPSET}, got {v}")
    return x


@cli
def main(argv):
    load_dotenv_once()
    ap = make_parser(__doc__)
    add_run_flags(ap)
    ap.add_argument("--pth_name", default="best.pth", help="checkpoint file in each run/fold/task folder")
    ap.add_argument("--out", default=None, help="output file for a run of one checkpoint (unset: beside it, "
                    "model.onnx); CV and --multi runs always write one file beside each checkpoint")
    ap.add_argument("--opset", type=opset, default=17, help="ONNX opset version (7 to the exporter's newest, "
                    f"{MAX_OPSET})")
    args = ap.parse_args(argv)
    run = chosen_run(args.model_dir, args.run_dir)
    ckpts = [ck for g in find_groups(run, args.pth_name) for ck in g]
    if args.out and len(ckpts) > 1:
        raise UserError(f"{run} holds {len(ckpts)} checkpoints (CV folds or tasks): --out names one file; leave "
                        "it out to write model.onnx beside each")
    outs = [Path(args.out)] if args.out else [onnx_path(ck) for ck in ckpts]
    for out in outs:
        check_outputs(out.parent, [out.name, out.with_suffix(".json").name], "--out")
    for ck, out in zip(ckpts, outs):
        record_written(out.parent, [out.name, out.with_suffix(".json").name], "export.py")
        diff = export_one(ck, out, args.opset)
        print(f"{ck} -> {out}: onnxruntime against torch, max abs difference {diff:.2e}", file=sys.stderr)


if __name__ == "__main__":
    main()
