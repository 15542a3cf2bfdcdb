"""Photos with face boxes and mask labels only: the PASCAL-VOC layout of public mask datasets (Kaggle's
Face Mask Detection), read into one row per face (faces with an odd label or box warned about and skipped), and
split by photo.
"""
from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd

from masktk.errors import Log, UserError
from masktk.labels import mask_of_name

PHOTO_EXTS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")
FACE_COLUMNS = ["photo", "stem", "face_idx", "mask", "xmin", "ymin", "xmax", "ymax", "size"]


def read_voc(data_dir, log=None):
    """-> DataFrame(photo, stem, face_idx, mask, xmin, ymin, xmax, ymax, size): one row per annotated
    face; size is the box's shorter side in pixels. A photo missing, an unknown class name or a box
    outside its photo is one warning naming it, counted in `log` (a box partly outside is clipped)."""
    data_dir, log = Path(data_dir), log or Log()
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
            log.warn("unreadable annotation", f"{x}: not readable XML ({e}), skipped")
            continue
        photo = find_photo(data_dir / "images", x.stem)
        if photo is None:
            log.warn("missing photo", f"{x}: no photo {x.stem}.png/.jpg in {data_dir / 'images'}, skipped")
            continue
        size = _voc_size(root) or photo_size(photo)
        for i, obj in enumerate(root.iter("object")):
            box = _voc_box(obj)
            rows += face_row(photo, x.stem, i, obj.findtext("name"), box, size, f"{x}: object {i}", log)
    return pd.DataFrame(rows, columns=FACE_COLUMNS)


def find_photo(images_dir, rel):
    """images_dir/rel.<a photo extension>, or None: annotations name their photo without its extension."""
    return next((images_dir / (rel + e) for e in PHOTO_EXTS if (images_dir / (rel + e)).is_file()), None)


def _voc_size(root):
    try:
        w, h = (int(float(root.find("size").findtext(k))) for k in ("width", "height"))
        return (w, h) if w > 0 and h > 0 else None
    except (AttributeError, TypeError, ValueError):
        return None


def _voc_box(obj):
    try:
        return [float(obj.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
    except (AttributeError, TypeError, ValueError):
        return None


def photo_size(photo):
    """(width, height) from the photo's header, or None when it cannot be read."""
    from masktk.images import header_size
    try:
        return header_size(photo)
    except Exception:
        return None


def face_row(photo, stem, i, name, box, size, where, log):
    """[one face row], or [] with a warning naming `where`: unknown class, no box, a box outside the photo."""
    mask = mask_of_name(name or "")
    if mask is None:
        log.warn("unknown class", f"{where} is labelled {name!r}, not a mask state (e.g. with_mask, "
                 "mask_weared_incorrect, without_mask), skipped")
        return []
    if box is None or not all(np.isfinite(box)):
        log.warn("bad box", f"{where} has no numeric box, skipped")
        return []
    x1, y1, x2, y2 = box
    if size is not None:
        w, h = size
        x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)
    if x2 - x1 < 1 or y2 - y1 < 1:
        log.warn("box outside the photo", f"{where}: box {box} lies outside its {size[0]}x{size[1]} photo or is "
                 "empty, skipped" if size else f"{where}: box {box} is empty, skipped")
        return []
    return [dict(photo=str(photo), stem=stem, face_idx=i, mask=mask, xmin=x1, ymin=y1, xmax=x2, ymax=y2,
                 size=min(x2 - x1, y2 - y1))]


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
