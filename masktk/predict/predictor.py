"""A trained run as a Python object: Predictor.from_run(run_dir).predict(image) -> one dict per face.
predict.py, serve.py and masktk/predict/video.py use it; so can any program.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from masktk import distributed
from masktk.errors import UserError
from masktk.faces.crop import CropRecipe, crop_for_model, landmarks_of
from masktk.faces.detectors import DEFAULT_DETECTOR, UPSCALE_TO, detect_upscaled, detector_kind
from masktk.images import MAX_MEGAPIXELS, prepare, read_rgb, side_size, too_large, why_unreadable
from masktk.labels import FULL, face_text
from masktk.predict.backends import load_backend
from masktk.predict.pipeline import eval_crop_recipe, find_groups, run_answer, run_groups, run_tta
from masktk.train.decisions import decide, read_offsets

# detection scores kept by default, on each detector's own scale (recall and precision: docs/detectors.md)
MIN_SCORE = {"mtcnn": 0.9, "mtcnn_ssd": 0.9, "ssd": 0.2, "ssd_mtcnn": 0.2, "union": 0.2, "retinaface": 0.5}


COLOURS = {0: (40, 200, 80), 1: (250, 170, 30), 2: (230, 50, 50)}  # by mask state


ANNOTATED_SIDE = 4096  # longest side of an annotated copy: a JPEG holds at most 65500 px a side


def annotate(img, faces):
    """The photo with a numbered box per face, and below it a legend: one line per number. Tags and
    lines are sized to the photo, tags sit inside their boxes, so crowded photos stay readable. A photo
    larger than ANNOTATED_SIDE is drawn on a smaller copy."""
    from PIL import ImageFont
    img, faces = _at_most(img, faces, ANNOTATED_SIDE)
    h, w = img.shape[:2]
    size = max(12, round(w / 60))
    font = ImageFont.load_default(size=size)
    lines = [f"{k + 1}: {face_text(f)} ({max(f['probs']):.2f})" for k, f in enumerate(faces)]
    canvas = Image.new("RGB", (w, h + (len(lines) * (size + 6) + 8 if lines else 0)), (255, 255, 255))
    canvas.paste(Image.fromarray(img), (0, 0))
    d = ImageDraw.Draw(canvas)
    lw = max(2, round(max(w, h) / 300))
    for k, f in enumerate(faces):
        x1, y1, x2, y2 = (int(round(v)) for v in f["box"])
        c = COLOURS[f["mask"]]
        d.rectangle((x1, y1, x2, y2), outline=c, width=lw)
        tag_font = ImageFont.load_default(size=max(8, min(size, round((y2 - y1) / 3))))
        tw, th = d.textbbox((0, 0), str(k + 1), font=tag_font)[2:]
        tx, ty = min(max(0, x1 + lw), w - tw - 2), min(max(0, y1 + lw), h - th - 2)
        d.rectangle((tx, ty, tx + tw + 2, ty + th + 2), fill=c)
        d.text((tx + 1, ty), str(k + 1), fill=(0, 0, 0), font=tag_font)
    for k, (line, f) in enumerate(zip(lines, faces)):
        d.text((6, h + 4 + k * (size + 6)), line, fill=COLOURS[f["mask"]] if f["mask"] != 1 else (200, 120, 0),
               font=font)
    return canvas


def _at_most(img, faces, side):
    """The photo and its faces' boxes scaled so that its longest side is at most `side` (each side >= 1 px)."""
    h, w = img.shape[:2]
    if max(h, w) <= side:
        return img, faces
    size = side_size(w, h, side)
    sx, sy = size[0] / w, size[1] / h
    small = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
    return small, [{**f, "box": list(np.asarray(f["box"], float) * [sx, sy, sx, sy])} for f in faces]


