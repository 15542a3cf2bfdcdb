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

from masktk.data.face_boxes import box_layout, read_face_boxes
from masktk.errors import Log, UserError
from masktk.faces.boxes import box_iou, match_boxes
from masktk.labels import MASK_NAMES
from masktk.metrics.average_precision import ap_table, ap_with_curves, at_labels, mask_probs
from masktk.metrics.classification import macro_f1

SIZE_BINS = ((32, 64), (64, 128), (128, 1_000_000))


def read_detections(pred_dir):
    """predict.py's per-photo JSON files -> {photo stem: [(box, detection score, mask probabilities, the mask state
    it decided)]}."""
    pred_dir = Path(pred_dir)
    files = sorted(pred_dir.glob("*.json")) if pred_dir.is_dir() else []
    out, odd = {}, []
    for f in files:
        try:
            d = json.loads(f.read_text())
            out[Path(d["photo"]).stem] = [(list(map(float, face["box"])), float(face["score"]),
                                           mask_probs(face["probs"]), int(face["mask"])) for face in d["faces"]]
        except (ValueError, KeyError, TypeError):
            odd += [] if f.name == "boxes_scores.json" else [f.name]  # our own scores file is expected there
    if odd:  # a damaged file would otherwise count its photo's faces as missed, silently
        print(f"warning: {pred_dir}: {len(odd)} .json file(s) are not predict.py output, their photos count as not "
              f"predicted: {', '.join(odd[:5])}{' ...' if len(odd) > 5 else ''}", file=sys.stderr)
    if not out:
        raise UserError(f"{pred_dir}: no predict.py output (<photo>.json); run python predict.py PHOTOS "
                        f"--output_dir {pred_dir}")
    return out


def read_predictions(pred_dir):
    """predict.py's per-photo JSON files -> {photo stem: [(box, mask id)]}."""
    return {stem: [(box, mask) for box, _, _, mask in faces] for stem, faces in read_detections(pred_dir).items()}


def annotated_faces(data_dir, log=None):
    """A VOC or YOLO folder's faces -> {photo stem: [(box, mask id, shorter side)]}."""
    faces = read_face_boxes(data_dir, log)
    return {stem: [((r.xmin, r.ymin, r.xmax, r.ymax), int(r.mask), float(r.size)) for r in g.itertuples()]
            for stem, g in faces.groupby("stem", sort=True)}


def score_as_detector(data_dir, pred_dir, min_face=32, mode="all", min_score=0.5):
    """predict.py's faces scored as mask detectors are: AP per mask state, mAP@0.5, mAP@0.5:0.95 and detection AP,
    at all face sizes and for faces of min_face px or more; precision, recall and the confusion at the labels of
    the faces kept at min_score -> dict (with the precision-recall curves at IoU 0.5 under 'curves')."""
    log = Log()
    gt, preds = annotated_faces(data_dir, log), read_detections(pred_dir)
    log.summary()
    lowest = min((s for faces in preds.values() for _, s, _, _ in faces), default=None)
    all_sizes, curves = ap_with_curves(gt, preds, 0, mode)
    return {"mode": mode, "min_face": min_face, "photos": len(gt), "photos_predicted": sum(s in preds for s in gt),
            "lowest_score": lowest, "all_sizes": all_sizes, f"min_face_{min_face}": ap_table(gt, preds, min_face, mode),
            "at_labels": at_labels(gt, preds, min_score), f"at_labels_min_face_{min_face}": at_labels(
                gt, preds, min_score, min_face), "curves": curves}


def pr_figure(curves, title=""):
    """The precision-recall curve of each mask state (IoU 0.5, all face sizes)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, (recall, precision) in curves.items():
        ax.plot(np.concatenate([[0], recall]), np.concatenate([[1], precision]), label=name)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def print_detector_scores(res):
    """AP lines as mask detectors print them, and the confusion at the kept faces' labels."""
    for key in ("all_sizes", f"min_face_{res['min_face']}"):
        t = res[key]
        cells = "  ".join(f"{n} {_f(t[n]['ap50'])} ({t[n]['faces']})" for n in MASK_NAMES)
        print(f"AP@0.5 {key.replace('_', ' ')}: {cells}  mAP@0.5 {_f(t['map50'])}  mAP@0.5:0.95 {_f(t['map50_95'])}  "
              f"face detection AP@0.5 {_f(t['face']['ap50'])}")
    lab = res["at_labels"]
    print(f"at the labels of faces scored >= {lab['min_score']}: " + "  ".join(
        f"{n} precision {lab['precision'][n]:.3f} recall {lab['recall'][n]:.3f}" for n in MASK_NAMES))
    print("confusion (rows: annotated, then no face; columns: predicted, then missed)\n" + f"{'':>10}" +
          "".join(f"{n:>10}" for n in (*MASK_NAMES, "missed")))
    for n, row in zip((*MASK_NAMES, "no face"), lab["confusion"]):
        print(f"{n:>10}" + "".join(f"{v:>10}" for v in row))


def _f(v):
    return "  -  " if v is None else f"{v:.3f}"


def mask_scores(y, pred):
    return {"mask_accuracy": float((y == pred).mean()) if len(y) else 0.0,
            "mask_f1": macro_f1(y, pred, [0, 1, 2]) if len(y) else 0.0, "n": int(len(y))}


def score_boxes(data_dir, pred_dir, min_face=32, min_iou=0.5):
    """Mask status of annotated faces matched to predicted ones. -> dict of figures."""
    faces = read_face_boxes(data_dir, Log(quiet=True))  # its warnings are said once, by score_as_detector
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
    print(json.dumps({k: v for k, v in res.items() if k not in ("confusion", "by_size", "detector")}))
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
    if box_layout(root):
        v = read_face_boxes(root)
        return v.rename(columns={"xmin": "x1", "ymin": "y1", "xmax": "x2", "ymax": "y2", "mask": "group"})[
            ["photo", "group", "x1", "y1", "x2", "y2"]]
    raise UserError(f"{root}: no faces_gt.csv (python synthetic.py --faces ... writes it), no annotations/ "
                    "(PASCAL-VOC) and no labels/ (YOLO); --score needs known face boxes")


def score_detection(root, detector, min_face=32, min_score=0.9, upscale_to=0):
    """Recall and precision at IoU >= 0.5 (one-to-one, highest IoU first) and the median IoU of the
    matched faces, by mask state, over every known face of at least min_face px, for the detections
    of score >= min_score (predict.py's default). Precision counts detections of at least min_face / 2
    px (smaller ones would match faces left out); a detection that matches a known face smaller than
    min_face is left out of it too, as neither right nor wrong (street photos annotate many such faces).
    upscale_to: photos smaller than it are seen upscaled (predict.py's view); boxes are scored in the photo's pixels.
    -> dict, with images per second."""
    from masktk.faces.detectors import detect_upscaled  # here: scoring submissions (evaluation.py) needs no OpenCV
    from masktk.images import read_rgb
    every = known_boxes(root)
    big = np.minimum(every["x2"] - every["x1"], every["y2"] - every["y1"]) >= min_face
    gt = every[big]
    hits, ious, dets, t0 = np.zeros(len(gt), bool), np.full(len(gt), np.nan), 0, time.perf_counter()
    for photo, faces in gt.groupby("photo", sort=True):
        img = read_rgb(photo)
        if img is None:
            raise UserError(f"{photo}: unreadable photo")
        boxes, scores, _ = detect_upscaled(detector, img, upscale_to)
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
