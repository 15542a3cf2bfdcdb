"""Scoring faces found in photos against known boxes: a detector's recall and precision by mask state
(face_image.py --score), and predict.py's outputs against VOC boxes by face size (evaluation.py --boxes).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from masktk.data.voc import read_voc
from masktk.errors import UserError
from masktk.faces.boxes import box_iou, match_boxes
from masktk.labels import MASK_NAMES
from masktk.metrics.classification import macro_f1

SIZE_BINS = ((32, 64), (64, 128), (128, 1_000_000))


def read_predictions(pred_dir):
    """predict.py's per-photo JSON files -> {photo stem: [(box, mask id)]}."""
    pred_dir = Path(pred_dir)
    files = sorted(pred_dir.glob("*.json")) if pred_dir.is_dir() else []
    out, odd = {}, []
    for f in files:
        try:
            d = json.loads(f.read_text())
            out[Path(d["photo"]).stem] = [(face["box"], int(face["mask"])) for face in d["faces"]]
        except (ValueError, KeyError, TypeError):
            odd += [] if f.name == "boxes_scores.json" else [f.name]  # our own scores file is expected there
    if odd:  # a damaged file would otherwise count its photo's faces as missed, silently
        print(f"warning: {pred_dir}: {len(odd)} .json file(s) are not predict.py output, their photos count as not "
              f"predicted: {', '.join(odd[:5])}{' ...' if len(odd) > 5 else ''}", file=sys.stderr)
    if not out:
        raise UserError(f"{pred_dir}: no predict.py output (<photo>.json); run python predict.py PHOTOS --output_dir {pred_dir}")
    return out


def mask_scores(y, pred):
    return {"mask_accuracy": float((y == pred).mean()) if len(y) else 0.0,
            "mask_f1": macro_f1(y, pred, [0, 1, 2]) if len(y) else 0.0, "n": int(len(y))}


def score_boxes(data_dir, pred_dir, min_face=32, min_iou=0.5):
    """Mask status of annotated faces matched to predicted ones. -> dict of figures."""
    faces = read_voc(data_dir)
    faces = faces[faces["size"] >= min_face]
    preds = read_predictions(pred_dir)
    y, pred, size = [], [], []
    missed = 0
    for stem, gt in faces.groupby("stem", sort=True):
        found = preds.get(stem, [])
        pairs = match_boxes(gt[["xmin", "ymin", "xmax", "ymax"]].to_numpy(), [b for b, _ in found], min_iou)
        missed += len(gt) - len(pairs)
        for g, p in pairs:
            y.append(gt["mask"].iloc[g]), pred.append(found[p][1]), size.append(gt["size"].iloc[g])
    y, pred, size = np.asarray(y, int), np.asarray(pred, int), np.asarray(size)
    res = {**mask_scores(y, pred), "annotated": int(len(faces)), "missed": int(missed),
           "photos": int(faces["stem"].nunique()), "photos_predicted": int(sum(s in preds for s in faces["stem"].unique())),
           "always_wear_accuracy": float((y == 0).mean()) if len(y) else 0.0, "min_face": min_face,
           "confusion": confusion_matrix(y, pred, labels=[0, 1, 2]).tolist() if len(y) else [[0] * 3] * 3}
    res["by_size"] = {f"{lo}-{hi - 1}" if hi < 1_000_000 else f"{lo}+": mask_scores(y[(size >= lo) & (size < hi)],
                                                                                    pred[(size >= lo) & (size < hi)])
                      for lo, hi in SIZE_BINS if hi > min_face}
    return res


def print_boxes(res):
    print(json.dumps({k: v for k, v in res.items() if k not in ("confusion", "by_size")}))
    print("confusion (rows: annotated, columns: predicted)\n" + f"{'':>10}" + "".join(f"{n:>10}" for n in MASK_NAMES))
    for n, row in zip(MASK_NAMES, res["confusion"]):
        print(f"{n:>10}" + "".join(f"{v:>10}" for v in row))
    for k, v in res["by_size"].items():
        print(f"faces {k:>8} px: n {v['n']:4d}  accuracy {v['mask_accuracy']:.3f}  macro F1 {v['mask_f1']:.3f}")


