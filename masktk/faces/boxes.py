"""Box arithmetic shared by the detectors and the scoring: IoU of two box sets, one-to-one matching.
"""
from __future__ import annotations

import numpy as np


def box_iou(a, b):
    """(N, 4) x (M, 4) boxes (x1, y1, x2, y2) -> (N, M) intersection over union."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def match_boxes(gt, pred, min_iou=0.5):
    """Greedy one-to-one matching, highest IoU first: -> [(gt index, pred index)] with IoU >= min_iou."""
    iou = box_iou(gt, pred)
    pairs = []
    if iou.size == 0:
        return pairs
    for flat in np.argsort(-iou, axis=None):
        g, p = divmod(int(flat), iou.shape[1])
        if iou[g, p] < min_iou:
            break
        if all(g != a and p != b for a, b in pairs):
            pairs.append((g, p))
    return pairs
