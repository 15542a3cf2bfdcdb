"""Turn trained runs into a submission: single run, CV folds, ensembles, multi-task, with TTA.

    python inference.py                                    # the newest run in model/, demo_data/eval
    SM_CHANNEL_EVAL=/data/eval SM_CHANNEL_MODEL=model/exp SM_OUTPUT_DATA_DIR=output python inference.py
    python inference.py --run_dir model/exp2 --tta flip    # a CV run: its k folds averaged
    python inference.py --ensemble=True --ensemble_runs model/exp model/exp2 --weights 1 2

Writes <output_dir>/<output_name>.csv (ImageID, ans in info.csv's order) and
<output_dir>/<output_name>_probs.npy (N x 18 float32 probabilities, same order) for later ensembling.
Checkpoints describe themselves (architecture, input size, normalisation, crop), so no model flags.
Each eval image is decoded once, whatever the number of models and TTA views.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import distributed
from cache import cached_images, decode_many
from dataset import has_faces, read_eval
from decision import decide, fit_decision, read_offsets
from faces import DETECTORS, CropRecipe, best_boxes, read_crop_recipe
from images import why_unreadable
from model import TTA_VIEWS
from onnx_backend import load_torch_models
from outputs import check_outputs, record_written
from people import SCENE_DISTANCE, NoPooling, ScenePooling
from prediction import eval_crop_recipe, find_groups, run_groups, run_tta, trained_crop_recipe
from runs import add_run_flags, chosen_run, resolve_run_path
from utils import (UserError, add_bool, atomic_path, cli, demo_note, env_default, load_dotenv_once, make_parser,
                   positive, str2bool, writable_dir, write_csv_atomic)

DEMO_EVAL = "demo_data/eval"


def check_eval_crops(eval_dir, trained):
    """Eval crops cut otherwise than the training crops would be scored silently worse: refuse them."""
    cut = read_crop_recipe(Path(eval_dir) / "faces")
    if cut is not None and trained is not None and cut != trained:
        raise UserError(f"{Path(eval_dir) / 'faces'} was cut with {cut.describe()}, the models' training crops with "
                        f"{trained.describe()}: delete it and run face_image.py on the eval dir with the training "
                        "crops' settings, or pass --source images to cut the eval photos on the fly as they were")


def load_eval_images(eval_dir, metas, source, cache_dir, decode_on="cpu", recipe=CropRecipe()):
    """Every eval image decoded once into each (size, crop) the models need -> {key: uint8 images (an
    ImageCache or an array)}.
    File crops go through the shared decode-once cache (later runs on the same eval set skip decoding;
    decode_on 'cuda' decodes JPEGs on the GPU); models trained on faces/ without an eval faces/ get
    their faces found and cut on the fly by recipe (the training crops': trained_crop_recipe)."""
    eval_dir = Path(eval_dir)
    faces_there = has_faces(eval_dir) and source != "images"
    if source == "faces" and not faces_there:
        raise UserError(f"{eval_dir / 'faces'} not found: run python face_image.py on the eval dir, or use --source auto")
    if faces_there:
        check_eval_crops(eval_dir, trained_crop_recipe(metas))
    keys = {m.input_key for m in metas}
    face_keys = {k for k in keys if k[1] == "none"}
    arrays, checks = {}, []
    if face_keys and faces_there:
        _, paths = read_eval(eval_dir, "faces")
        caches = cached_images(paths, face_keys, cache_dir, desc="decoding faces", device=decode_on)
        arrays.update(caches)
        checks += [(paths, c.ok) for c in caches.values()]
    raw_keys = keys - (face_keys if faces_there else set())
    if raw_keys:
        _, paths = read_eval(eval_dir, "images")
        center = {k for k in raw_keys if k[1] == "center"}
        caches = cached_images(paths, center, cache_dir, desc="decoding images", device=decode_on)
        arrays.update(caches)
        checks += [(paths, c.ok) for c in caches.values()]
        on_the_fly = {(s, "face") for s, c in raw_keys if c == "none"}
        if on_the_fly:
            a, ok = decode_many(paths, on_the_fly, desc="detecting faces", face_fn=_face_fn(recipe))
            arrays.update({(s, "none"): v for (s, _), v in a.items()})
            checks.append((paths, ok))
    for paths, ok in checks:
        if not ok.all():
            bad = paths[int(np.flatnonzero(~ok)[0])]
            raise UserError(f"{bad}: eval image {why_unreadable(bad)} ({int((~ok).sum())} such); a submission must "
                            "cover every ImageID: replace the file")
    return arrays


def _face_fn(recipe=CropRecipe()):
    det = recipe.create_detector()

    def fn(imgs):
        found = best_boxes(det, imgs)
        return [recipe.cut(im, box, ok, marks) for im, (box, _, ok, marks) in zip(imgs, found)]
    return fn


def vote(run_probs, weights, how, offsets=None, run_offsets=None):
    """-> (soft-vote probabilities, labels). Soft: the weighted mean, decided with `offsets` (the
    ensemble's, or the single run's); hard: each run decides with its own offsets, then votes."""
    w = np.asarray(weights, float) / np.sum(weights)
    soft = sum(wi * p for wi, p in zip(w, run_probs))
    if how == "soft":
        return soft, decide(soft, offsets)
    run_offsets = run_offsets or [None] * len(run_probs)
    votes = sum(wi * np.eye(18)[decide(p, off)] for wi, p, off in zip(w, run_probs, run_offsets))
    return soft, (votes + 1e-6 * soft).argmax(1)  # ties broken by the soft vote


def ensemble_offsets(runs, weights, run_offsets):
    """Macro-F1 offsets for a soft vote: a single run's own (run_offsets: each run's decision.json), or,
    for an ensemble, fitted here on the members' combined out-of-fold predictions, which exist when every
    member is a CV run over the same people. -> (offsets or None, a few words saying which)."""
    if len(runs) == 1:
        off = run_offsets[0]
        return off, "fitted (the run's decision.json)" if off is not None and off.any() else "argmax"
    oofs = [Path(r) / "oof.csv" for r in runs]
    if not all(p.is_file() for p in oofs):
        return None, "argmax (offsets need every member to be a CV run with oof.csv)"
    frames = [pd.read_csv(p).set_index("path").sort_index() for p in oofs]
    if any(not f.index.equals(frames[0].index) for f in frames):
        return None, "argmax (the members' out-of-fold predictions cover different images)"
    cols = [f"p{k}" for k in range(18)]
    w = np.asarray(weights, float) / np.sum(weights)
    soft = sum(wi * f[cols].to_numpy() for wi, f in zip(w, frames))
    record, _ = fit_decision(soft, frames[0]["label"].to_numpy(), frames[0]["people_path"].to_numpy(),
                             "the ensemble's combined out-of-fold predictions")
    if not record["used"]:
        return None, "argmax (fitted offsets did not beat it on held-out people)"
    return np.asarray(record["offsets"]), (f"fitted on the members' combined OOF (macro F1 {record['f1_argmax']:.3f} "
                                           f"-> {record['f1_cross_fitted']:.3f} cross-fitted)")


def checkpoint_name(name):
    """--pth_name best.pth, or the original's prefix form (best -> best.pth)."""
    return name if name.endswith(".pth") else f"{name}.pth"


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
    ap.add_argument("--detector", choices=sorted(DETECTORS), default=None,
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
    pool = ScenePooling(photos, args.group_distance) if args.group_people else NoPooling()
    run_probs = [pool(run_groups(gs, arrays, models, tta=tta, batch_size=batch_size, device=device, amp=args.amp))
                 for gs, tta in zip(run_groups_, ttas)]
    run_offsets = [read_offsets(r) if args.decision == "fitted" else None for r in runs]
    offsets, how = ensemble_offsets(runs, weights, run_offsets) if args.decision == "fitted" else (None, "argmax")
    probs, ans = vote(run_probs, weights, args.vote, offsets, run_offsets)
    sub = pd.DataFrame({"ImageID": info["ImageID"], "ans": ans.astype(int)})
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
