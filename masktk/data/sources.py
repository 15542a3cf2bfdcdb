"""Which photos a run trains on, in one place: the competition layout (images/ or faces/), extra datasets
(full labels or mask status only) and pseudo-labels, joined into one label table over one decoded cache.
"""
from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from masktk import distributed
from masktk.data.cache import cached_images
from masktk.data.face_boxes import box_layout, read_face_boxes
from masktk.data.table import DEFAULT_FIXES, build_table, has_faces, read_eval
from masktk.distributed import log_main
from masktk.errors import UserError
from masktk.faces.boxes import match_boxes
from masktk.faces.crop import DEFAULT_MARGIN, CropRecipe, crop_for_model, read_crop_recipe, select_face
from masktk.faces.detectors import detect_upscaled
from masktk.files import write_csv_atomic
from masktk.images import list_images, read_rgb, write_image
from masktk.labels import AGE_MIN, age_class, decode, encode, mask_of_name

PSEUDO_YEARS = (24, 45, 60)  # an age in years for each predicted band


# --- data ----------------------------------------------------------------------------------------
def resolve_source(data_dir, source):
    if source == "auto":
        return "faces" if has_faces(data_dir) else "images"
    return source


def training_crop_recipe(cfg):
    """The recipe face_image.py cut the training faces/ with, as a dict for the checkpoints (inference and
    predict.py cut eval photos by it); None for whole photos and for crops cut before recipes were kept."""
    d = Path(cfg.train_dir)
    if mask_only_main(cfg):  # its faces are cut as the default detector's recipe cuts them, at prediction too
        return CropRecipe().to_dict()
    recipe = read_crop_recipe(d / "faces") if resolve_source(d, cfg.source) == "faces" else None
    return recipe.to_dict() if recipe else None


def refuse_shared_photos(table):
    """Extra data holding photos of --train_dir (the same folder, a link to it, folders linked from it)
    would put their people on both sides of every split: trained on and validated on at once, so the
    validation F1 and the epoch it picks would flatter the run."""
    main = {os.path.realpath(f) for f in table.loc[~table["extra"], "file"]}
    shared = [f for f in table.loc[table["extra"], "file"] if os.path.realpath(f) in main]
    if shared:
        raise UserError(f"{shared[0]} (and {len(shared) - 1} more) given as --extra_data is a photo of --train_dir "
                        "too: its people would be trained on and validated on at once; leave it out of --extra_data")


