"""Crop faces with MTCNN (or OpenCV's SSD face detector: --detector): batched, resumable.

    python face_image.py                           # demo_data/{train,eval}/images -> .../faces
    python face_image.py --data_dir /data          # /data/train and /data/eval
    SM_CHANNEL_TRAIN=/data/train SM_CHANNEL_EVAL=/data/eval python face_image.py

For each split dir holding images/, writes faces/ with the same relative paths and names, plus
faces/boxes.csv (path, x1, y1, x2, y2, score, detected: the face box in full-resolution pixels, or
the centre region when no face was found). Originals are never modified. An interrupted run, started
again, skips finished work and ends with the same files as an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from images import IMG_EXTS, center_crop, center_region, read_rgb
from labels import MASK_NAMES
from utils import (UserError, add_bool, atomic_path, cli, demo_note, env_default, fraction, load_dotenv_once,
                   make_parser, positive, write_csv_atomic, write_json_atomic)
from voc import box_iou, match_boxes, read_voc

# margins around the detected box, as fractions of the box width: close to the original's 30 px at the
# sides and bottom and 60 px on top for a ~200 px face in a 384x512 photo, and right for any face size
DEFAULT_MARGIN = (0.3, 0.15, 0.15)  # top, sides, bottom
DETECT_SIZE = 256  # longest side of the copy that MTCNN sees in face_image.py
# MTCNN was trained on bare faces: its last two stages reject many masked ones. Photos where the first
# pass finds no face get a second pass with these stage thresholds. On composed masked photos (706 of
# the fitted builder's) a face is found in 97% of the masked ones instead of 75%, and the right one (IoU
# >= 0.3 with the true box) in 91% instead of 74% (README, face crops); photos where the first pass found
# a face are not touched.
RETRY_THRESHOLDS = (0.3, 0.3, 0.01)
MTCNN_THRESHOLDS = (0.6, 0.7, 0.7)  # MTCNN's own, the first pass


class FaceDetector:
    """facenet-pytorch's MTCNN (weights ship in the package) over batches of same-size images: a pass
    with `thresholds`, then, for the images where it found no face, one with `retry_thresholds`
    (None: no second pass)."""

    def __init__(self, device="auto", detect_size=DETECT_SIZE, min_face_size=20, thresholds=MTCNN_THRESHOLDS,
                 retry_thresholds=RETRY_THRESHOLDS):
        from facenet_pytorch import MTCNN
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.detect_size = detect_size
        self.passes = [list(thresholds)] + ([list(retry_thresholds)] if retry_thresholds else [])
        self.mtcnn = MTCNN(keep_all=True, device=device, min_face_size=min_face_size, thresholds=list(thresholds),
                           select_largest=False, post_process=False)

    def detect(self, images):
        """RGB uint8 arrays -> per image (boxes (n, 4), scores (n,), landmarks (n, 5, 2)) in the
        images' own pixels, from the first pass that finds a face in it."""
        return first_found(images, [lambda ims, t=t: self._detect(ims, t) for t in self.passes])

    def _detect(self, images, thresholds):
        """One MTCNN pass. Images of one shape go through MTCNN together, downscaled so the longest side
        is detect_size (None: full resolution)."""
        self.mtcnn.thresholds = thresholds
        out = [None] * len(images)
        groups = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape, []).append(i)
        for shape, idx in groups.items():
            h, w = shape[:2]
            s = min(1.0, self.detect_size / max(h, w)) if self.detect_size else 1.0
            size = (max(1, round(w * s)), max(1, round(h * s)))
            batch = np.stack([images[i] if s == 1.0 else cv2.resize(images[i], size, interpolation=cv2.INTER_AREA)
                              for i in idx])
            with torch.no_grad():
                boxes, probs, points = self.mtcnn.detect(batch, landmarks=True)
            sx, sy = w / size[0], h / size[1]
            for j, i in enumerate(idx):
                if boxes[j] is None:
                    out[i] = (np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))
                else:
                    b = np.asarray(boxes[j], float) * [sx, sy, sx, sy]
                    out[i] = (b, np.asarray(probs[j], float), np.asarray(points[j], float) * [sx, sy])
        return out


