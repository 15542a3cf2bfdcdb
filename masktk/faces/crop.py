"""The face crop: the recipe a run was cut with (crop.json), choosing the face of a photo, cutting it with
margins (turned upright where the recipe aligns) and the centre-region fallback where none is found.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from masktk.cli import fraction, positive
from masktk.errors import UserError
from masktk.faces.detectors import (
    DEFAULT_DETECTOR,
    DETECT_SIZE,
    DETECTORS,
    MTCNN_THRESHOLDS,
    create_detector,
    detector_kind,
    is_detector_file,
)
from masktk.files import write_json_atomic
from masktk.images import center_crop, center_region

# margins around the detected box, as fractions of the box width: close to the original's 30 px at the
# sides and bottom and 60 px on top for a ~200 px face in a 384x512 photo, and right for any face size
DEFAULT_MARGIN = (0.3, 0.15, 0.15)  # top, sides, bottom


# RetinaFace's box is larger than MTCNN's and reaches lower (over the mask): these margins cut about the
# region DEFAULT_MARGIN cuts around MTCNN's box on the same face (docs/detectors.md)
MARGINS = {"retinaface": (0.25, 0.1, 0.05)}


def default_margin(detector):
    return MARGINS.get(detector_kind(detector), DEFAULT_MARGIN)


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
    margin: tuple | None = None  # None: the detector's default_margin
    align: bool = False  # turn each crop so the eyes sit level (crop_face); absent from older recipes: off

    def __post_init__(self):
        if self.margin is None:
            object.__setattr__(self, "margin", default_margin(self.detector))

    @classmethod
    def from_dict(cls, d):
        """A recorded recipe (crop.json, a checkpoint's face_crop), held to face_image.py's flag rules: ValueError
        naming the field that breaks them."""
        if not isinstance(d, dict):
            raise ValueError("a JSON object expected")
        if d.get("detector") not in DETECTORS and not (isinstance(d.get("detector"), str)
                                                       and is_detector_file(d["detector"])):
            raise ValueError(f"detector {d.get('detector')!r} is none of {', '.join(sorted(DETECTORS))}, nor a "
                             "detector file (.onnx)")
        size = d.get("detect_size")
        margin, thresholds = _rule(d, "margin", MARGIN, 3), _rule(d, "thresholds", fraction, 3)
        flags = [d.get(k, False if k == "align" else None) for k in ("second_pass", "align")]
        if not all(isinstance(v, bool) for v in flags):
            raise ValueError("second_pass and align must be true or false")
        return cls(d["detector"], None if size is None else _rule(d, "detect_size", DETECT_SIZE_RULE), thresholds,
                   flags[0], margin, flags[1])

    def to_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def landmarks(self, marks):
        """The landmarks the crop turns by: the face's where this recipe aligns, else None (upright)."""
        return marks if self.align else None

    def cut(self, img, box, found, marks=None):
        """face_or_center by this recipe: its margins, and the face turned upright when it aligns."""
        return face_or_center(img, box, found, self.margin, self.landmarks(marks))

    def create_detector(self, device="auto"):
        return create_detector(self.detector, device, self.detect_size, self.thresholds, self.second_pass)

    def describe(self):
        return (f"--detector {self.detector} --detect_size {self.detect_size or 0} --thresholds "
                f"{' '.join(map(str, self.thresholds))} --second_pass {self.second_pass} --margin "
                f"{' '.join(map(str, self.margin))} --align {self.align}")


# face_image.py's --margin and --detect_size take these: crop.json and checkpoints are held to them when read
MARGIN = positive(float, 0, inclusive=True, maximum=5)  # box widths: beyond 5 a crop is mostly background
DETECT_SIZE_RULE = positive(int, 0, inclusive=True, maximum=8192)


def _rule(d, key, rule, n=None):
    """d[key] through a flag's rule (n values where the flag takes n) -> the value, or ValueError naming key."""
    v = d.get(key)
    try:
        if n is None:
            return rule(v)
        if not isinstance(v, list) or len(v) != n:
            raise argparse.ArgumentTypeError(f"{n} values expected, got {v!r}")
        return tuple(rule(x) for x in v)
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"{key}: {e}") from None


# crops cut before faces/crop.json existed were MTCNN's with its margins, whatever today's default is
LEGACY_RECIPE = CropRecipe("mtcnn")


def read_crop_recipe(faces_dir):
    """-> the CropRecipe recorded in faces_dir, or None (none recorded: cut before recipes were kept)."""
    path = Path(faces_dir) / CROP_FILE
    if not path.is_file():
        return None
    try:
        return CropRecipe.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
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


MAX_TILT = 45  # degrees; a steeper eye line is a landmark error, not a head that tilted


def eye_tilt(marks):
    """Degrees the line from the left to the right eye (landmarks (5, 2), the eyes first) falls."""
    (lx, ly), (rx, ry) = marks[0], marks[1]
    return float(np.clip(math.degrees(math.atan2(ry - ly, rx - lx)), -MAX_TILT, MAX_TILT))


def crop_face(img, box, margin=DEFAULT_MARGIN, marks=None):
    """The shared crop: face_image.py, predict.py and inference on raw photos all call this. marks (a
    face's five landmarks, for recipes with align): the crop turned about the box centre by the eye
    line's tilt and cut upright, the eyes level; where it leaves the photo, the edge pixels repeat."""
    if marks is None:
        x1, y1, x2, y2 = crop_box(box, img.shape[1], img.shape[0], margin)
        return img[y1:y2, x1:x2]
    x1, y1, x2, y2 = box
    bw, (top, side, bottom) = x2 - x1, margin
    w, h = bw * (1 + 2 * side), (y2 - y1) + (top + bottom) * bw
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    m = cv2.getRotationMatrix2D((float(cx), float(cy)), eye_tilt(marks), 1.0)
    m[:, 2] -= (cx - w / 2, y1 - top * bw)
    return cv2.warpAffine(img, m, (max(1, math.ceil(w)), max(1, math.ceil(h))), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


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


def crop_for_model(img, box, crop, margin=DEFAULT_MARGIN, marks=None):
    """What a model sees of a face found in any photo: its face crop ('none', trained on faces/; margin
    and marks: its recipe's) or the centre-like window ('center', trained on whole competition photos)."""
    if crop == "center":
        x1, y1, x2, y2 = center_like_box(box, img.shape[1], img.shape[0])
        return img[y1:y2, x1:x2]
    return crop_face(img, box, margin, marks)


def face_or_center(img, box, found, margin=DEFAULT_MARGIN, marks=None):
    """The crop every path uses (face_image.py, inference on raw photos): the face with its margins, or
    the centre region of the photo when no face was found."""
    return crop_face(img, box, margin, marks) if found else center_crop(img)


def landmarks_of(marks, k):
    """Face k's five landmarks, or None where the detector gives none (the SSD: zeros)."""
    m = None if marks is None or len(marks) <= k else np.asarray(marks[k], float)
    return m if m is not None and m.shape == (5, 2) and np.isfinite(m).all() and np.abs(m).sum() > 0 else None


def best_boxes(detector, images):
    """-> per image (box, score, detected, landmarks or None): the chosen face, or the centre region."""
    out = []
    for im, (boxes, scores, marks) in zip(images, detector.detect(images)):
        h, w = im.shape[:2]
        k = select_face(boxes, scores, w, h)
        out.append((tuple(center_region(w, h)), 0.0, False, None) if k is None else
                   (tuple(boxes[k]), float(scores[k]), True, landmarks_of(marks, k)))
    return out