def load_data(cfg, log, decode_on="cpu"):
    """Label table of the main dataset (+ extra datasets) and the decoded-image cache over all of it,
    decoded on `decode_on` (the run's CUDA device with --gpu_decode)."""
    tables = []
    fixes = cfg.fixes or str(DEFAULT_FIXES)
    cache_dir = Path(cfg.cache_dir or Path(cfg.model_dir) / ".cache")
    faces = mask_only_main(cfg) or resolve_source(Path(cfg.train_dir), cfg.source) == "faces"
    main_crop = "none" if faces else "center"
    for i, d in enumerate([cfg.train_dir] + list(cfg.extra_data)):
        d = Path(d)
        if not d.is_dir():
            raise UserError(f"{d} is not a directory: set SM_CHANNEL_TRAIN / --train_dir / --extra_data to a "
                            "training dir holding train.csv and images/, or a mask set (VOC, YOLO, a folder per "
                            "class) (python synthetic.py makes a demo one)")
        if mask_only_layout(d):
            tables.append(mask_only_table(d, i, main_crop, cfg, cache_dir, log))
            continue
        t = build_table(d, tuple(cfg.age_bounds), fixes, cfg.max_bad, log)
        source = resolve_source(d, cfg.source)
        if source == "faces":
            t["path"] = t["path"].str.replace("images/", "faces/", n=1, regex=False)
            missing = [p for p in t["path"] if not (d / p).is_file()]
            if missing:
                raise UserError(f"{d / missing[0]} (and {len(missing) - 1} more) not found: run "
                                f"'python face_image.py --data_root {d.parent}' or pass --source images")
        t["file"] = [str(d / p) for p in t["path"]]
        t["crop"] = "none" if source == "faces" else "center"
        t["extra"], t["full"] = i > 0, True
        if i > 0:
            t["people_path"] = f"extra{i}:" + t["people_path"]
        tables.append(t)
    if cfg.pseudo:
        tables.append(pseudo_table(cfg, main_crop, log))
    table = pd.concat(tables, ignore_index=True)
    refuse_shared_photos(table)
    # labels for training use the training bounds; validation is always scored with the official ones
    table["label_official"] = encode(table["mask"], table["gender"], age_class(table["age_years"]))
    if not table["full"].all() and cfg.cutmix + cfg.mixup > 0:
        raise UserError("--extra_data with mask-only labels cannot be mixed by --cutmix/--mixup (a mixed photo would "
                        "have half a label); turn those off or leave the mask-only data out")

    def build():  # rank 0 decodes every image once; the other ranks then map the files it wrote
        return {crop: cached_images(part["file"].tolist(), [(tuple(cfg.img_size), crop)], cache_dir, log,
                                    device=decode_on)[(tuple(cfg.img_size), crop)]
                for crop, part in table.groupby("crop", sort=True)}
    caches = distributed.rank0_first(build)
    images, ok = _join_caches(table, caches)
    table["cache_row"] = np.arange(len(table))
    bad = int((~ok).sum())
    if bad / len(ok) > cfg.max_bad:
        raise UserError(f"{cfg.train_dir}: {bad} of {len(ok)} images cannot be decoded; fix them or raise --max_bad")
    table = table[ok].reset_index(drop=True)
    log.summary()
    mb = sum(c.nbytes for c in caches.values()) / 2**20
    log_main(f"data: {len(table)} images of {table['people_path'].nunique()} people "
             f"({int(table['extra'].sum())} extra images); image cache {mb:.0f} MiB "
             f"({len(table)} x {cfg.img_size[0]} x {cfg.img_size[1]} x 3 bytes)")
    return table, images


def mask_only_main(cfg):
    """True when --train_dir is a mask set (VOC, YOLO, a folder per class): the run learns the mask state alone."""
    return Path(cfg.train_dir).is_dir() and mask_only_layout(cfg.train_dir) is not None


def mask_only_table(d, i, main_crop, cfg, cache_dir, log):
    """Rows for a dataset labelled with mask status only (mask_only_layout): one face crop per labelled face, cut
    once into the cache by rank 0. Gender and age are unknown (full = False: no loss for them). Each photo is a
    person for the splits (its faces stay on one side); as extra data (i > 0) always on the training side."""
    key = hashlib.sha1(f"{d.resolve()}|{main_crop}|{cfg.extra_min_face}|{cfg.mask_boxes}|3".encode()).hexdigest()[:16]
    faces = distributed.rank0_first(lambda: mask_only_faces(d, main_crop, cfg.extra_min_face,
                                                            cache_dir / "mask_only" / key, log, cfg.mask_boxes))
    where = f"extra{i}" if i else "photo"
    t = pd.DataFrame({"path": faces["file"], "file": faces["file"], "mask": faces["mask"], "gender": 0, "age": 0,
                      "age_years": AGE_MIN, "people_path": [f"{where}:{p}" for p in faces["photo"]]})
    t["label"] = encode(t["mask"], 0, 0)
    t["crop"], t["extra"], t["full"] = "none", i > 0, False
    log_main(f"{d}: {len(t)} faces labelled with mask status only ({int(faces['found'].sum())} boxes given or found, "
             f"{int(faces['detected'].sum())} of them the detector's)")
    return t