def first_found(images, detect_fns):
    """Each detect function looks only at the images where the ones before it found no face. -> per
    image the answer of the first that found one (or of the last)."""
    out, todo = [None] * len(images), range(len(images))
    for fn in detect_fns:
        for i, found in zip(todo, fn([images[i] for i in todo])):
            out[i] = found
        todo = [i for i in todo if len(out[i][0]) == 0]
        if not todo:
            break
    return out


class CascadeDetector:
    """Detectors tried in turn (see first_found): a detector that misses few faces first, another for
    the photos where it found none."""

    def __init__(self, *stages):
        self.stages = stages

    def detect(self, images):
        return first_found(images, [d.detect for d in self.stages])


class UnionDetector:
    """Every detector on every photo, their faces merged: a later detector's box is kept only where it
    overlaps none kept before it at IoU >= iou (each detector already merged its own boxes)."""

    def __init__(self, *stages, iou=0.4):
        self.stages, self.iou = stages, iou

    def detect(self, images):
        return [self._merge(found) for found in zip(*(d.detect(images) for d in self.stages))]

    def _merge(self, found):
        boxes, scores, marks = found[0]
        for b, s, m in found[1:]:
            new = box_iou(b, boxes).max(1) < self.iou if len(boxes) and len(b) else np.ones(len(b), bool)
            boxes, scores, marks = (np.concatenate([boxes, b[new]]), np.concatenate([scores, s[new]]),
                                    np.concatenate([marks, m[new]]))
        return boxes, scores, marks


def _mtcnn(device, detect_size, thresholds, second_pass):
    return FaceDetector(device, detect_size, thresholds=thresholds,
                        retry_thresholds=RETRY_THRESHOLDS if second_pass else None)


def _ssd(device, detect_size, thresholds, second_pass):
    from face_ssd import SSDFaceDetector
    return SSDFaceDetector(device)


def _retry(device, detect_size, second_pass):
    """MTCNN's relaxed second pass as a cascade's last stage (none when it is off)."""
    return [_mtcnn(device, detect_size, RETRY_THRESHOLDS, False)] if second_pass else []


# --detector: name -> factory(device, detect_size, MTCNN thresholds, MTCNN second pass); the SSD always
# sees 300x300 copies, so detect_size and the thresholds only concern MTCNN. mtcnn_ssd keeps MTCNN's boxes
# wherever its first pass finds a face and asks the SSD before MTCNN's relaxed second pass. union runs the
# SSD and MTCNN's first pass on every photo (street photos hold faces that only one of them finds), keeps
# the SSD's box where both find a face, and asks MTCNN's second pass where neither finds one.
DETECTORS = {
    "mtcnn": _mtcnn,
    "ssd": _ssd,
    "ssd_mtcnn": lambda *a: CascadeDetector(_ssd(*a), _mtcnn(*a)),
    "mtcnn_ssd": lambda dev, size, thr, second: CascadeDetector(
        _mtcnn(dev, size, thr, False), _ssd(dev, size, thr, second), *_retry(dev, size, second)),
    "union": lambda dev, size, thr, second: CascadeDetector(
        UnionDetector(_ssd(dev, size, thr, second), _mtcnn(dev, size, thr, False)), *_retry(dev, size, second)),
}
# MTCNN (with its second pass) stays the default: the SSD finds more masked faces at the true box (and
# MTCNN where the SSD finds none finds most of the rest), yet models trained on its crops scored lower CV
# macro F1 on real faces (3 seeds each; README, face crops: detectors side by side)
DEFAULT_DETECTOR = "mtcnn"


def create_detector(name=DEFAULT_DETECTOR, device="auto", detect_size=DETECT_SIZE, thresholds=MTCNN_THRESHOLDS,
                    second_pass=True):
    if name not in DETECTORS:
        raise UserError(f"unknown face detector {name!r}; valid: {', '.join(DETECTORS)}")
    return DETECTORS[name](device, detect_size, tuple(thresholds), second_pass)