@dataclass
class Predictor:
    """A trained run ready to use: the detector, the models and how they decide.

        p = Predictor.from_run("model/exp")
        faces = p.predict("photo.jpg")        # or an RGB uint8 array (H, W, 3)
        faces[0]["mask_name"], faces[0]["box"], faces[0]["probs"]
        p.answer.tasks                        # ("mask", "gender", "age"), or ("mask",) for a run on a mask set
    """
    det: object
    min_score: float
    recipe: CropRecipe
    groups: list
    models: dict
    tta: str
    offsets: object
    device: object
    upscale_to: int = 0  # a photo whose longest side is under this is seen upscaled to it by the detector
    answer: object = FULL  # labels.Answer: what the run answers (the 18 classes, or the mask state alone)

    @classmethod
    def from_run(cls, run_dir, device="auto", detector=None, backend="torch", *, tta=None, decision="fitted",
                 min_score=None, detect_size=1024, pth_name="best.pth", upscale_to=UPSCALE_TO):
        """A run folder (single, CV, multi or heads) -> Predictor. detector: unset, the one the run's
        training crops were cut with; backend: torch, or onnx for the files export.py wrote; upscale_to: small
        photos (longest side under it) are seen upscaled by the detector, their faces cut from the photo itself."""
        device = distributed.setup(device).device
        groups = find_groups(run_dir, pth_name)
        models = load_backend(backend, groups, device)
        metas = [meta for _, meta in models.values()]
        # found as the training crops were found and cut with their margins, at predict.py's own detection size
        # whole-photo models see a window framed around the face, whichever detector found it
        default = None if any(m.crop == "none" for m in metas) else DEFAULT_DETECTOR
        recipe = replace(eval_crop_recipe(metas, detector or default), detect_size=detect_size or None)
        return cls(det=recipe.create_detector(device),
                   min_score=MIN_SCORE[detector_kind(recipe.detector)] if min_score is None else min_score,
                   recipe=recipe, groups=groups, models=models, tta=tta or run_tta(groups, models),
                   offsets=read_offsets(run_dir) if decision == "fitted" else None, device=device,
                   upscale_to=upscale_to, answer=run_answer(groups, models))

    def predict(self, image):
        """A photo's path or an RGB uint8 array (H, W, 3) -> one dict per face: box (x1, y1, x2, y2),
        score, label, mask/gender/age ids and names, the 18 probabilities (predict.py's JSON rows). A mask-only run
        answers the mask state and its 3 probabilities; label, gender and age are None."""
        img = read_photo(image) if isinstance(image, (str, Path)) else check_array(np.asarray(image))
        faces = self.faces_in(img)
        probs, labels = self.classify([(None, img, faces)])
        return face_rows(faces, probs, labels, self.answer)

    def faces_in(self, img):
        """[(box, score, landmarks or None)] in the photo's pixels of the faces the detector finds at min_score or
        more, in the photo upscaled to upscale_to where it is smaller (small faces are found far more often)."""
        boxes, scores, marks = detect_upscaled(self.det, img, self.upscale_to)
        return [(boxes[i], scores[i], landmarks_of(marks, i)) for i in range(len(boxes)) if scores[i] >= self.min_score]

    def find(self, files):
        """-> [(file, image, [(box, score, landmarks)])] for the readable photos, and the unreadable files."""
        found, unreadable = [], []
        for f in files:
            img = read_rgb(f)
            if img is None:
                print(f"error: {f}: {why_unreadable(f)}, skipped", file=sys.stderr)
                unreadable.append(f)
                continue
            keep = self.faces_in(img)
            if not keep:
                print(f"{f}: no face found", file=sys.stderr)
            found.append((f, img, keep))
        return found, unreadable

    def classify(self, found):
        """Every face of the photos in one pass per model; each face cut as its model was trained (face
        crop or centre-like window) and prepared once per input size -> (probabilities, labels)."""
        crops = [(img, box, self.recipe.landmarks(marks)) for _, img, faces in found for box, _, marks in faces]
        if not crops:
            return np.zeros((0, self.answer.classes)), np.zeros(0, int)
        keys = {m.input_key for _, m in self.models.values()}
        arrays = {k: np.stack([prepare(crop_for_model(im, box, k[1], self.recipe.margin, marks), k[0], "none")
                               for im, box, marks in crops]) for k in keys}
        probs = run_groups(self.groups, arrays, self.models, tta=self.tta, batch_size=32, device=self.device)
        return probs, decide(probs, self.offsets)


def face_rows(faces, probs, labels, answer=FULL):
    """One dict per face: box, score, the answered labels (answer.fields: None where the run does not answer) and
    the probabilities."""
    return [dict(box=[round(float(v), 1) for v in box], score=round(float(score), 4), **answer.fields(label),
                 probs=[round(float(v), 5) for v in p]) for (box, score, _), p, label in zip(faces, probs, labels)]


def read_photo(path):
    """A photo file -> RGB uint8, or one UserError naming it (a folder, a missing file, an unreadable photo)."""
    if Path(path).is_dir():
        raise UserError(f"{path} is a folder: give one photo (predict.py takes folders)")
    if not Path(path).is_file():
        raise UserError(f"{path}: no such photo")
    img = read_rgb(path)
    if img is None:
        raise UserError(f"{path}: {why_unreadable(path)}")
    return img


def check_array(img):
    """An array handed to Predictor.predict: RGB uint8 (H, W, 3) with pixels, within the decode limit."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise UserError(f"expected an RGB uint8 array (H, W, 3), got {img.dtype} {img.shape}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise UserError(f"the image is empty ({img.shape[1]}x{img.shape[0]} pixels)")
    if too_large(img.shape[1::-1]):
        raise UserError(f"the image is too large ({img.shape[1]}x{img.shape[0]}; the limit is {MAX_MEGAPIXELS} "
                        "megapixels): downscale it")
    return np.ascontiguousarray(img)
