"""Photos with face boxes and mask labels only: the PASCAL-VOC layout of public mask datasets (Kaggle's
"Face Mask Detection": <dir>/annotations/*.xml and <dir>/images/<same stem>.png|jpg), and box matching.

numpy and the standard library only: scoring (evaluation.py --boxes) needs neither torch nor OpenCV.
Not a script; used by evaluation.py.
"""
from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd

from utils import UserError

# VOC object names -> mask id (0 wear, 1 incorrect, 2 not wear); the Spanish names are those of the
# MaskON repository's copy of the Kaggle set
VOC_MASK = {"with_mask": 0, "mask_weared_incorrect": 1, "without_mask": 2,
            "con_mascarilla": 0, "mascarilla_mal_puesta": 1, "sin_mascarilla": 2}
PHOTO_EXTS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")


def read_voc(data_dir):
    """-> DataFrame(photo, stem, face_idx, mask, xmin, ymin, xmax, ymax, size): one row per annotated
    face; size is the box's shorter side in pixels."""
    data_dir = Path(data_dir)
    ann = data_dir / "annotations"
    xmls = sorted(ann.glob("*.xml")) if ann.is_dir() else []
    if not xmls:
        raise UserError(f"{data_dir}: no annotations/*.xml; expected the PASCAL-VOC layout (annotations/ with "
                        "one XML per photo, images/ with the photos)")
    rows = []
    for x in xmls:
        try:
            root = ET.parse(x).getroot()
        except ET.ParseError as e:
            raise UserError(f"{x}: not readable XML ({e}); fix or remove it")
        photo = next((data_dir / "images" / (x.stem + e) for e in PHOTO_EXTS
                      if (data_dir / "images" / (x.stem + e)).is_file()), None)
        if photo is None:
            raise UserError(f"{x}: no photo {x.stem}.png/.jpg in {data_dir / 'images'}")
        for i, obj in enumerate(root.iter("object")):
            name = (obj.findtext("name") or "").strip()
            if name not in VOC_MASK:
                raise UserError(f"{x}: object {i} is labelled {name!r}; expected one of {', '.join(VOC_MASK)}")
            try:
                b = [float(obj.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            except (AttributeError, TypeError, ValueError):
                raise UserError(f"{x}: object {i} has no numeric bndbox xmin/ymin/xmax/ymax")
            rows.append(dict(photo=str(photo), stem=x.stem, face_idx=i, mask=VOC_MASK[name], xmin=b[0], ymin=b[1],
                             xmax=b[2], ymax=b[3], size=min(b[2] - b[0], b[3] - b[1])))
    return pd.DataFrame(rows, columns=["photo", "stem", "face_idx", "mask", "xmin", "ymin", "xmax", "ymax", "size"])


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


def split_by_photo(data_dir, out, n_test, seed):
    """Split a VOC-layout folder by photo into <out>/train and <out>/test (symlinks, same layout), so no
    test face is trained on: the protocol of the real-mask benchmark (docs/results.md, Real masks)."""
    data_dir, out = Path(data_dir).resolve(), Path(out)
    photos = read_voc(data_dir).drop_duplicates("stem")[["stem", "photo"]].to_numpy()
    if not 0 < n_test < len(photos):
        raise UserError(f"{data_dir}: {len(photos)} photos; the test split must take between 1 and {len(photos) - 1}")
    test = set(np.random.default_rng(seed).permutation(len(photos))[:n_test])
    for part in ("train", "test"):  # an earlier split into the same folder must not leave photos on both sides
        own = all(f.is_symlink() or f.is_dir() for f in (out / part).rglob("*"))
        if not own:  # a split holds only links: anything else is somebody's data, never deleted
            raise UserError(f"{out / part} holds files that are not links of an earlier split: choose another folder")
        shutil.rmtree(out / part, ignore_errors=True)
    for i, (stem, photo) in enumerate(photos):
        part = out / ("test" if i in test else "train")
        for sub, src in (("images", Path(photo)), ("annotations", data_dir / "annotations" / f"{stem}.xml")):
            (part / sub).mkdir(parents=True, exist_ok=True)
            (part / sub / src.name).symlink_to(src)
    return out
