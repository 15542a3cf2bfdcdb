"""Writing drawn faces as the public mask sets lay them out: PASCAL-VOC (annotations/*.xml + images/), YOLO
(images/ + labels/*.txt + data.yaml) or a folder per class (with_mask/, incorrect_mask/, without_mask/ of face
crops), so that training on such a set is tested without downloading one.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from masktk.data.write_layout import move_into_place
from masktk.errors import UserError
from masktk.files import temp_dir_beside

MASK_SET_LAYOUTS = ("voc", "yolo", "folders")


# the names the Kaggle set uses (VOC, YOLO) and the folder names of folder-per-class sets, by mask id
VOC_NAMES = ("with_mask", "mask_weared_incorrect", "without_mask")


FOLDER_NAMES = ("with_mask", "incorrect_mask", "without_mask")


SCENE_FACES = 3  # faces per street-like photo of a box set, each a drawn photo at half size


def write_mask_set(faces, out, layout):
    """faces: [(jpeg bytes, face box, mask id)] -> a mask set in `layout` at `out` (replaced whole, as
    write_dataset replaces its folder). -> (photos, faces) written."""
    if layout not in MASK_SET_LAYOUTS:
        raise UserError(f"--layout {layout}: one of competition, {', '.join(MASK_SET_LAYOUTS)}")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(out)
    if layout == "folders":
        photos = _write_folders(faces, tmp)
    else:
        photos = _write_scenes(faces, tmp, layout)
    move_into_place(tmp, out)
    return photos, len(faces)


def _write_folders(faces, root):
    """Each face cut with a margin of a fifth of its box, in its class's folder."""
    for k, (data, box, mask) in enumerate(faces):
        img = Image.open(io.BytesIO(data))
        x1, y1, x2, y2 = box
        mx, my = 0.2 * (x2 - x1), 0.2 * (y2 - y1)
        crop = img.crop((max(0, round(x1 - mx)), max(0, round(y1 - my)), min(img.width, round(x2 + mx)),
                         min(img.height, round(y2 + my))))
        path = root / FOLDER_NAMES[mask] / f"face{k:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        crop.save(path, "JPEG", quality=92)
    return len(faces)


def _write_scenes(faces, root, layout):
    """SCENE_FACES faces a photo, side by side at half size, with their boxes in VOC's or YOLO's files."""
    (root / "images").mkdir(parents=True)
    (root / ("annotations" if layout == "voc" else "labels")).mkdir()
    if layout == "yolo":
        (root / "data.yaml").write_text("names: [" + ", ".join(VOC_NAMES) + "]\n")
    n = 0
    for n, start in enumerate(range(0, len(faces), SCENE_FACES)):
        part = faces[start:start + SCENE_FACES]
        tiles = [Image.open(io.BytesIO(d)).convert("RGB") for d, _, _ in part]
        tw, th = tiles[0].width // 2, tiles[0].height // 2
        scene = Image.new("RGB", (tw * len(tiles), th))
        boxes = []
        for k, (tile, (_, box, mask)) in enumerate(zip(tiles, part)):
            scene.paste(tile.resize((tw, th), Image.BILINEAR), (k * tw, 0))
            b = np.asarray(box) / 2 + [k * tw, 0, k * tw, 0]
            boxes.append((mask, np.clip(b, 0, [scene.width, th] * 2)))
        stem = f"scene{n:05d}"
        scene.save(root / "images" / f"{stem}.jpg", "JPEG", quality=92)
        if layout == "voc":
            (root / "annotations" / f"{stem}.xml").write_text(_voc_xml(stem, scene.size, boxes))
        else:
            w, h = scene.size
            (root / "labels" / f"{stem}.txt").write_text("".join(
                f"{m} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} {(b[2] - b[0]) / w:.6f} "
                f"{(b[3] - b[1]) / h:.6f}\n" for m, b in boxes))
    return n + 1


def _voc_xml(stem, size, boxes):
    objs = "".join(f"<object><name>{VOC_NAMES[m]}</name><bndbox><xmin>{round(b[0])}</xmin><ymin>{round(b[1])}</ymin>"
                   f"<xmax>{round(b[2])}</xmax><ymax>{round(b[3])}</ymax></bndbox></object>" for m, b in boxes)
    return (f"<annotation><filename>{stem}.jpg</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
            f"<depth>3</depth></size>{objs}</annotation>\n")
