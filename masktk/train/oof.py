"""Out-of-fold predictions: merge a CV run's folds, score them (also apart by whether a face was detected)
and fit the run's decision offsets on people the models did not train on.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from masktk.distributed import log_main
from masktk.errors import UserError
from masktk.files import write_csv_atomic, write_json_atomic
from masktk.labels import FULL, MASK_ONLY, MULTI_TASKS, TASKS, answer_of, prob_columns
from masktk.metrics.classification import score
from masktk.probs import combine_probs
from masktk.train.decisions import DECISION_FILE, fit_decision, write_decision
from masktk.train.settings import read_run_config


# --- cross-validation merge ----------------------------------------------------------------------
def merge_cv(run_dir, k=None, quiet_missing=False):
    """Join the folds' out-of-fold predictions into oof.csv (path, label, p0..p17) and cv.json."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{cfg_path} not found: --merge takes a CV run folder written by train.py --cv True")
    cfg = read_run_config(run_dir)
    k = k or cfg.k_folds
    subs = [t for t in MULTI_TASKS] if cfg.multi else [""]
    missing = [f"fold{i}" for i in range(k) if not all((run_dir / f"fold{i}" / s / "metrics.json").is_file()
                                                         for s in subs)]
    if missing:
        if quiet_missing:
            log_main(f"folds still missing: {', '.join(missing)}; merge later with python train.py --merge {run_dir}")
            return None
        raise UserError(f"{run_dir}: folds {', '.join(missing)} have not finished; run them with --fold i "
                        f"--run_dir {run_dir}")
    oof = pd.concat([unit_preds(run_dir / f"fold{i}", subs).assign(fold=i) for i in range(k)], ignore_index=True)
    if oof["path"].duplicated().any():
        raise UserError(f"{run_dir}: an image appears in more than one fold's validation set")
    answer = answer_of_preds(oof)
    m = score(oof["label"].to_numpy(), oof[prob_columns(answer.name)].to_numpy().argmax(1), answer)
    write_csv_atomic(oof, run_dir / "oof.csv", float_format="%.6f")
    log_main(f"CV ({k} folds, {len(oof)} out-of-fold images): macro F1 {m['f1']:.4f} accuracy {m['accuracy']:.4f} "
             f"({per_task(m)}) -> {run_dir / 'oof.csv'}")
    decided = fit_run_decision(run_dir, oof, "out-of-fold predictions of every person (oof.csv)")
    by_detection = score_by_detection(Path(cfg.train_dir), oof)
    write_json_atomic(run_dir / "cv.json", {**m, "n": len(oof), "folds": k, "decided_cross_fitted": decided,
                                            **({"by_detection": by_detection} if by_detection else {})})
    return m


def score_by_detection(data_dir, oof):
    """A run trained on face crops (faces/): out-of-fold macro F1 apart for photos where face_image.py found
    a face and photos that fell back to the centre region (faces/boxes.csv), so a detector's misses have a
    price. None for a run on whole photos."""
    boxes_csv = data_dir / "faces" / "boxes.csv"
    if not oof["path"].str.startswith("faces/").all() or not boxes_csv.is_file():
        return None
    found = oof["path"].map(pd.read_csv(boxes_csv).set_index("path")["detected"].rename(lambda p: f"faces/{p}"))
    out = {}
    for name, rows in (("found", oof[found == 1]), ("fallback", oof[found == 0])):
        if len(rows):
            r = score(rows["label"].to_numpy(), rows[prob_columns("label")].to_numpy().argmax(1))
            out[name] = {"n": len(rows), **{key: r[key] for key in ("f1", "accuracy", "f1_mask", "f1_gender", "f1_age")}}
    log_main("by detection: " + "; ".join(f"{n} {v['n']} photos macro F1 {v['f1']:.4f} (mask {v['f1_mask']:.3f} "
                                          f"gender {v['f1_gender']:.3f} age {v['f1_age']:.3f})" for n, v in out.items()))
    return out


def unit_preds(folder, subs):
    """The 18-class validation predictions of one split (folder: the run, or a fold): path,
    people_path, label, p0..p17 (mask0..mask2 for a mask-only run), from its valid_preds.csv (one per task folder
    for --multi)."""
    frames = [pd.read_csv(folder / s / "valid_preds.csv") for s in subs]
    probs = {t: torch.tensor(f[prob_columns(t)].to_numpy()) for f in frames for t in TASKS
             if set(prob_columns(t)) <= set(f.columns)}
    p = combine_probs(probs).numpy()
    return pd.concat([frames[0][["path", "people_path", "label"]],
                      pd.DataFrame(p, columns=prob_columns(answer_of(p.shape[1]).name))], axis=1)


def answer_of_preds(preds):
    """What the predictions of unit_preds answer: the 18 classes (p0..p17) or the mask state (mask0..mask2)."""
    return FULL if set(prob_columns("label")) <= set(preds.columns) else MASK_ONLY


def per_task(m):
    """'mask 0.912 gender 0.95 age 0.71' from a score(): the tasks it holds."""
    return " ".join(f"{t} {m[f'f1_{t}']:.3f}" for t in MULTI_TASKS if f"f1_{t}" in m)


def fit_run_decision(run_dir, preds, source):
    """Fit the run's macro-F1 offsets (masktk/train/decisions.py) on predictions of people the model did not train on;
    -> the cross-fitted metrics (each person decided by offsets fitted without them)."""
    answer = answer_of_preds(preds)
    probs, labels = preds[prob_columns(answer.name)].to_numpy(), preds["label"].to_numpy()
    record, held_pred = fit_decision(probs, answer.of_labels(labels), preds["people_path"].to_numpy(), source)
    write_decision(run_dir, record)
    held = score(labels, held_pred, answer)
    log_main(f"decision offsets ({'kept' if record['used'] else 'not kept: argmax'}): macro F1 {held['f1']:.4f} on "
             f"people they were not fitted on (argmax {record['f1_argmax']:.4f}; {per_task(held)}) -> "
             f"{Path(run_dir) / DECISION_FILE}")
    return held