# --- scoring detection against known boxes --------------------------------------------------------
def known_boxes(root):
    """-> DataFrame(photo, group, x1, y1, x2, y2): the true face boxes of a composed dataset
    (synthetic.py --faces writes faces_gt.csv; group = mask state) or of a VOC dataset (group = the
    annotated mask state)."""
    root = Path(root)
    if (root / "faces_gt.csv").is_file():
        gt = pd.read_csv(root / "faces_gt.csv")
        return pd.DataFrame({"photo": [str(root / s / "images" / p) for s, p in zip(gt["split"], gt["path"])],
                             "group": gt["mask"], "x1": gt["x1"], "y1": gt["y1"], "x2": gt["x2"], "y2": gt["y2"]})
    if (root / "annotations").is_dir():
        v = read_voc(root)
        return v.rename(columns={"xmin": "x1", "ymin": "y1", "xmax": "x2", "ymax": "y2", "mask": "group"})[
            ["photo", "group", "x1", "y1", "x2", "y2"]]
    raise UserError(f"{root}: no faces_gt.csv (python synthetic.py --faces ... writes it) and no annotations/ "
                    "(PASCAL-VOC); --score needs known face boxes")


def score_detection(root, detector, min_face=32, min_score=0.9):
    """Recall and precision at IoU >= 0.5 (one-to-one, highest IoU first) and the median IoU of the
    matched faces, by mask state, over every known face of at least min_face px, for the detections
    of score >= min_score (predict.py's default). Precision counts detections of at least min_face / 2
    px (smaller ones would match faces left out); a detection that matches a known face smaller than
    min_face is left out of it too, as neither right nor wrong (street photos annotate many such faces).
    -> dict, with images per second."""
    from masktk.images import read_rgb  # here: scoring submissions (evaluation.py) needs no OpenCV
    every = known_boxes(root)
    big = np.minimum(every["x2"] - every["x1"], every["y2"] - every["y1"]) >= min_face
    gt = every[big]
    hits, ious, dets, t0 = np.zeros(len(gt), bool), np.full(len(gt), np.nan), 0, time.perf_counter()
    for photo, faces in gt.groupby("photo", sort=True):
        img = read_rgb(photo)
        if img is None:
            raise UserError(f"{photo}: unreadable photo")
        boxes, scores, _ = detector.detect([img])[0]
        boxes = boxes[scores >= min_score]
        # detector boxes are tighter than annotated ones: half the size still counts for precision
        boxes = boxes[np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= min_face / 2]
        pos, known = gt.index.get_indexer(faces.index), faces[["x1", "y1", "x2", "y2"]].to_numpy()
        iou, matched = box_iou(known, boxes), match_boxes(known, boxes)
        for g, d in matched:
            hits[pos[g]], ious[pos[g]] = True, iou[g, d]
        rest = np.setdiff1d(np.arange(len(boxes)), [d for _, d in matched])
        small = every[(every["photo"] == photo) & ~big][["x1", "y1", "x2", "y2"]].to_numpy()
        dets += len(matched) + len(rest) - len(match_boxes(small, boxes[rest]))
    secs = time.perf_counter() - t0
    groups = {name: gt["group"].to_numpy() == k for k, name in enumerate(MASK_NAMES)}
    out = {name: {"faces": int(m.sum()), "recall": float(hits[m].mean()) if m.any() else None,
                  "median_iou": float(np.nanmedian(ious[m & hits])) if (m & hits).any() else None}
           for name, m in groups.items()}
    return {"faces": len(gt), "recall": float(hits.mean()), "precision": float(hits.sum() / max(dets, hits.sum(), 1)),
            "by_mask": out, "photos": int(gt["photo"].nunique()), "images_per_s": gt["photo"].nunique() / secs}