CROP_FILE = "crop.json"  # in each faces/ folder: the CropRecipe that cut it


@dataclass(frozen=True)
class CropRecipe:
    """How face_image.py finds and cuts faces. Recorded in faces/crop.json and in the checkpoints trained
    on those crops, so that inference on raw photos and predict.py find and cut faces as the training
    crops were cut, without being told."""
    detector: str = DEFAULT_DETECTOR
    detect_size: int | None = DETECT_SIZE
    thresholds: tuple = MTCNN_THRESHOLDS
    second_pass: bool = True
    margin: tuple = DEFAULT_MARGIN

    @classmethod
    def from_dict(cls, d):
        return cls(d["detector"], d["detect_size"], tuple(d["thresholds"]), bool(d["second_pass"]), tuple(d["margin"]))

    def to_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def create_detector(self, device="auto"):
        return create_detector(self.detector, device, self.detect_size, self.thresholds, self.second_pass)

    def describe(self):
        return (f"--detector {self.detector} --detect_size {self.detect_size or 0} --thresholds "
                f"{' '.join(map(str, self.thresholds))} --second_pass {self.second_pass} --margin "
                f"{' '.join(map(str, self.margin))}")


def read_crop_recipe(faces_dir):
    """-> the CropRecipe recorded in faces_dir, or None (none recorded: cut before recipes were kept)."""
    path = Path(faces_dir) / CROP_FILE
    if not path.is_file():
        return None
    try:
        return CropRecipe.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a crop recipe ({e}); delete {Path(faces_dir)} and run face_image.py again")


def record_crop_recipe(faces_dir, recipe):
    """Writes faces_dir's recipe, or checks it against the one already there: a resumed or repeated run
    with other settings would mix two kinds of crops in one folder."""
    old = read_crop_recipe(faces_dir)
    if old is not None and old != recipe:
        raise UserError(f"{faces_dir} was cut with {old.describe()}; run face_image.py with those settings to finish "
                        f"or repeat it, or delete {faces_dir} to cut it anew with {recipe.describe()}")
    if old is None:
        write_json_atomic(Path(faces_dir) / CROP_FILE, recipe.to_dict())


def select_face(boxes, scores, w, h):
    """Index of the most plausible face: confident, large and near the centre (not simply the first)."""
    if len(boxes) == 0:
        return None
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (w * h)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2 / w - 0.5, (boxes[:, 1] + boxes[:, 3]) / 2 / h - 0.45
    plaus = scores * np.sqrt(np.clip(area, 1e-6, None)) * np.exp(-(cx ** 2 + cy ** 2) / (2 * 0.25 ** 2))
    return int(np.argmax(plaus))


def crop_box(box, w, h, margin=DEFAULT_MARGIN):
    """Face box -> integer crop box with margins, clipped to the image."""
    x1, y1, x2, y2 = box
    bw = x2 - x1
    top, side, bottom = margin
    return (max(0, math.floor(x1 - side * bw)), max(0, math.floor(y1 - top * bw)),
            min(w, math.ceil(x2 + side * bw)), min(h, math.ceil(y2 + bottom * bw)))


def crop_face(img, box, margin=DEFAULT_MARGIN):
    """The shared crop: face_image.py, predict.py and inference on raw photos all call this."""
    x1, y1, x2, y2 = crop_box(box, img.shape[1], img.shape[0], margin)
    return img[y1:y2, x1:x2]


# Where the face sits in a competition photo (about 200 px wide in a 384x512 photo, centred a little above
# the middle): around a face found anywhere else, the window a centre-crop model was trained on.
COMPETITION_PHOTO = (384, 512)
COMPETITION_FACE = (0.5, 0.45, 200 / 384)  # centre x, centre y (fractions of width, height), width (of width)


