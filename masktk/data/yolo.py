"""Photos with face boxes and mask labels in YOLO's layout: images/ and labels/ side by side (the same relative
paths, one `class cx cy w h` line per face, fractions of the photo), the class names in data.yaml (`names:`) or
classes.txt. Read into the rows read_voc gives, so every consumer takes either layout.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from masktk.data.voc import FACE_COLUMNS, face_row, find_photo, photo_size
from masktk.errors import Log, UserError


def is_yolo(data_dir):
    d = Path(data_dir)
    return (d / "labels").is_dir() and (d / "images").is_dir()


def class_names(data_dir):
    """The dataset's class names by id: data.yaml's `names` (a list, or a map of id -> name), else classes.txt."""
    d = Path(data_dir)
    for yaml_file in (d / "data.yaml", d / "dataset.yaml"):
        if yaml_file.is_file():
            import yaml
            try:
                names = (yaml.safe_load(yaml_file.read_text()) or {}).get("names")
            except (yaml.YAMLError, AttributeError) as e:
                raise UserError(f"{yaml_file}: not readable YAML with a names: entry ({type(e).__name__})")
            if isinstance(names, dict):
                return {int(k): str(v) for k, v in names.items()}
            if isinstance(names, list):
                return dict(enumerate(map(str, names)))
            raise UserError(f"{yaml_file}: no names: list of class names")
    if (d / "classes.txt").is_file():
        return dict(enumerate(line.strip() for line in (d / "classes.txt").read_text().splitlines() if line.strip()))
    raise UserError(f"{d}: a YOLO folder needs its class names: data.yaml (names: [with_mask, ...]) or classes.txt")


def read_yolo(data_dir, log=None):
    """-> DataFrame(photo, stem, face_idx, mask, xmin, ymin, xmax, ymax, size) in pixels, one row per labelled
    face; odd lines, unknown classes, boxes outside the photo and label files without a photo are warned about,
    counted in `log` and skipped."""
    d, log = Path(data_dir), log or Log()
    names = class_names(d)
    labels = sorted((d / "labels").rglob("*.txt"))
    if not labels:
        raise UserError(f"{d / 'labels'}: no .txt label files (YOLO: one per photo, `class cx cy w h` per face)")
    rows = []
    for f in labels:
        rel = f.relative_to(d / "labels").with_suffix("")
        photo = find_photo(d / "images", rel.as_posix())
        size = photo_size(photo) if photo is not None else None
        if size is None:
            log.warn("missing photo", f"{f}: no readable photo images/{rel}.png/.jpg, skipped")
            continue
        w, h = size
        for i, line in enumerate(x for x in f.read_text().splitlines() if x.strip()):
            parts = line.split()
            try:
                k, cx, cy, bw, bh = int(parts[0]), *map(float, parts[1:5])
            except (ValueError, IndexError):
                log.warn("bad box", f"{f}: line {i + 1} is not `class cx cy w h`, skipped")
                continue
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
            box = box if np.isfinite(box).all() else None
            rows += face_row(photo, photo.stem, i, names.get(k, f"class {k}"), box, size, f"{f}: line {i + 1}", log)
    return pd.DataFrame(rows, columns=FACE_COLUMNS)
