"""Turn trained runs into a submission: single run, CV folds, ensembles, multi-task, with TTA.

    python inference.py                                    # the newest run in model/, demo_data/eval
    SM_CHANNEL_EVAL=/data/eval SM_CHANNEL_MODEL=model/exp SM_OUTPUT_DATA_DIR=output python inference.py
    python inference.py --run_dir model/exp2 --tta flip    # a CV run: its k folds averaged
    python inference.py --ensemble=True --ensemble_runs model/exp model/exp2 --weights 1 2

Writes <output_dir>/<output_name>.csv (ImageID, ans in info.csv's order) and
<output_dir>/<output_name>_probs.npy (N x 18 float32 probabilities, same order) for later ensembling. A run
trained on a mask set answers the mask state alone: ImageID, mask (0 wear, 1 incorrect, 2 not wear) and N x 3.
Checkpoints describe themselves (architecture, input size, normalisation, crop), so no model flags.
Each eval image is decoded once, whatever the number of models and TTA views.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from masktk import distributed
from masktk.cli import add_bool, cli, demo_note, env_default, load_dotenv_once, make_parser, positive, str2bool
from masktk.data.table import read_eval
from masktk.errors import UserError
from masktk.faces.detectors import detector_arg
from masktk.files import atomic_path, writable_dir, write_csv_atomic
from masktk.labels import FULL, MASK_ONLY
from masktk.outputs import check_outputs, record_written
from masktk.predict.backends import load_torch_models
from masktk.predict.person_pooling import SCENE_DISTANCE, NoPooling, ScenePooling
from masktk.predict.pipeline import eval_crop_recipe, find_groups, run_answer, run_groups, run_tta
from masktk.predict.submission import checkpoint_name, common_answer, ensemble_offsets, load_eval_images, vote
from masktk.runs import add_run_flags, chosen_run, resolve_run_path
from masktk.train.decisions import read_offsets
from masktk.tta import TTA_VIEWS

DEMO_EVAL = "demo_data/eval"


def build_parser():
    ap = make_parser(__doc__)
    ap.add_argument("--eval_dir", "--data_dir", dest="eval_dir", default=env_default("SM_CHANNEL_EVAL", DEMO_EVAL),
                    help="eval dir with info.csv and images/ (env SM_CHANNEL_EVAL)")
    add_run_flags(ap)
    ap.add_argument("--output_dir", default=env_default("SM_OUTPUT_DATA_DIR", "output"),
                    help="where the submission goes (env SM_OUTPUT_DATA_DIR)")
    ap.add_argument("--output_name", default="output", help="file names: <output_name>.csv, <output_name>_probs.npy")
    ap.add_argument("--pth_name", type=checkpoint_name, default="best.pth",
                    help="checkpoint file in each run/fold/task folder (a prefix such as 'best' also works)")
    add_bool(ap, "--cv", None, "average the fold*/ checkpoints (unset: detected from the run folder)")
    ap.add_argument("--multi", "--multi_label", type=str2bool, nargs="?", const=True, default=None,
                    help="combine mask/, gender/, age/ models (unset: detected)")
    add_bool(ap, "--ensemble", False, "combine several runs (--ensemble_runs)")
    ap.add_argument("--ensemble_runs", "--ensemble_model_dir", dest="ensemble_runs", nargs="*", default=[],
                    metavar="RUN", help="run folders to ensemble")
    for flag in ("--ensemble_model_name", "--model_name", "--resize"):  # checkpoints describe themselves
        ap.add_argument(flag, nargs="*", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    ap.add_argument("--weights", type=positive(float, 0, inclusive=True), nargs="*", default=None,
                    help="per-run weights for the ensemble (unset: equal)")
    ap.add_argument("--vote", choices=("soft", "hard"), default="soft",
                    help="soft: average probabilities; hard: majority of the runs' labels")
    ap.add_argument("--tta", choices=sorted(TTA_VIEWS), default=None,
                    help="views averaged per image (flip: the photo and its mirror image; zoom: and its central 90%%); "
                    "unset: each run's own, the views train.py validated it with")
    ap.add_argument("--decision", choices=("fitted", "none"), default="fitted",
                    help="fitted: add the run's macro-F1 offsets (decision.json) before the argmax; none: plain argmax")
    ap.add_argument("--source", choices=("auto", "images", "faces"), default="auto",
                    help="auto: eval faces/ for models trained on faces when present, else crop on the fly")
    ap.add_argument("--detector", type=detector_arg, metavar="NAME_OR_FILE", default=None,
                    help="face detector when the eval dir has no faces/ (unset: the one the training crops were cut "
                    "with, recorded in the checkpoints; mtcnn for checkpoints without the record)")
    ap.add_argument("--cache_dir", default=None, help="decoded eval images, shared by later runs "
                    "(unset: <output_dir>/.cache)")
    ap.add_argument("--batch_size", type=positive(int, 1, inclusive=True), default=None,
                    help="unset: 32 on CPU, 256 on CUDA")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to predict")
    add_bool(ap, "--amp", True, "bf16 (fp16 on older GPUs) autocast on CUDA; False: fp32. No-op on CPU")
    add_bool(ap, "--group_people", False, "photos that share a background and clothes (the competition's) are "
             "grouped as one person's: each keeps its mask state, gender and age are decided over the group")
    ap.add_argument("--group_distance", type=positive(float), default=SCENE_DISTANCE,
                    help="how alike two photos' surroundings must be to group them (mean Lab difference, 0-255)")
    add_bool(ap, "--gpu_decode", False, "on CUDA, decode JPEGs on the GPU (nvImageCodec where installed, else "
             "nvJPEG); no-op on CPU")
    return ap


@cli
def main(argv):
    load_dotenv_once()
    args = build_parser().parse_args(argv)
    demo_note(args.eval_dir, DEMO_EVAL, "SM_CHANNEL_EVAL", ("--eval_dir", "--data_dir"), argv)
    device = distributed.setup(args.device).device
    batch_size = args.batch_size or (256 if device.type == "cuda" else 32)
    out = writable_dir(args.output_dir, "--output_dir (SM_OUTPUT_DATA_DIR)")
    if args.cache_dir:
        writable_dir(args.cache_dir, "--cache_dir")
    if args.ensemble:
        if len(args.ensemble_runs) < 1:
            raise UserError("--ensemble True needs --ensemble_runs RUN [RUN ...]")
        runs = [resolve_run_path(r) for r in args.ensemble_runs]
        seen = [r.resolve() for r in runs]
        twice = next((r for i, r in enumerate(runs) if seen[i] in seen[:i]), None)
        if twice is not None:  # it would silently count double in the vote
            raise UserError(f"{twice}: named twice in --ensemble_runs; give each run once (--weights weighs runs)")
    else:
        runs = [chosen_run(args.model_dir, args.run_dir)]
    weights = args.weights or [1.0] * len(runs)
    if len(weights) != len(runs) or sum(weights) <= 0:
        raise UserError(f"--weights needs {len(runs)} values, not all 0 (got {len(weights)})")
    info, photos = read_eval(args.eval_dir)
    names = [f"{args.output_name}.csv", f"{args.output_name}_probs.npy"]
    check_outputs(out, names, "--output_dir or --output_name", inputs=[Path(args.eval_dir) / "info.csv"])
    run_groups_ = [find_groups(r, args.pth_name, args.cv, args.multi) for r in runs]
    models = load_torch_models([g for gs in run_groups_ for g in gs], device)
    metas = [meta for _, meta in models.values()]
    arrays = load_eval_images(args.eval_dir, metas, args.source, args.cache_dir or Path(args.output_dir) / ".cache",
                              device if args.gpu_decode else "cpu", eval_crop_recipe(metas, args.detector))
    ttas = [args.tta or run_tta(gs, models) for gs in run_groups_]
    answers = [run_answer(gs, models) for gs in run_groups_]
    # pooling shares a person's gender and age across their photos: nothing to share for a mask-only answer
    pool = ScenePooling(photos, args.group_distance) if args.group_people and MASK_ONLY not in answers else NoPooling()
    run_probs = [pool(run_groups(gs, arrays, models, tta=tta, batch_size=batch_size, device=device, amp=args.amp))
                 for gs, tta in zip(run_groups_, ttas)]
    run_offsets = [read_offsets(r) if args.decision == "fitted" else None for r in runs]
    answer, run_probs, run_offsets = common_answer(answers, run_probs, run_offsets)
    offsets, how = (ensemble_offsets(runs, weights, run_offsets, answer) if args.decision == "fitted"
                    else (None, "argmax"))
    probs, ans = vote(run_probs, weights, args.vote, offsets, run_offsets)
    # a mask-only run answers the mask state: its submission says so (column mask), never an invented 18-class ans
    sub = pd.DataFrame({"ImageID": info["ImageID"], "ans" if answer == FULL else "mask": ans.astype(int)})
    record_written(out, names, "inference.py")
    with atomic_path(out / f"{args.output_name}_probs.npy") as tmp:
        np.save(tmp, probs.astype(np.float32))
    write_csv_atomic(sub, out / f"{args.output_name}.csv")
    n_models = sum(len(g) for gs in run_groups_ for g in gs)
    views = ",".join(dict.fromkeys(ttas))
    print(f"{len(sub)} images, {n_models} checkpoint(s) from {len(runs)} run(s), tta={views}, vote={args.vote}, "
          f"decision {how if args.vote == 'soft' else 'per run'}, people grouped: {pool.describe()} -> "
          f"{out / (args.output_name + '.csv')}", file=sys.stderr)


if __name__ == "__main__":
    main()
