"""Photos with face boxes and mask labels only: the PASCAL-VOC layout of public mask datasets (Kaggle's
Face Mask Detection), read into one row per face, and split by photo.
"""
from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd

from masktk.errors import UserError

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