def pseudo_table(cfg, main_crop, log):
    """Eval photos whose predicted top probability is at least --pseudo_threshold, labelled by that
    prediction: training rows only, each photo its own person. Their age in years is the middle of the
    predicted band (for a years head)."""
    path, eval_dir = Path(cfg.pseudo), Path(cfg.pseudo_data)
    try:
        probs = np.load(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a probabilities file ({type(e).__name__}); --pseudo takes inference.py's "
                        "<output_name>_probs.npy")
    source = "faces" if main_crop == "none" else "images"
    if source == "faces" and not has_faces(eval_dir):
        raise UserError(f"{eval_dir / 'faces'} not found: the model trains on face crops; run python face_image.py "
                        f"for {eval_dir} first")
    info, paths = read_eval(eval_dir, source)
    if probs.ndim != 2 or probs.shape != (len(info), 18):
        raise UserError(f"{path}: shape {probs.shape}, expected ({len(info)}, 18) for the {len(info)} photos of "
                        f"{eval_dir / 'info.csv'}; pass the eval dir it was predicted for with --pseudo_data")
    keep = probs.max(1) >= cfg.pseudo_threshold
    mask, gender, band = decode(probs.argmax(1)[keep])
    years = np.asarray(PSEUDO_YEARS)[band]
    t = pd.DataFrame({"path": [str(p) for p, k in zip(paths, keep) if k], "mask": mask, "gender": gender,
                      "age_years": years, "people_path": [f"pseudo:{x}" for x in info["ImageID"][keep]]})
    t["file"], t["age"] = t["path"], age_class(years, tuple(cfg.age_bounds))
    t["label"] = encode(t["mask"], t["gender"], t["age"])
    t["crop"], t["extra"], t["full"] = main_crop, True, True
    # a label-smoothed model rarely reaches 0.9 (smoothing caps its targets near 0.9): say how high it got
    log_main(f"pseudo-labels: {int(keep.sum())} of {len(info)} eval photos at probability >= {cfg.pseudo_threshold} "
             f"(highest {probs.max():.3f})")
    return t


def _join_caches(table, caches):
    if len(caches) == 1:  # the usual case: the memory-mapped file itself, shared by workers
        (c,) = caches.values()
        return c, c.ok
    parts, ok = [], []
    for crop, part in table.groupby("crop", sort=True):
        parts.append(np.asarray(caches[crop].array))
        ok.append(caches[crop].ok)
    order = np.concatenate([g.index.to_numpy() for _, g in table.groupby("crop", sort=True)])
    arr, okk = np.empty((len(table),) + parts[0].shape[1:], np.uint8), np.empty(len(table), bool)
    arr[order], okk[order] = np.concatenate(parts), np.concatenate(ok)
    return arr, okk


def resolve_data_dir(cfg):
    """SM_CHANNEL_TRAIN may name a train root, or (as the original's did) its images/ or faces/ folder."""
    d = Path(cfg.train_dir)
    if d.name in ("images", "faces") and not (d / "train.csv").is_file() and (d.parent / "train.csv").is_file():
        source = d.name if cfg.source == "auto" else cfg.source
        log_main(f"data: {d} is the {d.name}/ folder of {d.parent}: training on {d.parent} with --source {source}")
        return replace(cfg, train_dir=str(d.parent), source=source)
    return cfg


# --- photos labelled with mask status only (a mask set) -----------------------------------------
def mask_folders(data_dir):
    """{folder: mask id} of a folder-per-class set: the subfolders named by a mask state (with_mask/,
    incorrect_mask/, without_mask/, or the other names public sets use: labels.MASK_SET_NAMES)."""
    d = Path(data_dir)
    found = {p.name: mask_of_name(p.name) for p in d.iterdir() if p.is_dir()} if d.is_dir() else {}
    return {name: m for name, m in sorted(found.items()) if m is not None}


def mask_only_layout(data_dir):
    """'boxes' (PASCAL-VOC: annotations/*.xml + images/, or YOLO: images/ + labels/), 'folders' (with_mask/,
    incorrect_mask/, without_mask/ of photos or face crops), or None (the competition layout)."""
    if box_layout(data_dir):
        return "boxes"
    if mask_folders(data_dir) and not (Path(data_dir) / "train.csv").is_file():
        return "folders"
    return None


