"""Public mask datasets with face boxes, whatever their layout: PASCAL-VOC (annotations/*.xml + images/) or YOLO
(images/ + labels/*.txt + data.yaml or classes.txt), read into one row per face.
"""
from __future__ import annotations

from pathlib import Path

from masktk.data.voc import read_voc
from masktk.data.yolo import is_yolo, read_yolo
from masktk.errors import UserError


def box_layout(data_dir):
    """'voc', 'yolo', or None when the folder holds neither layout."""
    d = Path(data_dir)
    return "voc" if (d / "annotations").is_dir() else "yolo" if is_yolo(d) else None


def read_face_boxes(data_dir, log=None):
    """-> DataFrame(photo, stem, face_idx, mask, xmin, ymin, xmax, ymax, size), from either layout."""
    layout = box_layout(data_dir)
    if layout is None:
        raise UserError(f"{data_dir}: no face boxes found: expected PASCAL-VOC (annotations/*.xml and images/) or "
                        "YOLO (images/, labels/*.txt and data.yaml or classes.txt)")
    return (read_voc if layout == "voc" else read_yolo)(data_dir, log)
