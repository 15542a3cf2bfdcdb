"""Crop faces with RetinaFace (or MTCNN, OpenCV's SSD, their unions: --detector): batched, resumable.

    python face_image.py                           # demo_data/{train,eval}/images -> .../faces
    python face_image.py --data_root /data         # /data/train and /data/eval
    SM_CHANNEL_TRAIN=/data/train SM_CHANNEL_EVAL=/data/eval python face_image.py

For each split dir holding images/, writes faces/ with the same relative paths and names, plus
faces/boxes.csv (path, x1, y1, x2, y2, score, detected: the face box in full-resolution pixels, or
the centre region when no face was found). Originals are never modified. An interrupted run, started
again, skips finished work and ends with the same files as an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from faces import (DEFAULT_DETECTOR, DEFAULT_MARGIN, DETECT_SIZE, DETECTORS, MARGINS, MTCNN_THRESHOLDS, RETRY_THRESHOLDS,
                   CropRecipe, best_boxes, list_images, record_crop_recipe, write_image)
from images import read_rgb
from labels import MASK_NAMES
from utils import (UserError, add_bool, cli, demo_note, env_default, fraction, load_dotenv_once, make_parser,
                   positive, write_csv_atomic)
from voc import box_iou, match_boxes, read_voc


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


# --- scoring detection against known boxes --------------------------------------------------------
def known_boxes(root):
    """-> DataFrame(photo, group, x1, y1, x2, y2): the true face boxes of a composed dataset
    (synthetic.py --faces writes faces_gt.csv; group = mask state) or of a VOC dataset (group = the
    annotated mask state)."""
    root = Path(root)
    if (root / "faces_gt.csv").is_file():
        gt = pd.read_csv(root / "faces_gt.csv")
        return pd.DataFrame({"photo": [str(root / s / "images" / p) for s, p in zip(gt["split"], gt["path"])],
                             "group": gt["mask"], "x1": gt["x1"], "y1": gt["y1"], "x2": gt["x2"], "y2": gt["y2"]})
    if (root / "annotations").is_dir():
        v = read_voc(root)
        return v.rename(columns={"xmin": "x1", "ymin": "y1", "xmax": "x2", "ymax": "y2", "mask": "group"})[
            ["photo", "group", "x1", "y1", "x2", "y2"]]
    raise UserError(f"{root}: no faces_gt.csv (python synthetic.py --faces ... writes it) and no annotations/ "
                    "(PASCAL-VOC); --score needs known face boxes")


def score_detection(root, detector, min_face=32, min_score=0.9):
    """Recall and precision at IoU >= 0.5 (one-to-one, highest IoU first) and the median IoU of the
    matched faces, by mask state, over every known face of at least min_face px, for the detections
    of score >= min_score (predict.py's default). Precision counts detections of at least min_face / 2
    px (smaller ones would match faces left out); a detection that matches a known face smaller than
    min_face is left out of it too, as neither right nor wrong (street photos annotate many such faces).
    -> dict, with images per second."""
    every = known_boxes(root)
    big = np.minimum(every["x2"] - every["x1"], every["y2"] - every["y1"]) >= min_face
    gt = every[big]
    hits, ious, dets, t0 = np.zeros(len(gt), bool), np.full(len(gt), np.nan), 0, time.perf_counter()
    for photo, faces in gt.groupby("photo", sort=True):
        img = read_rgb(photo)
        if img is None:
            raise UserError(f"{photo}: unreadable photo")
        boxes, scores, _ = detector.detect([img])[0]
        boxes = boxes[scores >= min_score]
        # detector boxes are tighter than annotated ones: half the size still counts for precision
        boxes = boxes[np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= min_face / 2]
        pos, known = gt.index.get_indexer(faces.index), faces[["x1", "y1", "x2", "y2"]].to_numpy()
        iou, matched = box_iou(known, boxes), match_boxes(known, boxes)
        for g, d in matched:
            hits[pos[g]], ious[pos[g]] = True, iou[g, d]
        rest = np.setdiff1d(np.arange(len(boxes)), [d for _, d in matched])
        small = every[(every["photo"] == photo) & ~big][["x1", "y1", "x2", "y2"]].to_numpy()
        dets += len(matched) + len(rest) - len(match_boxes(small, boxes[rest]))
    secs = time.perf_counter() - t0
    groups = {name: gt["group"].to_numpy() == k for k, name in enumerate(MASK_NAMES)}
    out = {name: {"faces": int(m.sum()), "recall": float(hits[m].mean()) if m.any() else None,
                  "median_iou": float(np.nanmedian(ious[m & hits])) if (m & hits).any() else None}
           for name, m in groups.items()}
    return {"faces": len(gt), "recall": float(hits.mean()), "precision": float(hits.sum() / max(dets, hits.sum(), 1)),
            "by_mask": out, "photos": int(gt["photo"].nunique()), "images_per_s": gt["photo"].nunique() / secs}

MARGIN_HELP = "crop margins as fractions of the face box width, each detector boxing a face its own way (unset: " + \
    ", ".join(f"{' '.join(map(str, m))} for {d}" for d, m in {**MARGINS, "the others": DEFAULT_MARGIN}.items()) + ")"


@cli
def main(argv):
    load_dotenv_once()
    ap = make_parser(__doc__)
    ap.add_argument("--data_root", "--data_dir", dest="data_root", default=None, help="root holding train/ and "
                    "eval/ (unset: the SM_CHANNEL_TRAIN / SM_CHANNEL_EVAL dirs when set, else demo_data)")
    ap.add_argument("--batch_size", type=positive(int, 1, inclusive=True), default=32, help="images per MTCNN call")
    ap.add_argument("--detect_size", type=positive(int, 0, inclusive=True), default=DETECT_SIZE,
                    help="longest side seen by MTCNN (0: full; RetinaFace and the SSD keep their own sizes)")
    ap.add_argument("--margin", type=positive(float, 0, inclusive=True), nargs=3, default=None,
                    metavar=("TOP", "SIDES", "BOTTOM"),
                    help=MARGIN_HELP)
    ap.add_argument("--detector", choices=sorted(DETECTORS), default=DEFAULT_DETECTOR,
                    help="retinaface: RetinaFace MobileNet-0.25 (ONNX) at up to 1024 px (finds the most street faces "
                    "of the fast detectors); mtcnn: MTCNN (the earlier default); ssd_mtcnn: OpenCV's SSD, "
                    "then MTCNN where it finds no face (finds the most masked faces); mtcnn_ssd: MTCNN's first pass, "
                    "then the SSD, then MTCNN's second pass; ssd: the SSD alone; union: the SSD and MTCNN's first pass on "
                    "every photo, their faces merged, then MTCNN's second pass (finds many street faces); "
                    "docs/detectors.md")
    ap.add_argument("--thresholds", type=fraction, nargs=3, default=list(MTCNN_THRESHOLDS), metavar=("P", "R", "O"),
                    help="MTCNN stage thresholds; lower finds more masked faces and more false ones")
    add_bool(ap, "--second_pass", True, f"look again with thresholds {' '.join(map(str, RETRY_THRESHOLDS))} in "
             "the photos where no face was found (most are masked faces)")
    add_bool(ap, "--align", False, "turn each crop so the eyes sit level (from the detector's landmarks; the SSD "
             "gives none); recorded in crop.json, so inference and predict.py cut faces the same way")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where MTCNN runs")
    ap.add_argument("--workers", type=positive(int, 1, inclusive=True), default=None, help="decoding threads")
    ap.add_argument("--score", nargs="+", default=None, metavar="ROOT", help="score detection against known face "
                    "boxes (faces_gt.csv of synthetic.py --faces, or PASCAL-VOC annotations/) instead of cropping")
    ap.add_argument("--min_face", type=positive(int, 1, inclusive=True), default=32,
                    help="with --score: smallest face counted (px)")
    ap.add_argument("--min_score", type=fraction, default=0.9, help="with --score: smallest detection score kept "
                    "(predict.py's)")
    args = ap.parse_args(argv)
    recipe = CropRecipe(args.detector, args.detect_size or None, tuple(args.thresholds), args.second_pass,
                        tuple(args.margin) if args.margin else None, args.align)
    det = recipe.create_detector(args.device)
    if args.score:
        for root in args.score:
            print(json.dumps({"data": str(root), "detector": args.detector, "detect_size": args.detect_size,
                              "second_pass": args.second_pass, **score_detection(root, det, args.min_face, args.min_score)}))
        return
    if args.data_root:
        splits = [Path(args.data_root) / s for s in ("train", "eval") if (Path(args.data_root) / s / "images").is_dir()]
    else:
        envs = [env_default("SM_CHANNEL_TRAIN"), env_default("SM_CHANNEL_EVAL")]
        splits = [Path(p) for p in envs if p]
        if not splits:
            demo_note("demo_data", "demo_data", "SM_CHANNEL_TRAIN", ("--data_root", "--data_dir"), argv)
            splits = [Path("demo_data") / s for s in ("train", "eval")]
    splits = [s for s in splits if (s / "images").is_dir()]
    if not splits:
        raise UserError(f"no images/ folder found under {args.data_root or 'demo_data'}: pass --data_root ROOT "
                        "holding train/images and eval/images (python synthetic.py makes a demo one)")
    tot = [0, 0, 0, 0]
    for s in splits:
        r = crop_split(s, recipe, det, args.batch_size, args.workers)
        tot = [a + b for a, b in zip(tot, r)]
        print(f"{s}: {r[0]} images, {r[1]} faces found, {r[2]} fallbacks -> {s / 'faces'}")
    print(f"{tot[0]} images, {tot[1]} faces found, {tot[2]} fallbacks" + (f", {tot[3]} unreadable" if tot[3] else ""))


if __name__ == "__main__":
    main()
