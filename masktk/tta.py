"""Test-time augmentation: the named views (flip, zoom, ...) and their averaged prediction.
"""
from __future__ import annotations

import torch

from masktk.probs import task_probs

# Test-time views of a normalised batch, averaged in probability: inference.py, predict.py and
# train.py's validation (so out-of-fold predictions and fitted decisions see what a submission sees).
TTA_VIEWS = {
    "none": ("id",),
    "flip": ("id", "flip"),
    "zoom": ("id", "zoom"),
    "flip_zoom": ("id", "flip", "zoom", "flip_zoom"),
}


# the views train.py validates with, and prediction's for checkpoints that record none: the best measured
# on real faces (docs/results.md)
DEFAULT_TTA = "flip_zoom"


def view(x, name):
    """A TTA view of a normalised batch."""
    if "zoom" in name:  # central 90%, back to full size
        h, w = x.shape[-2:]
        dh, dw = round(h * 0.05), round(w * 0.05)
        x = torch.nn.functional.interpolate(x[..., dh:h - dh, dw:w - dw], size=(h, w), mode="bilinear",
                                            align_corners=False)
    if "flip" in name:
        x = x.flip(-1)
    return x


def view_average(model, x, views, tasks):
    """-> ({task: probabilities averaged over the views}, the first view's logits)."""
    first, acc = None, None
    for v in views:
        logits = model(view(x, v)).float()
        p = task_probs(logits, tasks)
        first = logits if first is None else first
        acc = p if acc is None else {t: acc[t] + p[t] for t in p}
    return {t: p / len(views) for t, p in acc.items()}, first
