"""Mask checking measured as object detection, the way mask detectors (YOLO's validation) are: every predicted face
is a detection of each mask state with confidence = detection score x that state's probability (or of its most
likely state only), matched to annotated faces of that state at an IoU threshold, highest confidence first; AP is
COCO's 101-point interpolated precision over recall, per state and IoU 0.50:0.05:0.95.

A `min_face` makes faces whose shorter side is under it neither right nor wrong: an annotated small face is an
"ignore" region (a detection on it counts for nothing), and so is an unmatched detection under half of it
(detector boxes are tighter than annotated ones), as COCO's area ranges do.
"""
from __future__ import annotations

import numpy as np

from masktk.faces.boxes import box_iou
from masktk.labels import MASK_NAMES

IOU_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)
RECALL_POINTS = np.linspace(0, 1, 101)


def mask_probs(probs):
    """A face's probabilities as predict.py writes them -> the 3 mask states' (18 classes: label = mask*6 + ...)."""
    p = np.asarray(probs, float)
    return p.reshape(3, 6).sum(1) if p.size == 18 else p


def match_greedy(gt, ignore, det, iou_t):
    """One photo, one class: detections (boxes sorted by falling confidence) each take the unmatched annotated face
    of highest IoU >= iou_t, counted faces before ignored ones -> (per detection 1 true, 0 false, -1 ignored;
    per detection the counted face it took, or -1)."""
    out, took = np.zeros(len(det), int), np.full(len(det), -1)
    if not len(det) or not len(gt):
        return out, took
    iou, taken = box_iou(np.asarray(gt, float), np.asarray(det, float)), np.zeros(len(gt), bool)
    for d in range(len(det)):
        counted = np.where(~taken & ~ignore & (iou[:, d] >= iou_t), iou[:, d], -1)
        if counted.max() >= 0:
            took[d] = counted.argmax()
            taken[took[d]], out[d] = True, 1
        elif (ignore & (iou[:, d] >= iou_t)).any():  # on a face too small to count (ignore regions match often)
            out[d] = -1
    return out, took


def average_precision(flags, conf, n_gt):
    """COCO's AP from every detection's match flag (1, 0, -1 ignored) and confidence, over n_gt counted faces
    -> (AP, recall, precision); AP None when there is no counted face."""
    keep = flags >= 0
    order = np.argsort(-conf[keep], kind="mergesort")
    tp = flags[keep][order] == 1
    ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
    recall = ctp / max(n_gt, 1)
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    if not n_gt:
        return None, recall, precision
    if not len(precision):  # faces to find, no detection of them
        return 0.0, recall, precision
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(idx < len(envelope), envelope[np.minimum(idx, len(envelope) - 1)], 0)
    return float(sampled.mean()), recall, precision


def detections_of(faces, cls, mode):
    """[(box, confidence)] of one class from a photo's predicted faces [(box, score, mask probabilities, label)]:
    mode 'all' (every face, score x p[cls]) or 'top' (faces whose most likely state is cls)."""
    return [(b, s * p[cls]) for b, s, p, _ in faces if mode == "all" or int(np.argmax(p)) == cls]


def class_flags(gt, preds, cls, iou_t, min_face, mode):
    """Every photo's detections of class cls matched -> (flags, confidences, counted faces). cls None: any face
    (detection alone, confidence = detection score)."""
    flags, conf, n_gt = [], [], 0
    for stem in sorted(set(gt) | set(preds)):
        faces = gt.get(stem, [])
        mine = [(b, size) for b, m, size in faces if cls is None or m == cls]
        ignore = np.array([size < min_face for _, size in mine], bool)
        found = preds.get(stem, [])
        dets = [(b, s) for b, s, _, _ in found] if cls is None else detections_of(found, cls, mode)
        dets.sort(key=lambda d: -d[1])
        f = match_greedy([b for b, _ in mine], ignore, [b for b, _ in dets], iou_t)[0]
        small = np.array([min(b[2] - b[0], b[3] - b[1]) < min_face / 2 for b, _ in dets], bool)
        f[(f == 0) & small] = -1  # an unmatched detection too small to count
        flags.append(f), conf.append(np.array([c for _, c in dets], float))
        n_gt += int((~ignore).sum())
    return np.concatenate(flags or [np.zeros(0, int)]), np.concatenate(conf or [np.zeros(0)]), n_gt


def ap_table(gt, preds, min_face=0, mode="all"):
    """AP per mask state at IoU 0.5 and over 0.5:0.95, their means over the states with faces, and the detection
    alone (any state). gt: {stem: [(box, mask, size)]}; preds: {stem: [(box, score, mask probabilities, the
    mask state predict.py decided)]}."""
    return ap_with_curves(gt, preds, min_face, mode)[0]


def ap_with_curves(gt, preds, min_face=0, mode="all"):
    """-> (ap_table's figures, {state: (recall, precision)} at IoU 0.5 for the curves' figure): each class
    matched once per threshold."""
    out, curves = {}, {}
    for k, name in [(None, "face")] + list(enumerate(MASK_NAMES)):
        runs = [class_flags(gt, preds, k, t, min_face, mode) for t in IOU_THRESHOLDS]
        results = [average_precision(*r) for r in runs]
        aps = [ap for ap, _, _ in results]
        out[name] = {"ap50": aps[0], "ap50_95": None if aps[0] is None else float(np.mean(aps)), "faces": runs[0][2]}
        if k is not None:
            curves[name] = results[0][1:]
    states = [out[n] for n in MASK_NAMES if out[n]["ap50"] is not None]
    out["map50"] = float(np.mean([s["ap50"] for s in states])) if states else None
    out["map50_95"] = float(np.mean([s["ap50_95"] for s in states])) if states else None
    return out, curves


def at_labels(gt, preds, min_score, min_face=0, iou_t=0.5):
    """The faces predict.py keeps (score >= min_score) with the state it decided for them: each matched to an annotated
    face (any state, highest score first) -> precision and recall per state and the confusion matrix (rows:
    annotated state, then 'no face'; columns: predicted state, then 'missed')."""
    conf = np.zeros((4, 4), int)
    for stem in sorted(set(gt) | set(preds)):
        faces = gt.get(stem, [])
        dets = sorted([(b, s, label) for b, s, _, label in preds.get(stem, []) if s >= min_score],
                      key=lambda d: -d[1])
        ignore = np.array([size < min_face for _, _, size in faces], bool)
        f, took = match_greedy([b for b, _, _ in faces], ignore, [b for b, _, _ in dets], iou_t)
        for (b, _, label), flag, g in zip(dets, f, took):
            if flag == 1:
                conf[faces[g][1], label] += 1
            elif flag == 0 and min(b[2] - b[0], b[3] - b[1]) >= min_face / 2:
                conf[3, label] += 1
        matched = set(took[f == 1].tolist())
        for i, (_, m, _) in enumerate(faces):
            conf[m, 3] += int(i not in matched and not ignore[i])
    tp = np.diag(conf)[:3]
    return {"precision": {n: float(tp[k] / max(conf[:, k].sum(), 1)) for k, n in enumerate(MASK_NAMES)},
            "recall": {n: float(tp[k] / max(conf[k].sum(), 1)) for k, n in enumerate(MASK_NAMES)},
            "confusion": conf.tolist(), "min_score": min_score}
