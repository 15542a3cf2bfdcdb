"""Scoring a submission against the ground truth: macro F1 over the 18 classes, accuracy, per task, the
confusion matrix. numpy, pandas and sklearn only (no torch, no OpenCV).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, precision_recall_fscore_support

from masktk.errors import UserError
from masktk.files import check_ids
from masktk.labels import class_names, decode

CLASSES = list(range(18))


def macro_f1(y_true, y_pred, labels=CLASSES):
    return float(f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0))


def score(y_true, y_pred):
    """Pure: 18-class labels in, metrics dict out (macro F1 over all 18 classes, as scored)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    out = {"f1": macro_f1(y_true, y_pred), "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0}
    for name, t, p, n in zip(("mask", "gender", "age"), decode(y_true), decode(y_pred), (3, 2, 3)):
        out[f"f1_{name}"] = macro_f1(t, p, list(range(n)))
    return out


def per_class(y_true, y_pred):
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=CLASSES, zero_division=0)
    return [dict(cls=c, name=n, precision=float(a), recall=float(b), f1=float(x), support=int(y))
            for c, n, a, b, x, y in zip(CLASSES, class_names(), p, r, f, s)]


def confusion_figure(y_true, y_pred, title=""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay
    fig, ax = plt.subplots(figsize=(9, 8))
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=CLASSES, display_labels=class_names(), ax=ax,
                                            cmap="Blues", colorbar=False, xticks_rotation=90,
                                            text_kw={"fontsize": 6})
    ax.tick_params(labelsize=6)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def read_answers(path, what):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found ({what})")
    try:
        df = pd.read_csv(path, dtype={"ImageID": str})
    except Exception as e:
        raise UserError(f"{path}: cannot be read as CSV ({e})")
    for c in ("ImageID", "ans"):
        if c not in df.columns:
            raise UserError(f"{path}: missing column {c!r}; expected ImageID,ans")
    ans = pd.to_numeric(df["ans"], errors="coerce")
    bad = ans.isna() | (ans != ans.round()) | (ans < 0) | (ans > 17)
    if bad.any():
        raise UserError(f"{path}: ans must be an integer in 0-17; row {int(bad.idxmax()) + 2} has "
                        f"'{df['ans'][bad].iloc[0]}'")
    check_ids(df["ImageID"], path)
    return df.assign(ans=ans.astype(int))


def evaluate_files(gt_path, sub_path):
    gt, sub = read_answers(gt_path, "ground truth"), read_answers(sub_path, "submission")
    missing, extra = set(gt["ImageID"]) - set(sub["ImageID"]), set(sub["ImageID"]) - set(gt["ImageID"])
    if missing or extra:
        raise UserError(f"{sub_path}: {len(missing)} ImageIDs missing and {len(extra)} extra compared with "
                        f"{gt_path} (e.g. {sorted(missing or extra)[0]!r}); the submission must cover exactly "
                        "the ground truth's images")
    merged = gt.merge(sub, on="ImageID", suffixes=("_true", "_pred"))
    return merged["ans_true"].to_numpy(), merged["ans_pred"].to_numpy()
