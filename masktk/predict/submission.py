"""A submission from trained runs: the eval photos decoded or cut to faces as the models were trained, the
runs' probabilities combined (soft or hard vote) and decided with fitted offsets.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from masktk.data.cache import cached_images, decode_many
from masktk.data.table import has_faces, read_eval
from masktk.errors import UserError
from masktk.faces.crop import CropRecipe, best_boxes, read_crop_recipe
from masktk.images import why_unreadable
from masktk.labels import FULL, MASK_ONLY, prob_columns
from masktk.predict.pipeline import trained_crop_recipe
from masktk.train.decisions import decide, fit_decision


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
    votes = sum(wi * np.eye(soft.shape[1])[decide(p, off)] for wi, p, off in zip(w, run_probs, run_offsets))
    return soft, (votes + 1e-6 * soft).argmax(1)  # ties broken by the soft vote


def common_answer(answers, run_probs, run_offsets):
    """Runs that answer different tasks vote on what they all answer: with a mask-only run among them, the others'
    18 classes are folded into their mask states (and their 18-class offsets left out). -> (the Answer, the runs'
    probabilities, their offsets)."""
    common = MASK_ONLY if MASK_ONLY in answers else FULL
    if common == FULL or all(a == common for a in answers):
        return common, run_probs, run_offsets
    print("the runs answer different tasks: voting on the mask state alone (the 18-class runs' mask states)",
          file=sys.stderr)
    return (common, [common.of_probs(p) if a != common else p for a, p in zip(answers, run_probs)],
            [off if a == common else None for a, off in zip(answers, run_offsets)])


def ensemble_offsets(runs, weights, run_offsets, answer=FULL):
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
    cols = prob_columns(answer.name)
    if any(not set(cols) <= set(f.columns) for f in frames):
        return None, "argmax (the members' out-of-fold predictions answer different tasks)"
    w = np.asarray(weights, float) / np.sum(weights)
    soft = sum(wi * f[cols].to_numpy() for wi, f in zip(w, frames))
    record, _ = fit_decision(soft, answer.of_labels(frames[0]["label"].to_numpy()),
                             frames[0]["people_path"].to_numpy(), "the ensemble's combined out-of-fold predictions")
    if not record["used"]:
        return None, "argmax (fitted offsets did not beat it on held-out people)"
    return np.asarray(record["offsets"]), (f"fitted on the members' combined OOF (macro F1 {record['f1_argmax']:.3f} "
                                           f"-> {record['f1_cross_fitted']:.3f} cross-fitted)")


def checkpoint_name(name):
    """--pth_name best.pth, or the original's prefix form (best -> best.pth)."""
    return name if name.endswith(".pth") else f"{name}.pth"