def _labelled_faces(data_dir, layout, min_face, log=None):
    """-> [(photo path, face box or None (find it), mask id)]."""
    d = Path(data_dir)
    if layout == "boxes":
        faces = read_face_boxes(d, log)
        faces = faces[faces["size"] >= min_face]
        return [(r.photo, (r.xmin, r.ymin, r.xmax, r.ymax), r.mask) for r in faces.itertuples()]
    return [(str(d / name / rel), None, mask) for name, mask in mask_folders(d).items()
            for rel in list_images(d / name)]


# an annotated face takes the detector's box where one overlaps it this much (their median IoU on Kaggle is 0.665)
MATCH_IOU = 0.4


def mask_only_faces(data_dir, crop, min_face, out_dir, log=None, boxes="annotated"):
    """One crop per labelled face of a mask-only dataset, cut by the shared crop function as the main
    model sees faces (crop 'none': the face crop; 'center': the centre-like window), written once as
    PNG under out_dir with faces.csv (file, mask, found, detected, photo). 'boxes': the annotated faces of at least
    min_face px, cut as _face_cuts says; 'folders': the most plausible face the default detector finds in each
    photo, with its margins, else the whole photo (most such photos are face crops already).
    -> DataFrame(file, mask, found, detected, photo)."""
    out_dir = Path(out_dir)
    if (out_dir / "faces.csv").is_file():
        return pd.read_csv(out_dir / "faces.csv")
    layout = mask_only_layout(data_dir)
    recipe = CropRecipe()
    detector = recipe.create_detector() if layout == "folders" or boxes == "detected" else None
    rows = []
    for photo, faces in itertools.groupby(_labelled_faces(data_dir, layout, min_face, log), key=lambda f: f[0]):
        faces = list(faces)
        img = read_rgb(photo)
        if img is None:
            if log:
                log.warn("unreadable image", f"{photo}: unreadable, skipped")
            continue
        for (box, margin, found, detected), (_, _, mask) in zip(_face_cuts(img, faces, detector, recipe), faces):
            file = out_dir / f"{len(rows):06d}.png"
            write_image(file, crop_for_model(img, box, crop, margin))
            rows.append(dict(file=str(file), mask=int(mask), found=found, detected=detected,
                             photo=os.path.relpath(photo, data_dir)))
    if not rows:
        raise UserError(f"{data_dir}: no labelled face to train on (faces smaller than --extra_min_face {min_face} px "
                        "are left out)")
    table = pd.DataFrame(rows)
    write_csv_atomic(table, out_dir / "faces.csv")  # written last: its presence marks the crops complete
    return table


def _face_cuts(img, faces, detector, recipe):
    """-> [(box, margin, found, detected)] for a photo's labelled faces. A folder's photo: its most plausible face
    as the detector finds it (the whole photo when none). Annotated faces: their own box with DEFAULT_MARGIN, or,
    given a detector, the detection overlapping it (IoU >= MATCH_IOU) with the recipe's margins, as prediction
    cuts faces (in the photo upscaled as predict.py sees it)."""
    h, w = img.shape[:2]
    if faces[0][1] is None:
        found, scores, _ = detector.detect([img])[0]
        k = select_face(found, scores, w, h)
        return [(tuple(found[k]), recipe.margin, True, True) if k is not None else ((0, 0, w, h), recipe.margin,
                                                                                    False, False)]
    cuts = [(box, DEFAULT_MARGIN, True, False) for _, box, _ in faces]
    if detector is None:
        return cuts
    found = detect_upscaled(detector, img)[0]
    for g, k in match_boxes(np.asarray([box for _, box, _ in faces], float), found, MATCH_IOU):
        cuts[g] = (tuple(found[k]), recipe.margin, True, True)
    return cuts
