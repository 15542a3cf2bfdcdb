"""Decisions fitted for macro F1: per-class offsets added to the log-probabilities before the argmax.

Argmax picks the most probable class, which is what accuracy wants; macro F1 weighs every class
alike, so the rare ones (age >= 60, incorrect mask) are worth more than argmax gives them. The offsets
are fitted on out-of-fold predictions (a CV run's oof.csv: every person, each predicted by a model
that never saw them) or on a holdout run's validation predictions, never on eval data.

Fitting 18 free offsets to one set of predictions overfits it (a quick check raised a validation
split's macro F1 from 0.56 to 0.65 and left eval unchanged), so the fit is regularised: 8 offsets (one
per mask state, gender and age band, summed per class), a coarse grid, few passes of coordinate
ascent, a penalty on the size of each offset, and the gain reported is
**cross-fitted**: each person's predictions scored with offsets fitted on the other people only.
A run keeps its offsets only when that cross-fitted gain is positive.

Used by train.py (written as <run>/decision.json) and inference.py (`--decision fitted|none`); not a script.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from masktk.errors import UserError
from masktk.files import write_json_atomic
from masktk.labels import decode

DECISION_FILE = "decision.json"


GRID = np.round(np.arange(-1.0, 2.51, 0.25), 2)  # log-probability offsets tried per class


PENALTY = 0.004  # macro F1 given up per unit of |offset|: only offsets that pay for themselves move


def macro_f1(y, pred, k=18):
    """Macro F1 over all k classes (sklearn's, zero_division=0), in numpy: the fit calls it thousands of times."""
    tp = np.bincount(y[y == pred], minlength=k)
    denom = np.bincount(y, minlength=k) + np.bincount(pred, minlength=k)
    return float(np.mean(np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)))


def decide(probs, offsets=None):
    """(N, 18) probabilities (N, 3 of a mask-only run) -> (N,) labels: argmax of log p + offsets (plain argmax
    without offsets)."""
    probs = np.asarray(probs, dtype=np.float64)
    if offsets is None:
        return probs.argmax(1)
    if len(offsets) != probs.shape[1]:
        raise UserError(f"decision.json holds {len(offsets)} offsets for models answering {probs.shape[1]} classes: "
                        "it belongs to another run; delete it or pass --decision none")
    return (np.log(np.clip(probs, 1e-12, None)) + np.asarray(offsets)).argmax(1)


def task_design(classes=18):
    """(8, 18): class c's offset is the sum of one offset for its mask state, one for its gender and
    one for its age band: 8 parameters instead of 18 overfit held-out people less (docs/results.md). A
    mask-only run's 3 states: one offset each."""
    if classes != 18:
        return np.eye(classes)
    m, g, a = decode(np.arange(18))
    design = np.zeros((8, 18))
    design[m, np.arange(18)] = 1
    design[3 + g, np.arange(18)] = 1
    design[5 + a, np.arange(18)] = 1
    return design


def fit_offsets(probs, labels, grid=GRID, passes=2, penalty=PENALTY):
    """Coordinate ascent over the 8 task offsets (task_design): each in turn takes the grid value that
    maximises macro F1 minus penalty * sum |offset|. -> (18,) class offsets (zeros when nothing pays)."""
    logp = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, None))
    labels, k = np.asarray(labels), logp.shape[1]
    design = task_design(k)
    theta = np.zeros(len(design))

    def objective(t):
        return macro_f1(labels, (logp + t @ design).argmax(1), k) - penalty * np.abs(t).sum()

    best = objective(theta)
    for _ in range(passes):
        moved = False
        for c in range(len(theta)):
            for v in grid:
                if v == theta[c]:
                    continue
                trial = theta.copy()
                trial[c] = v
                f = objective(trial)
                if f > best + 1e-9:
                    best, theta, moved = f, trial, True
        if not moved:
            break
    return theta @ design


def cross_fitted(probs, labels, groups, k=5, seed=0, **fit_kw):
    """Predictions where each group's (person's) offsets were fitted on the other groups only: the
    honest estimate of what fitted offsets do for people they were not fitted on."""
    groups = np.asarray(groups)
    people = np.unique(groups)
    fold_of = dict(zip(people, np.random.default_rng(seed).permutation(len(people)) % k))
    fold = np.array([fold_of[g] for g in groups])
    pred = np.empty(len(labels), dtype=int)
    for f in range(k):
        held = fold == f
        off = fit_offsets(probs[~held], np.asarray(labels)[~held], **fit_kw)
        pred[held] = decide(probs[held], off)
    return pred


def fit_decision(probs, labels, groups, source):
    """-> (the run's decision record, held-out predictions). The offsets are fitted on all given
    predictions and kept only when the cross-fitted macro F1 beats plain argmax (else zeros:
    argmax); the held-out predictions are what people outside the fit get: cross-fitted ones when
    kept, else argmax."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    k = probs.shape[1]
    plain_pred, held_pred = decide(probs), cross_fitted(probs, labels, groups)
    plain, held = macro_f1(labels, plain_pred, k), macro_f1(labels, held_pred, k)
    used = held > plain
    offsets = fit_offsets(probs, labels) if used else np.zeros(probs.shape[1])
    record = {"offsets": [float(v) for v in offsets], "fitted_on": source, "n": int(len(labels)),
              "people": int(len(np.unique(groups))), "f1_argmax": plain, "f1_cross_fitted": held,
              "f1_fitted_in_sample": macro_f1(labels, decide(probs, offsets), k), "used": bool(used)}
    return record, held_pred if used else plain_pred


def write_decision(run_dir, record):
    write_json_atomic(Path(run_dir) / DECISION_FILE, record)


def read_offsets(run_dir):
    """The run's fitted offsets, or None when it has none (trained before they existed, not fitted, or fitted
    and not kept: "used" false). The file is checked as fit_decision writes it: 18 finite numbers (3 for a mask-only
    run), a boolean."""
    path = Path(run_dir) / DECISION_FILE
    if not path.is_file():
        return None
    fix = "delete it (or train again) or pass --decision none"
    try:
        record = json.loads(path.read_text())
        off = np.asarray(record["offsets"], dtype=np.float64)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a decision file written by train.py ({type(e).__name__}); {fix}")
    if off.shape not in ((18,), (3,)):
        raise UserError(f"{path}: offsets holds {off.size} values, 18 (or 3 for a mask-only run) expected; {fix}")
    if not np.isfinite(off).all():
        raise UserError(f"{path}: offsets holds nan or inf (offset {int(np.flatnonzero(~np.isfinite(off))[0])}); {fix}")
    used = record.get("used", True)  # files from before the field: their offsets were kept
    if not isinstance(used, bool):
        raise UserError(f"{path}: used is {used!r}, true or false expected; {fix}")
    return off if used else None
