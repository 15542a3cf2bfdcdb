"""The face detectors by name (RetinaFace, MTCNN, OpenCV's SSD, cascades and unions of them), each
answering boxes, scores and landmarks per photo; create_detector builds one.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from masktk.errors import UserError
from masktk.faces.boxes import box_iou
from masktk.images import side_size, upscaled

DETECT_SIZE = 256  # longest side of the copy that MTCNN sees in face_image.py


# MTCNN was trained on bare faces and rejects many masked ones: a photo where its first pass finds no face
# gets a second pass with these relaxed thresholds (measured in docs/detectors.md)
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
            size = side_size(w, h, max(h, w) * s)
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
    from masktk.faces.ssd import SSDFaceDetector
    return SSDFaceDetector(device)


# RetinaFace-0.25 fine-tuned on masked street faces by finetune_detector.py (docs/detectors.md, Fine-tuned on street
# photos; README, Licences: trained on Kaggle's Face Mask Detection photos)
STREET_WEIGHTS = Path(__file__).resolve().parent / "weights" / "retinaface_street.onnx"


def _retina(detect_size, weights=None):
    from masktk.faces.retinaface import RetinaFaceDetector
    # its own size: at MTCNN's 256 px it misses most masked faces (docs/detectors.md)
    return RetinaFaceDetector(weights=None if weights is None else str(weights))


def _retry(device, detect_size, second_pass):
    """MTCNN's relaxed second pass as a cascade's last stage (none when it is off)."""
    return [_mtcnn(device, detect_size, RETRY_THRESHOLDS, False)] if second_pass else []


# --detector: name -> factory(device, detect_size, MTCNN thresholds, MTCNN second pass); the SSD always
# sees 300x300 copies and RetinaFace photos of up to 1024 px, so detect_size and the thresholds only concern MTCNN. mtcnn_ssd keeps MTCNN's boxes
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
    "retinaface": lambda dev, size, thr, second: _retina(size),
    "retinaface_street": lambda dev, size, thr, second: _retina(size, STREET_WEIGHTS),
}


# finds the most real street faces of the fast detectors, with the best precision, and models trained on
# its crops score level with MTCNN's in CV (docs/detectors.md)
DEFAULT_DETECTOR = "retinaface"


# small photos are seen at this longest side by the detector: street photos of 400 x 280 px hide faces under 32 px
# that it finds once they are larger; photos of the competition's 384 x 512, training crops' source, are seen as they
# are (docs/results.md, Real masks as detections; docs/detectors.md, Small photos upscaled)
UPSCALE_TO = 512


def detect_upscaled(detector, img, side=UPSCALE_TO):
    """One photo's faces as predict.py finds them: seen upscaled to `side` when smaller -> (boxes, scores, landmarks
    or None) in the photo's own pixels."""
    view, s = upscaled(img, side)
    boxes, scores, marks = detector.detect([view])[0]
    return (np.asarray(boxes, float).reshape(-1, 4) / np.tile(s, 2), np.asarray(scores, float),
            None if marks is None else np.asarray(marks, float) / s)


def is_detector_file(name):
    """A fine-tuned RetinaFace (finetune_detector.py's .onnx) named by its path, where a detector name may stand."""
    return str(name).lower().endswith(".onnx")


def detector_kind(name):
    """The family a detector's margins and default score threshold come from: its name, or retinaface for a file
    and for the fine-tuned RetinaFace shipped with the toolkit."""
    return "retinaface" if is_detector_file(name) or name == "retinaface_street" else name


def detector_arg(value):
    """--detector's type: a detector's name, or the path of a detector file (kept absolute: crop.json and the
    checkpoints record it, and are read from other folders)."""
    if value in DETECTORS:
        return value
    if is_detector_file(value):
        if not Path(value).is_file():
            raise argparse.ArgumentTypeError(f"{value}: no such detector file")
        return str(Path(value).resolve())
    raise argparse.ArgumentTypeError(f"{value!r} is none of {', '.join(sorted(DETECTORS))}, nor a detector file "
                                     "(.onnx, written by finetune_detector.py)")


def create_detector(name=DEFAULT_DETECTOR, device="auto", detect_size=DETECT_SIZE, thresholds=MTCNN_THRESHOLDS,
                    second_pass=True):
    if is_detector_file(name):
        from masktk.faces.retinaface import RetinaFaceDetector
        return RetinaFaceDetector(weights=name)
    if name not in DETECTORS:
        raise UserError(f"unknown face detector {name!r}; valid: {', '.join(DETECTORS)}, or a detector file (.onnx)")
    return DETECTORS[name](device, detect_size, tuple(thresholds), second_pass)
