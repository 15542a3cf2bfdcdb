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
from masktk.labels import FULL, MASK_ONLY, class_names, decode

CLASSES = list(range(18))


def macro_f1(y_true, y_pred, labels=CLASSES):
    return float(f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0))


def score(y_true, y_pred, answer=FULL):
    """Pure: 18-class labels and predictions in, metrics dict out (macro F1 over all 18 classes, as scored). A
    mask-only answer's predictions are mask states, scored by the mask state's macro F1 alone."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if answer != FULL:
        y = answer.of_labels(y_true)
        f1 = macro_f1(y, y_pred, list(range(answer.classes)))
        return {"f1": f1, "accuracy": float((y == y_pred).mean()) if len(y) else 0.0, "f1_mask": f1}
    out = {"f1": macro_f1(y_true, y_pred), "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0}
    for name, t, p, n in zip(("mask", "gender", "age"), decode(y_true), decode(y_pred), (3, 2, 3)):
        out[f"f1_{name}"] = macro_f1(t, p, list(range(n)))
    return out


def per_class(y_true, y_pred, names=None):
    """Precision, recall, F1 and support per class; names: the classes' (unset: the 18 classes)."""
    names = names or class_names()
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(range(len(names))), zero_division=0)
    return [dict(cls=c, name=n, precision=float(a), recall=float(b), f1=float(x), support=int(y))
            for c, (n, a, b, x, y) in enumerate(zip(names, p, r, f, s))]


def confusion_figure(y_true, y_pred, title="", names=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay
    fig, ax = plt.subplots(figsize=(9, 8))
    names = names or class_names()
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=list(range(len(names))), display_labels=names, ax=ax,
                                            cmap="Blues", colorbar=False, xticks_rotation=90,
                                            text_kw={"fontsize": 6})
    ax.tick_params(labelsize=6)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def read_answers(path, what, column="ans"):
    """ImageID and `column` (ans: the 18-class label, mask: a mask-only run's mask state), checked."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found ({what})")
    try:
        df = pd.read_csv(path, dtype={"ImageID": str})
    except Exception as e:
        raise UserError(f"{path}: cannot be read as CSV ({e})")
    for c in ("ImageID", column):
        if c not in df.columns:
            raise UserError(f"{path}: missing column {c!r}; expected ImageID,ans (or ImageID,mask from a mask-only "
                            "run)")
    top = 17 if column == "ans" else 2
    ans = pd.to_numeric(df[column], errors="coerce")
    bad = ans.isna() | (ans != ans.round()) | (ans < 0) | (ans > top)
    if bad.any():
        raise UserError(f"{path}: {column} must be an integer in 0-{top}; row {int(bad.idxmax()) + 2} has "
                        f"'{df[column][bad].iloc[0]}'")
    check_ids(df["ImageID"], path)
    return df[["ImageID"]].assign(ans=ans.astype(int))


def submission_answer(sub_path):
    """FULL for a submission of 18-class labels (ImageID, ans), MASK_ONLY for a mask-only run's (ImageID, mask)."""
    try:
        columns = pd.read_csv(sub_path, nrows=0).columns
    except Exception:  # read_answers says what is wrong with it
        return FULL
    return MASK_ONLY if "mask" in columns and "ans" not in columns else FULL


def evaluate_files(gt_path, sub_path):
    """-> (18-class truth, predictions, the submission's Answer): a mask-only submission's predictions are mask
    states."""
    answer = submission_answer(sub_path) if Path(sub_path).is_file() else FULL
    gt = read_answers(gt_path, "ground truth")
    sub = read_answers(sub_path, "submission", "ans" if answer == FULL else "mask")
    missing, extra = set(gt["ImageID"]) - set(sub["ImageID"]), set(sub["ImageID"]) - set(gt["ImageID"])
    if missing or extra:
        raise UserError(f"{sub_path}: {len(missing)} ImageIDs missing and {len(extra)} extra compared with "
                        f"{gt_path} (e.g. {sorted(missing or extra)[0]!r}); the submission must cover exactly "
                        "the ground truth's images")
    merged = gt.merge(sub, on="ImageID", suffixes=("_true", "_pred"))
    return merged["ans_true"].to_numpy(), merged["ans_pred"].to_numpy(), answer