def center_like_box(box, w, h):
    """Face box -> the crop box that frames this face as CENTER_REGION frames a competition face."""
    (pw, ph), (cx, cy, fw) = COMPETITION_PHOTO, COMPETITION_FACE
    rx1, ry1, rx2, ry2 = center_region(pw, ph)
    x1, y1, x2, y2 = box
    s = (x2 - x1) / (fw * pw)  # competition pixels -> this photo's pixels
    bx, by, fx, fy = (x1 + x2) / 2, (y1 + y2) / 2, cx * pw, cy * ph
    return (max(0, math.floor(bx + (rx1 - fx) * s)), max(0, math.floor(by + (ry1 - fy) * s)),
            min(w, math.ceil(bx + (rx2 - fx) * s)), min(h, math.ceil(by + (ry2 - fy) * s)))


def crop_for_model(img, box, crop, margin=DEFAULT_MARGIN):
    """What a model sees of a face found in any photo: its face crop ('none', trained on faces/; margin:
    its recipe's) or the centre-like window ('center', trained on whole competition photos)."""
    if crop == "center":
        x1, y1, x2, y2 = center_like_box(box, img.shape[1], img.shape[0])
        return img[y1:y2, x1:x2]
    return crop_face(img, box, margin)


def face_or_center(img, box, found, margin=DEFAULT_MARGIN):
    """The crop every path uses (face_image.py, inference on raw photos): the face with its margins, or
    the centre region of the photo when no face was found."""
    return crop_face(img, box, margin) if found else center_crop(img)


def best_boxes(detector, images):
    """-> per image (box, score, detected): the chosen face, or the centre region when none."""
    out = []
    for im, (boxes, scores, _) in zip(images, detector.detect(images)):
        h, w = im.shape[:2]
        k = select_face(boxes, scores, w, h)
        out.append((tuple(center_region(w, h)), 0.0, False) if k is None else (tuple(boxes[k]), float(scores[k]), True))
    return out


# --- photos labelled with mask status only (train.py --extra_data) -------------------------------
MASK_FOLDERS = {"with_mask": 0, "incorrect_mask": 1, "mask_weared_incorrect": 1, "without_mask": 2}


def mask_only_layout(data_dir):
    """'boxes' (PASCAL-VOC: annotations/*.xml + images/), 'folders' (with_mask/, incorrect_mask/,
    without_mask/ of photos or face crops), or None (the competition layout)."""
    d = Path(data_dir)
    if (d / "annotations").is_dir():
        return "boxes"
    if any((d / f).is_dir() for f in MASK_FOLDERS):
        return "folders"
    return None


def _labelled_faces(data_dir, layout, min_face):
    """-> [(photo path, face box or None (find it), mask id)]."""
    d = Path(data_dir)
    if layout == "boxes":
        faces = read_voc(d)
        faces = faces[faces["size"] >= min_face]
        return [(r.photo, (r.xmin, r.ymin, r.xmax, r.ymax), r.mask) for r in faces.itertuples()]
    return [(str(d / name / rel), None, mask) for name, mask in MASK_FOLDERS.items() if (d / name).is_dir()
            for rel in list_images(d / name)]


def mask_only_faces(data_dir, crop, min_face, out_dir, log=None):
    """One crop per labelled face of a mask-only dataset, cut by the shared crop function as the main
    model sees faces (crop 'none': the face crop; 'center': the centre-like window), written once as
    PNG under out_dir with faces.csv (file, mask, found). 'boxes': the annotated faces of at least
    min_face px; 'folders': the most plausible face MTCNN finds in each photo, else the whole photo
    (most such photos are face crops already). -> DataFrame(file, mask, found)."""
    out_dir = Path(out_dir)
    if (out_dir / "faces.csv").is_file():
        return pd.read_csv(out_dir / "faces.csv")
    layout = mask_only_layout(data_dir)
    detector = create_detector() if layout == "folders" else None
    rows = []
    for n, (photo, box, mask) in enumerate(_labelled_faces(data_dir, layout, min_face)):
        img = read_rgb(photo)
        if img is None:
            if log:
                log.warn("unreadable image", f"{photo}: unreadable, skipped")
            continue
        h, w = img.shape[:2]
        found = box is not None
        if not found:
            boxes, scores, _ = detector.detect([img])[0]
            k = select_face(boxes, scores, w, h)
            found = k is not None
            box = tuple(boxes[k]) if found else (0, 0, w, h)
        file = out_dir / f"{n:06d}.png"
        write_image(file, crop_for_model(img, box, crop))
        rows.append(dict(file=str(file), mask=int(mask), found=bool(found)))
    if not rows:
        raise UserError(f"{data_dir}: no labelled face to train on (faces smaller than --extra_min_face {min_face} px "
                        "are left out)")
    table = pd.DataFrame(rows)
    write_csv_atomic(table, out_dir / "faces.csv")  # written last: its presence marks the crops complete
    return table


