"""A split's images/ cut into faces/ (boxes.csv and crop.json beside the crops): batched, resumable, the
same files as an uninterrupted run.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from masktk.errors import UserError
from masktk.faces.crop import CropRecipe, best_boxes, record_crop_recipe
from masktk.files import write_csv_atomic
from masktk.images import list_images, read_rgb, write_image


def crop_split(split_dir, recipe=CropRecipe(), detector=None, batch_size=32, workers=None, progress=True):
    """images/ -> faces/, faces/boxes.csv and faces/crop.json for one split dir, cut by recipe (detector:
    the recipe's, made once by the caller for several splits). -> (n images, faces found, fallbacks, bad)."""
    from tqdm import tqdm
    src, dst = Path(split_dir) / "images", Path(split_dir) / "faces"
    if not src.is_dir():
        raise UserError(f"{src} not found: each split dir must hold images/")
    rels = list_images(src)
    dst.mkdir(parents=True, exist_ok=True)
    record_crop_recipe(dst, recipe)
    detector = detector or recipe.create_detector()
    for stale in dst.rglob(".tmp-*"):  # left by an interrupted run
        stale.unlink()
    partial = dst / ".boxes.partial.csv"
    done = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            parts = line.split(",")
            if len(parts) == 7 and (dst / parts[0]).is_file():
                done[parts[0]] = line
    # fixed chunks of the sorted list: a resumed run recomputes whole chunks exactly as a fresh one would
    chunks = [rels[i:i + batch_size] for i in range(0, len(rels), batch_size)]
    todo = [c for c in chunks if not all(r in done for r in c)]
    bad = []
    with ThreadPoolExecutor(workers or os.cpu_count()) as ex, open(partial, "a") as log:
        decoded = ex.map(lambda c: [read_rgb(src / r) for r in c], todo)  # decodes ahead of detection
        for chunk, imgs in tqdm(zip(todo, decoded), total=len(todo), desc=f"faces {Path(split_dir).name}",
                                disable=None if progress else True, file=sys.stderr):
            good = [(r, im) for r, im in zip(chunk, imgs) if im is not None]
            bad += [r for r, im in zip(chunk, imgs) if im is None]
            results = best_boxes(detector, [im for _, im in good]) if good else []
            for (rel, im), (box, score, found, marks) in zip(good, results):
                write_image(dst / rel, recipe.cut(im, box, found, marks))
                line = f"{rel},{box[0]:.2f},{box[1]:.2f},{box[2]:.2f},{box[3]:.2f},{score:.5f},{int(found)}"
                done[rel] = line
                log.write(line + "\n")
            log.flush()
    for r in bad:
        print(f"warning: {src / r}: unreadable image, no face crop written", file=sys.stderr)
    rows = [done[r].split(",") for r in rels if r in done]
    df = pd.DataFrame(rows, columns=["path", "x1", "y1", "x2", "y2", "score", "detected"])
    write_csv_atomic(df, dst / "boxes.csv")
    partial.unlink()
    found = int((df["detected"] == "1").sum())
    return len(rels), found, len(df) - found, len(bad)