def write_image(path, rgb, quality=95):
    ext = path.suffix.lower()
    ok, buf = cv2.imencode(".png" if ext == ".png" else ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [] if ext == ".png" else [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise UserError(f"{path}: could not encode the crop")
    with atomic_path(path) as tmp:
        buf.tofile(str(tmp))


def list_images(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMG_EXTS and not p.name.startswith("."))


def crop_split(split_dir, recipe=CropRecipe(), detector=None, batch_size=32, workers=None, progress=True):
    """images/ -> faces/, faces/boxes.csv and faces/crop.json for one split dir, cut by recipe (detector:
    the recipe's, made once by the caller for several splits). -> (n images, faces found, fallbacks, bad)."""
    from tqdm import tqdm
    src, dst = Path(split_dir) / "images", Path(split_dir) / "faces"
    if not src.is_dir():
        raise UserError(f"{src} not found: each split dir must hold images/")
    rels = list_images(src)
    dst.mkdir(parents=True, exist_ok=True)
    record_crop_recipe(dst, recipe)
    detector = detector or recipe.create_detector()
    for stale in dst.rglob(".tmp-*"):  # left by an interrupted run
        stale.unlink()
    partial = dst / ".boxes.partial.csv"
    done = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            parts = line.split(",")
            if len(parts) == 7 and (dst / parts[0]).is_file():
                done[parts[0]] = line
    # fixed chunks of the sorted list: a resumed run recomputes whole chunks exactly as a fresh one would
    chunks = [rels[i:i + batch_size] for i in range(0, len(rels), batch_size)]
    todo = [c for c in chunks if not all(r in done for r in c)]
    bad = []
    with ThreadPoolExecutor(workers or os.cpu_count()) as ex, open(partial, "a") as log:
        decoded = ex.map(lambda c: [read_rgb(src / r) for r in c], todo)  # decodes ahead of detection
        for chunk, imgs in tqdm(zip(todo, decoded), total=len(todo), desc=f"faces {Path(split_dir).name}",
                                disable=None if progress else True, file=sys.stderr):
            good = [(r, im) for r, im in zip(chunk, imgs) if im is not None]
            bad += [r for r, im in zip(chunk, imgs) if im is None]
            results = best_boxes(detector, [im for _, im in good]) if good else []
            for (rel, im), (box, score, found) in zip(good, results):
                write_image(dst / rel, face_or_center(im, box, found, recipe.margin))
                line = f"{rel},{box[0]:.2f},{box[1]:.2f},{box[2]:.2f},{box[3]:.2f},{score:.5f},{int(found)}"
                done[rel] = line
                log.write(line + "\n")
            log.flush()
    for r in bad:
        print(f"warning: {src / r}: unreadable image, no face crop written", file=sys.stderr)
    rows = [done[r].split(",") for r in rels if r in done]
    df = pd.DataFrame(rows, columns=["path", "x1", "y1", "x2", "y2", "score", "detected"])
    write_csv_atomic(df, dst / "boxes.csv")
    partial.unlink()
    found = int((df["detected"] == "1").sum())
    return len(rels), found, len(df) - found, len(bad)


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


@cli
def main(argv):
    load_dotenv_once()
    ap = make_parser(__doc__)
    ap.add_argument("--data_dir", default=None, help="root holding train/ and eval/ (default demo_data, or the "
                    "SM_CHANNEL_TRAIN / SM_CHANNEL_EVAL dirs when set)")
    ap.add_argument("--batch_size", type=positive(int, 1, inclusive=True), default=32, help="images per MTCNN call")
    ap.add_argument("--detect_size", type=positive(int, 0, inclusive=True), default=DETECT_SIZE,
                    help="longest side seen by MTCNN (0: full)")
    ap.add_argument("--margin", type=positive(float, 0, inclusive=True), nargs=3, default=list(DEFAULT_MARGIN),
                    metavar=("TOP", "SIDES", "BOTTOM"),
                    help="crop margins as fractions of the face box width")
    ap.add_argument("--detector", choices=sorted(DETECTORS), default=DEFAULT_DETECTOR,
                    help="mtcnn: MTCNN (the best CV macro F1 of models trained on its crops); ssd_mtcnn: OpenCV's SSD, "
                    "then MTCNN where it finds no face (finds the most masked faces); mtcnn_ssd: MTCNN's first pass, "
                    "then the SSD, then MTCNN's second pass; ssd: the SSD alone; union: the SSD and MTCNN's first pass on "
                    "every photo, their faces merged, then MTCNN's second pass (finds the most faces in street photos) (README)")
    ap.add_argument("--thresholds", type=fraction, nargs=3, default=list(MTCNN_THRESHOLDS), metavar=("P", "R", "O"),
                    help="MTCNN stage thresholds; lower finds more masked faces and more false ones")
    add_bool(ap, "--second_pass", True, f"look again with thresholds {' '.join(map(str, RETRY_THRESHOLDS))} in "
             "the photos where no face was found (most are masked faces)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--workers", type=positive(int, 1, inclusive=True), default=None, help="decoding threads")
    ap.add_argument("--score", nargs="+", default=None, metavar="ROOT", help="score detection against known face "
                    "boxes (faces_gt.csv of synthetic.py --faces, or PASCAL-VOC annotations/) instead of cropping")
    ap.add_argument("--min_face", type=positive(int, 1, inclusive=True), default=32,
                    help="with --score: smallest face counted (px)")
    ap.add_argument("--min_score", type=fraction, default=0.9, help="with --score: smallest detection score kept "
                    "(predict.py's default)")
    args = ap.parse_args(argv)
    recipe = CropRecipe(args.detector, args.detect_size or None, tuple(args.thresholds), args.second_pass,
                        tuple(args.margin))
    det = recipe.create_detector(args.device)
    if args.score:
        for root in args.score:
            print(json.dumps({"data": str(root), "detector": args.detector, "detect_size": args.detect_size,
                              "second_pass": args.second_pass, **score_detection(root, det, args.min_face, args.min_score)}))
        return
    if args.data_dir:
        splits = [Path(args.data_dir) / s for s in ("train", "eval") if (Path(args.data_dir) / s / "images").is_dir()]
    else:
        envs = [env_default("SM_CHANNEL_TRAIN"), env_default("SM_CHANNEL_EVAL")]
        splits = [Path(p) for p in envs if p]
        if not splits:
            demo_note("demo_data", "demo_data", "SM_CHANNEL_TRAIN", "--data_dir", argv)
            splits = [Path("demo_data") / s for s in ("train", "eval")]
    splits = [s for s in splits if (s / "images").is_dir()]
    if not splits:
        raise UserError(f"no images/ folder found under {args.data_dir or 'demo_data'}: pass --data_dir ROOT "
                        "holding train/images and eval/images (python synthetic.py makes a demo one)")
    tot = [0, 0, 0, 0]
    for s in splits:
        r = crop_split(s, recipe, det, args.batch_size, args.workers)
        tot = [a + b for a, b in zip(tot, r)]
        print(f"{s}: {r[0]} images, {r[1]} faces found, {r[2]} fallbacks -> {s / 'faces'}")
    print(f"{tot[0]} images, {tot[1]} faces found, {tot[2]} fallbacks" + (f", {tot[3]} unreadable" if tot[3] else ""))


if __name__ == "__main__":
    main()
