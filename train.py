"""Train mask/gender/age classifiers: single split, stratified k-fold CV, multi-task; one loop for all.

    SM_CHANNEL_TRAIN=demo_data/train SM_MODEL_DIR=model python train.py            # holdout split
    python train.py --cv True                  # 5-fold CV by person, oof.csv + CV macro F1
    python train.py --cv True --fold 2 --run_dir model/cv1   # one fold (run folds in parallel)
    python train.py --merge model/cv1          # merge the folds' out-of-fold predictions
    python train.py --multi=True               # three models: mask, gender, age
    python train.py --heads                    # one backbone, three heads
    python train.py --resume model/exp3        # continue an interrupted run
    torchrun --standalone --nproc_per_node=2 train.py ...   # DistributedDataParallel

Env vars (also read from .env): SM_CHANNEL_TRAIN (training dir with train.csv and images/ or
faces/), SM_MODEL_DIR (where run folders go). Flags override them. Each run writes
<model_dir>/<name>[N]/ with config.json, best.pth, last.pth, metrics.json, valid_preds.csv and
TensorBoard logs in tb/ (CV: fold<i>/ each, plus oof.csv and cv.json; multi: mask/ gender/ age/).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import distributed
from augment import AUG_PRESETS, BatchTransform
from cache import ImageCache, cached_images
from dataset import Log, build_table, has_faces, read_eval
from labels import OFFICIAL_AGE_BOUNDS, TASKS, YEARS, age_class, decode, encode, loss_targets, task_targets
from loaders import BatchDataset, make_loader, to_device
from splits import holdout_split, kfold_split, people_of
from decision import DECISION_FILE, fit_decision, write_decision
from evaluation import confusion_figure, macro_f1, score
from face_image import mask_only_faces, mask_only_layout, read_crop_recipe
from labels import AGE_MIN, band_spread
from loss import LOSSES, create_loss, mask_marginal_loss, years_loss
from model import (DEFAULT_TTA, TTA_VIEWS, Precision, choose_precision, combine_probs, create_model, joint_marginal,
                   load_checkpoint, save_checkpoint, soft_age_marginal, split_heads, task_probs, view_average)
from optimizer import OPTIMIZERS, SCHEDULERS, create_optimizer, create_scheduler, top_lr
from utils import (Rising, UserError, add_bool, cli, demo_note, env_default, fraction, increment_dir, load_dotenv_once,
                   make_parser, positive, refuse, seed_everything, str2bool, writable_dir, write_csv_atomic,
                   write_json_atomic)

MULTI_TASKS = ("mask", "gender", "age")
PSEUDO_YEARS = (24, 45, 60)  # an age in years for each predicted band
DEMO_TRAIN = "demo_data/train"


# the original scripts' names for what these flags take
LOSS_ALIASES = {"symmetric": "symmetric_ce"}  # the other original names are ours too
AUGMENT_ALIASES = {"baseaugmentation": "none", "customaugmentation": "basic"}


def loss_name(v):
    return LOSS_ALIASES.get(v.lower(), v.lower())


def augment_name(v):
    return AUGMENT_ALIASES.get(v.lower(), v.lower())


def multi_mode(v):
    """--multi True|False, or the original's 0|1|2 (2: three models with CV)."""
    return "cv" if str(v).strip() == "2" else str2bool(v)


def build_parser():
    ap = make_parser(__doc__)
    pos, count = positive(float), positive(int, 1, inclusive=True)
    g = ap.add_argument_group("data")
    g.add_argument("--data_dir", default=env_default("SM_CHANNEL_TRAIN", DEMO_TRAIN),
                   help="training dir holding train.csv (its images/ or faces/ folder also works; env SM_CHANNEL_TRAIN)")
    g.add_argument("--model_dir", default=env_default("SM_MODEL_DIR", "model"), help="runs go here (env SM_MODEL_DIR)")
    g.add_argument("--name", default="exp", help="run folder name, auto-incremented: exp, exp2, ...")
    g.add_argument("--run_dir", default=None, help="exact run folder (reused: for fold jobs sharing one run)")
    g.add_argument("--source", choices=("auto", "images", "faces"), default="auto",
                   help="faces/ (face_image.py crops) or images/ (centre crop); auto: faces/ when present")
    g.add_argument("--img_size", "--resize", type=positive(int, 16, inclusive=True), nargs=2, default=[224, 224],
                   metavar=("H", "W"))
    g.add_argument("--age_bounds", type=positive(int, 1, inclusive=True), nargs=2, action=Rising,
                   default=list(OFFICIAL_AGE_BOUNDS), metavar=("LOW", "HIGH"),
                   help="age classes for training labels; validation always uses 30 60")
    g.add_argument("--extra_data", nargs="*", default=[], help="other training dirs in the same layout: added to "
                   "the training side of every split, never validated on")
    g.add_argument("--extra_min_face", type=positive(int, 1, inclusive=True), default=32,
                   help="mask-only extra data with boxes: smallest face used (shorter side, px)")
    g.add_argument("--mask_only_weight", type=positive(float, 0, inclusive=True), default=1.0,
                   help="loss weight of photos labelled with mask status only (1.0 measured best of 0.5, 1, 2 "
                   "on real masks: README)")
    g.add_argument("--pseudo", default=None, metavar="PROBS_NPY",
                   help="pseudo-labels: inference.py's <name>_probs.npy for the eval set in --pseudo_data; photos it "
                   "is confident about are added to training (never validated on)")
    g.add_argument("--pseudo_data", default=env_default("SM_CHANNEL_EVAL", "demo_data/eval"),
                   help="the eval dir those probabilities are for (env SM_CHANNEL_EVAL)")
    g.add_argument("--pseudo_threshold", type=fraction, default=0.9,
                   help="smallest top probability for a pseudo-label")
    g.add_argument("--fixes", default=None, help="label fixes CSV (default: the repo's label_fixes.csv)")
    g.add_argument("--max_bad", type=fraction, default=0.01, help="fail when more than this share of images is bad")
    g.add_argument("--cache_dir", default=None, help="decoded-image cache (default <model_dir>/.cache)")
    g = ap.add_argument_group("mode")
    add_bool(g, "--cv", False, "stratified k-fold CV by person")
    g.add_argument("--k_folds", type=positive(int, 2, inclusive=True), default=5)
    g.add_argument("--fold", type=positive(int, 0, inclusive=True), default=None, help="run only this fold (0-based)")
    g.add_argument("--merge", default=None, metavar="RUN_DIR", help="merge the folds of a CV run and exit")
    g.add_argument("--val_ratio", type=positive(float), default=0.2)
    g.add_argument("--multi", type=multi_mode, nargs="?", const=True, default=False,
                   help="three separate models: mask, gender, age (the original's --multi 2: with CV)")
    add_bool(g, "--heads", False, "one backbone with mask, gender and age heads")
    g.add_argument("--head_weights", type=positive(float, 0, inclusive=True), nargs=3, default=[1.0, 1.0, 1.0],
                   metavar=("MASK", "GENDER", "AGE"))
    g.add_argument("--years_weight", type=positive(float, 0, inclusive=True), default=0.0,
                   help="weight of an auxiliary head over each year of age (18-60) learnt from train.csv's ages: a "
                   "training aid for the shared features; the label (or age) head still decides (0: off)")
    g.add_argument("--years_sigma", type=pos, default=3.0,
                   help="the years head's targets: the true age spread by a Gaussian of this many years")
    g.add_argument("--tta", choices=sorted(TTA_VIEWS), default=DEFAULT_TTA,
                   help="views averaged when validating, so the epoch choice, out-of-fold predictions and fitted "
                   "decisions see what prediction sees (inference.py and predict.py use the run's views by default)")
    g.add_argument("--age_sigma", type=positive(float, 0, inclusive=True), default=0.0,
                   help="soft age bands: the 18-class and age targets spread each person's age (train.csv) by a "
                   "Gaussian of this many years before cutting it into bands (0: hard bands)")
    g.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    g = ap.add_argument_group("model and recipe")
    g.add_argument("--model", "--model_name", default="efficientnet_lite1",
                   help="any timm model name (efficientnet_lite1 measured best on real faces at the CPU budget: "
                   "README; lite0/1/2 load their ImageNet weights offline)")
    add_bool(g, "--pretrained", True, "start from ImageNet weights")
    g.add_argument("--pretrained_path", default=None, help="local ImageNet state dict")
    g.add_argument("--epochs", type=count, default=10)
    # 16 over 32: twice the updates in the same epochs; on real face crops +0.018 CV macro F1 and +0.012 age F1
    # over 3 seeds at 96x80, 5 epochs; 8 scored lower (README, Real faces)
    g.add_argument("--batch_size", type=count, default=16, help="per process")
    g.add_argument("--valid_batch_size", type=count, default=128)
    g.add_argument("--optimizer", type=str.lower, choices=sorted(OPTIMIZERS), default="adamw")
    g.add_argument("--lr", type=pos, default=2e-3,
                   help="peak learning rate (2e-3 measured best on real faces at the CPU budget: README)")
    g.add_argument("--weight_decay", type=positive(float, 0, inclusive=True), default=1e-2)
    g.add_argument("--layer_decay", type=fraction, default=0.0,
                   help="layer-wise lr decay: each block's lr this fraction of the next one's (0: one lr)")
    g.add_argument("--scheduler", type=str.lower, choices=SCHEDULERS, default="onecycle")
    g.add_argument("--warmup_epochs", type=positive(float, 0, inclusive=True), default=1.0)
    g.add_argument("--loss", "--criterion", type=loss_name, choices=sorted(LOSSES), default="label_smoothing")
    g.add_argument("--smoothing", type=fraction, default=None, help="label smoothing (default: the loss's own)")
    g.add_argument("--augment", "--augmentation", type=augment_name, choices=sorted(AUG_PRESETS), default="basic",
                   help="the original's BaseAugmentation is none, CustomAugmentation basic")
    g.add_argument("--cutmix", type=fraction, default=0.0, help="probability of CutMix per batch")
    g.add_argument("--mixup", type=fraction, default=0.0, help="probability of MixUp per batch")
    g.add_argument("--sampler", choices=("uniform", "weighted"), default="uniform",
                   help="weighted: draw classes evenly")
    g.add_argument("--drop_rate", type=fraction, default=0.2)
    g.add_argument("--drop_path", type=fraction, default=0.0, help="stochastic depth rate (timm drop_path_rate)")
    g.add_argument("--clip_grad", type=positive(float, 0, inclusive=True), default=0.0,
                   help="max gradient norm (0: off)")
    g.add_argument("--ema", type=fraction, default=0.0,
                   help="EMA decay of weights, e.g. 0.99 (0: off); warmed up, so early epochs are not stale")
    g.add_argument("--patience", type=positive(int, 0, inclusive=True), default=0,
                   help="stop after N epochs without a better F1 (0: off)")
    g.add_argument("--seed", type=int, default=42)
    refuse(g, "--lr_decay_step", "the schedule is --scheduler onecycle|cosine|step|cyclic|constant (step decays "
           "every epochs/3)")
    refuse(g, "--log_interval", "every epoch prints one line, and --progress shows running loss and F1")
    refuse(g, "--features", "use --multi True for one model per task (mask, gender, age)")
    g = ap.add_argument_group("hardware")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add_bool(g, "--amp", True, "mixed precision on CUDA (bf16 from compute capability 8.0, else fp16); no-op on CPU")
    add_bool(g, "--channels_last", True, "channels_last memory format (faster on CUDA and on CPU)")
    add_bool(g, "--compile", False, "torch.compile on CUDA; no-op on CPU")
    g.add_argument("--workers", type=positive(int, 0, inclusive=True), default=None,
                   help="loader workers (default 0 on CPU, 4 on CUDA)")
    add_bool(g, "--cudnn_benchmark", True, "on CUDA, let cuDNN time its kernels once per input shape (measured on "
             "an H200: first epoch 30-35 s, later ones about 1 s for 4,200 photos at 224x224)")
    add_bool(g, "--gpu_data", True, "on CUDA, hold the decoded images on the GPU when they take under a quarter "
             "of its free memory (no loader workers, no transfers)")
    add_bool(g, "--gpu_decode", False, "on CUDA, decode JPEGs for the image cache on the GPU (nvImageCodec where "
             "installed, else nvJPEG; with nvImageCodec 1.1-1.2x 16 CPU threads end to end on an H200 machine, "
             "where reading the files bounds both; README, On a GPU); no-op on CPU")
    add_bool(g, "--progress", True, "tqdm bars")
    return ap


# --- data ----------------------------------------------------------------------------------------
def resolve_source(data_dir, source):
    if source == "auto":
        return "faces" if has_faces(data_dir) else "images"
    return source


def training_crop_recipe(cfg):
    """The recipe face_image.py cut the training faces/ with, as a dict for the checkpoints (inference and
    predict.py cut eval photos by it); None for whole photos and for crops cut before recipes were kept."""
    d = Path(cfg["data_dir"])
    recipe = read_crop_recipe(d / "faces") if resolve_source(d, cfg["source"]) == "faces" else None
    return recipe.to_dict() if recipe else None


def refuse_shared_photos(table):
    """Extra data holding photos of --data_dir (the same folder, a link to it, folders linked from it)
    would put their people on both sides of every split: trained on and validated on at once, so the
    validation F1 and the epoch it picks would flatter the run."""
    main = {os.path.realpath(f) for f in table.loc[~table["extra"], "file"]}
    shared = [f for f in table.loc[table["extra"], "file"] if os.path.realpath(f) in main]
    if shared:
        raise UserError(f"{shared[0]} (and {len(shared) - 1} more) given as --extra_data is a photo of --data_dir "
                        "too: its people would be trained on and validated on at once; leave it out of --extra_data")


def load_data(cfg, log, decode_on="cpu"):
    """Label table of the main dataset (+ extra datasets) and the decoded-image cache over all of it,
    decoded on `decode_on` (the run's CUDA device with --gpu_decode)."""
    tables = []
    fixes = cfg["fixes"] or str(Path(__file__).resolve().parent / "label_fixes.csv")
    cache_dir = Path(cfg["cache_dir"] or Path(cfg["model_dir"]) / ".cache")
    main_crop = "none" if resolve_source(Path(cfg["data_dir"]), cfg["source"]) == "faces" else "center"
    for i, d in enumerate([cfg["data_dir"]] + list(cfg["extra_data"])):
        d = Path(d)
        if not d.is_dir():
            raise UserError(f"{d} is not a directory: set SM_CHANNEL_TRAIN / --data_dir / --extra_data to a "
                            "training dir holding train.csv and images/ (python synthetic.py makes a demo one)")
        if i > 0 and mask_only_layout(d):
            tables.append(mask_only_table(d, i, main_crop, cfg, cache_dir, log))
            continue
        t = build_table(d, tuple(cfg["age_bounds"]), fixes, cfg["max_bad"], log)
        source = resolve_source(d, cfg["source"])
        if source == "faces":
            t["path"] = t["path"].str.replace("images/", "faces/", n=1, regex=False)
            missing = [p for p in t["path"] if not (d / p).is_file()]
            if missing:
                raise UserError(f"{d / missing[0]} (and {len(missing) - 1} more) not found: run "
                                f"'python face_image.py --data_dir {d.parent}' or pass --source images")
        t["file"] = [str(d / p) for p in t["path"]]
        t["crop"] = "none" if source == "faces" else "center"
        t["extra"], t["full"] = i > 0, True
        if i > 0:
            t["people_path"] = f"extra{i}:" + t["people_path"]
        tables.append(t)
    if cfg["pseudo"]:
        tables.append(pseudo_table(cfg, main_crop, log))
    table = pd.concat(tables, ignore_index=True)
    refuse_shared_photos(table)
    # labels for training use the training bounds; validation is always scored with the official ones
    table["label_official"] = encode(table["mask"], table["gender"], age_class(table["age_years"]))
    if not table["full"].all() and cfg["cutmix"] + cfg["mixup"] > 0:
        raise UserError("--extra_data with mask-only labels cannot be mixed by --cutmix/--mixup (a mixed photo would "
                        "have half a label); turn those off or leave the mask-only data out")

    def build():  # rank 0 decodes every image once; the other ranks then map the files it wrote
        return {crop: cached_images(part["file"].tolist(), [(tuple(cfg["img_size"]), crop)], cache_dir, log,
                                    device=decode_on)[(tuple(cfg["img_size"]), crop)]
                for crop, part in table.groupby("crop", sort=True)}
    caches = distributed.rank0_first(build)
    images, ok = _join_caches(table, caches)
    table["cache_row"] = np.arange(len(table))
    bad = int((~ok).sum())
    if bad / len(ok) > cfg["max_bad"]:
        raise UserError(f"{cfg['data_dir']}: {bad} of {len(ok)} images cannot be decoded; fix them or raise --max_bad")
    table = table[ok].reset_index(drop=True)
    log.summary()
    mb = sum(c.nbytes for c in caches.values()) / 2**20
    log_main(f"data: {len(table)} images of {table['people_path'].nunique()} people "
             f"({int(table['extra'].sum())} extra images); image cache {mb:.0f} MiB "
             f"({len(table)} x {cfg['img_size'][0]} x {cfg['img_size'][1]} x 3 bytes)")
    return table, images


def mask_only_table(d, i, main_crop, cfg, cache_dir, log):
    """Rows for a dataset labelled with mask status only (face_image.mask_only_layout): one face crop per
    labelled face, cut once into the cache by rank 0. Gender and age are unknown (full = False: no
    loss for them); each face counts as its own person, always on the training side."""
    key = hashlib.sha1(f"{d.resolve()}|{main_crop}|{cfg['extra_min_face']}|1".encode()).hexdigest()[:16]
    faces = distributed.rank0_first(lambda: mask_only_faces(d, main_crop, cfg["extra_min_face"],
                                                            cache_dir / "mask_only" / key, log))
    t = pd.DataFrame({"path": faces["file"], "file": faces["file"], "mask": faces["mask"], "gender": 0, "age": 0,
                      "age_years": AGE_MIN, "people_path": [f"extra{i}:face{n}" for n in range(len(faces))]})
    t["label"] = encode(t["mask"], 0, 0)
    t["crop"], t["extra"], t["full"] = "none", True, False
    log_main(f"{d}: {len(t)} faces labelled with mask status only ({int(faces['found'].sum())} boxes given or found)")
    return t


def pseudo_table(cfg, main_crop, log):
    """Eval photos whose predicted top probability is at least --pseudo_threshold, labelled by that
    prediction: training rows only, each photo its own person. Their age in years is the middle of the
    predicted band (for a years head)."""
    path, eval_dir = Path(cfg["pseudo"]), Path(cfg["pseudo_data"])
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
    keep = probs.max(1) >= cfg["pseudo_threshold"]
    mask, gender, band = decode(probs.argmax(1)[keep])
    years = np.asarray(PSEUDO_YEARS)[band]
    t = pd.DataFrame({"path": [str(p) for p, k in zip(paths, keep) if k], "mask": mask, "gender": gender,
                      "age_years": years, "people_path": [f"pseudo:{x}" for x in info["ImageID"][keep]]})
    t["file"], t["age"] = t["path"], age_class(years, tuple(cfg["age_bounds"]))
    t["label"] = encode(t["mask"], t["gender"], t["age"])
    t["crop"], t["extra"], t["full"] = main_crop, True, True
    # a label-smoothed model rarely reaches 0.9 (smoothing caps its targets near 0.9): say how high it got
    log_main(f"pseudo-labels: {int(keep.sum())} of {len(info)} eval photos at probability >= {cfg['pseudo_threshold']} "
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


# --- plan: which (fold, task) units this invocation trains ---------------------------------------
def split_people(table):
    """The people a run's splits are drawn from (with the seed): the main dataset's, with the labels that
    stratify them."""
    return people_of(table[~table["extra"]].assign(sub_label=lambda t: t["label_official"] % 6))


def check_same_people(run_dir, table):
    """Record the run's people when it starts; refuse to go on (--resume, a fold job sharing the folder)
    with other people or labels: the folds would be drawn anew, so a fold's validation people could have
    been trained on, and the out-of-fold predictions would mix splits."""
    people = split_people(table)
    now = {"people": len(people), "digest": hashlib.sha1(people.to_csv(index=False).encode()).hexdigest()[:16]}
    path = run_dir / "people.json"

    def check():
        if not path.is_file():
            write_json_atomic(path, now)
            return
        saved = json.loads(path.read_text())
        if saved["digest"] != now["digest"]:
            raise UserError(f"{run_dir} started on other data ({saved['people']} people then, {now['people']} now, "
                            "or other labels), so its folds would be drawn anew: start a new run on this data "
                            "(another --run_dir), or go on with the data it started with")
    distributed.on_rank0(check)


def plan_units(cfg, table):
    main_people = split_people(table)
    extra_people = sorted(table.loc[table["extra"], "people_path"].unique())
    if cfg["cv"]:
        splits = kfold_split(main_people, cfg["k_folds"], cfg["seed"])
        folds = range(cfg["k_folds"]) if cfg["fold"] is None else [cfg["fold"]]
        if cfg["fold"] is not None and not 0 <= cfg["fold"] < cfg["k_folds"]:
            raise UserError(f"--fold {cfg['fold']} is outside 0..{cfg['k_folds'] - 1}")
        splits = [(f"fold{i}", splits[i]) for i in folds]
    else:
        splits = [("", holdout_split(main_people, cfg["val_ratio"], cfg["seed"]))]
    years = ("years",) if cfg["years_weight"] > 0 else ()
    if cfg["multi"]:
        task_sets = [((t,) + (years if t == "age" else ()), t) for t in MULTI_TASKS]
    elif cfg["heads"]:
        task_sets = [(MULTI_TASKS + years, "")]
    else:
        task_sets = [(("label",) + years, "")]
    return [dict(subdir=str(Path(s, sub)) if s or sub else "", tasks=tasks, train=list(tr) + extra_people, valid=va)
            for s, (tr, va) in splits for tasks, sub in task_sets]


# --- helpers that are objects, so the loop has no branches for features that are off ----------
class NoEma:
    def __init__(self, model):
        self.module = model

    def update(self, model, step=None):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, sd):
        pass


class OneHot:
    """Stands in for timm's Mixup when CutMix and MixUp are off: hard labels as probabilities (over
    class x year of age, labels.joint_targets)."""

    def __call__(self, x, y):
        return x, torch.nn.functional.one_hot(y, 18 * YEARS).float()


def make_marginal(cfg):
    """How a batch's class x year target becomes each head's target: hard age bands, or soft ones."""
    if cfg.get("age_sigma", 0) <= 0:
        return joint_marginal
    return soft_age_marginal(band_spread(cfg["age_sigma"], tuple(cfg.get("age_bounds", OFFICIAL_AGE_BOUNDS))))


def make_mixer(cfg):
    p = cfg["cutmix"] + cfg["mixup"]
    if p <= 0:
        return OneHot()
    from timm.data import Mixup
    mix = Mixup(mixup_alpha=0.2 if cfg["mixup"] else 0.0, cutmix_alpha=1.0 if cfg["cutmix"] else 0.0,
                prob=min(1.0, p), switch_prob=cfg["cutmix"] / p if cfg["mixup"] and cfg["cutmix"] else 0.5,
                label_smoothing=0.0, num_classes=18 * YEARS)
    one_hot = OneHot()
    return lambda x, y: mix(x, y) if len(x) % 2 == 0 else one_hot(x, y)  # timm needs an even batch


class ClipGrad:
    """--clip_grad N: unscale (fp16) and clip the gradients' global norm before the step."""

    def __init__(self, max_norm):
        self.max_norm = max_norm

    def __call__(self, scaler, optimizer, params):
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, self.max_norm, foreach=True)


def no_clip(scaler, optimizer, params):
    """Clipping off: no norm is computed at all."""


class Bar:
    """tqdm over a loop, with running figures every `every` steps (each costs one host sync)."""

    def __init__(self, every=20):
        self.every = every

    def wrap(self, it, desc, total):
        from tqdm import tqdm
        self.bar = tqdm(it, desc=desc, total=total, leave=False, file=sys.stderr, disable=None)
        return self.bar

    def report(self, step, figures):
        if step % self.every == 0:
            self.bar.set_postfix(**figures())


class NoBar:
    """--progress False, and every rank but 0: the loop runs with no bar and no running figures."""

    def wrap(self, it, desc, total):
        return it

    def report(self, step, figures):
        pass


class NullWriter:
    def __getattr__(self, name):
        return lambda *a, **k: None


@dataclass
class Loop:
    """What train_one_epoch and evaluate share for one unit; built by build_training."""
    device: torch.device
    tasks: tuple
    seed: int
    rank: int
    transform: BatchTransform
    eval_transform: BatchTransform
    mixer: object
    memory_format: torch.memory_format
    precision: Precision
    loss_fns: dict
    head_weights: dict
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: object
    ema: object
    raw_model: torch.nn.Module
    clip: object
    bar: object
    mean: list
    std: list
    out: Path = Path(".")
    valid_labels: np.ndarray | None = None
    mask_only_weight: float = 1.0
    marginal: object = joint_marginal  # batch target over class x year -> a task's target
    views: tuple = ("id",)  # test-time views averaged in validation



def log_main(*a):
    if distributed.is_main_process():
        print(*a, flush=True)


def unit_metrics(tasks, probs, labels_official):
    """Pure: metrics of one unit from its per-task probabilities. Units that cover the 18 classes
    are scored as the competition is; a single-task unit by that task's macro F1 (a years head, a
    training aid, is not scored)."""
    tasks = tuple(t for t in tasks if t != "years")
    if "label" in tasks or set(tasks) == set(MULTI_TASKS):
        return score(labels_official, combine_probs(probs).argmax(1).numpy())
    (t,) = tasks
    y = task_targets(labels_official, [t])[:, 0]
    pred = probs[t].argmax(1).numpy()
    f1 = macro_f1(y, pred, list(range(TASKS[t])))
    return {"f1": f1, "accuracy": float((y == pred).mean()), f"f1_{t}": f1}


def heads_loss(logits, target, tasks, loss_fns, weights, full=None, mask_only_weight=1.0, marginal=joint_marginal):
    """target: (B, 18 * YEARS) over class x year of age; each head learns its task's marginal (as
    `marginal` forms it: hard or soft age bands).
    full: (B,) 1 for photos with every label, 0 for those labelled with mask status only (None: all
    full). Mask-only rows teach the mask head, or the 18-class output through its mask marginal, and
    nothing else (weighted by mask_only_weight)."""
    heads = split_heads(logits, tasks)
    part = None if full is None else mask_only_weight * (1 - full)
    rows = {"mask": None if full is None else full + part}  # every row carries its mask state
    loss = sum(weights[t] * loss_fns[t](heads[t], marginal(target, t), rows.get(t, full)) for t in tasks)
    if part is not None and "label" in tasks:
        loss = loss + weights["label"] * mask_marginal_loss(heads["label"], joint_marginal(target, "mask"), part)
    return loss


def epoch_seed(seed, epoch, rank):
    """Augmentation, dropout and MixUp draws: the same after a resume, different on each rank."""
    return seed * 1000 + epoch + 1_000_003 * rank


# --- the loop ------------------------------------------------------------------------------------
def train_one_epoch(model, loader, loop, epoch):
    """One pass over the training loader; -> metrics dict over all of the epoch's predictions.
    Nothing is read back from the device until the epoch ends (the progress bar, when shown, every
    few steps), so the host queues work ahead of the GPU."""
    model.train()
    loader.sampler.set_epoch(epoch)
    seed = epoch_seed(loop.seed, epoch, loop.rank)
    gen = torch.Generator().manual_seed(seed)
    seed_everything(seed)
    total = torch.zeros((), device=loop.device)
    finite = torch.ones((), dtype=torch.bool, device=loop.device)
    logits_all, ys = [], []
    for step, (x, y, _) in enumerate(loop.bar.wrap(to_device(loader, loop.device), f"epoch {epoch + 1} train",
                                                   len(loader))):
        y, joint, full = y[:, 0], y[:, 1], y[:, 2].float()
        x = loop.transform(x, train=True, generator=gen).contiguous(memory_format=loop.memory_format)
        x, target = loop.mixer(x, joint)
        with loop.precision.autocast():
            logits = model(x)
            loss = heads_loss(logits, target, loop.tasks, loop.loss_fns, loop.head_weights, full, loop.mask_only_weight,
                              loop.marginal)
        loop.optimizer.zero_grad(set_to_none=True)
        loop.scaler.scale(loss).backward()
        loop.clip(loop.scaler, loop.optimizer, model.parameters())
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
        loop.schedule.step()
        loop.ema.update(loop.raw_model, step=epoch * len(loader) + step)
        loss = loss.detach()
        finite &= torch.isfinite(loss)
        total += loss * len(y)
        logits_all.append(logits.detach())
        ys.append(torch.where(full > 0, y, -1))  # -1: mask status only, left out of the epoch's F1
        loop.bar.report(step, lambda: _running_figures(loop, total, logits_all, ys))
    distributed.sync_state(loop.raw_model)
    distributed.sync_state(loop.ema.module)
    if not finite.item():
        last = loop.out / "last.pth"
        where = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was saved yet"
        raise UserError(f"loss became nan or inf in epoch {epoch + 1}; {where}; lower --lr or enable --clip_grad")
    logits, y = _fully_labelled(logits_all, ys)
    m = unit_metrics(loop.tasks, task_probs(logits, loop.tasks), y.numpy())
    return {"loss": float(total) / max(sum(len(v) for v in ys), 1), "f1": m["f1"], "accuracy": m["accuracy"],
            "lr": top_lr(loop.optimizer)}


def _running_figures(loop, total, logits_all, ys):
    """The bar's figures over the epoch so far (reads the device: only called every few steps)."""
    logits, y = _fully_labelled(logits_all, ys)
    f1 = unit_metrics(loop.tasks, task_probs(logits, loop.tasks), y.numpy())["f1"]
    return dict(loss=f"{float(total) / max(sum(len(v) for v in ys), 1):.4f}", f1=f"{f1:.3f}", lr=f"{top_lr(loop.optimizer):.2e}")


def _fully_labelled(logits_all, ys):
    """The epoch's logits and labels on the host, without the mask-only rows (label -1)."""
    logits, y = torch.cat(logits_all).float().cpu(), torch.cat(ys).cpu()
    return logits[y >= 0], y[y >= 0]


@torch.no_grad()
def evaluate(model, loader, loop):
    """Validation over every sample exactly once (gathered from all ranks); -> metrics dict plus
    'probs' {task: (N, K)} in dataset order. Read back from the device once, at the end."""
    model.eval()
    idx_all, probs_all = [], []
    loss_sum = torch.zeros((), device=loop.device)
    for x, y, idx in loop.bar.wrap(to_device(loader, loop.device), "valid", len(loader)):
        x = loop.eval_transform(x).contiguous(memory_format=loop.memory_format)
        with loop.precision.autocast():
            probs, logits = view_average(model, x, loop.views, loop.tasks)
        target = torch.nn.functional.one_hot(y[:, 1], 18 * YEARS).float()
        loss_sum += heads_loss(logits, target, loop.tasks, loop.loss_fns, loop.head_weights, marginal=loop.marginal) * len(idx)
        idx_all.append(idx)
        probs_all.append(torch.cat([probs[t] for t in loop.tasks], 1))
    width = sum(TASKS[t] for t in loop.tasks)
    mine = (torch.cat(idx_all).cpu() if idx_all else torch.zeros(0, dtype=torch.long),
            torch.cat(probs_all).cpu() if probs_all else torch.zeros(0, width), float(loss_sum))
    parts = distributed.gather_objects(mine)
    idx = torch.cat([p[0] for p in parts])
    probs = split_heads(torch.cat([p[1] for p in parts])[idx.argsort()], loop.tasks)
    m = unit_metrics(loop.tasks, probs, loop.valid_labels)
    return {**m, "loss": sum(p[2] for p in parts) / max(len(idx), 1), "n": len(idx), "probs": probs}


def build_training(cfg, tasks, train_labels, steps_per_epoch, dist):
    """Model, optimizer, schedule, scaler, EMA, losses and the loop's state for one unit.
    -> (model as trained: DDP-wrapped and/or compiled, raw model, Loop). Also used by benchmark.py."""
    dev = dist.device
    seed_everything(cfg["seed"])
    model = create_model(cfg["model"], tasks, cfg["pretrained"], cfg["pretrained_path"], cfg["drop_rate"],
                         drop_path_rate=cfg.get("drop_path", 0.0))
    pcfg = model.pretrained_cfg
    mean, std = list(pcfg.get("mean", (0.485, 0.456, 0.406))), list(pcfg.get("std", (0.229, 0.224, 0.225)))
    # channels_last also pays on CPU: measured 1.55x training and 1.6x inference for efficientnet_lite0
    memory_format = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    raw_model = model = model.to(dev, memory_format=memory_format)
    ema = NoEma(raw_model)
    if cfg["ema"] > 0:
        from timm.utils import ModelEmaV3
        # Warm-up: a run of a few hundred steps would otherwise average in the ImageNet start.
        ema = ModelEmaV3(raw_model, decay=cfg["ema"], use_warmup=True)
    optimizer = create_optimizer(cfg["optimizer"], raw_model, cfg["lr"], cfg["weight_decay"],
                                 layer_decay=cfg.get("layer_decay", 0.0))
    schedule = create_scheduler(cfg["scheduler"], optimizer, cfg["lr"], cfg["epochs"], steps_per_epoch,
                                cfg["warmup_epochs"])
    precision = choose_precision(dev, cfg["amp"])
    scaler = torch.amp.GradScaler(dev.type, enabled=precision.needs_scaler)
    if dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if cfg["compile"] and dev.type == "cuda":
        model = torch.compile(model)  # after DDP, as PyTorch documents: DDP's buckets guide the graph breaks
    counts = {t: np.bincount(task_targets(train_labels, [t])[:, 0], minlength=TASKS[t]) for t in tasks if t != "years"}
    loss_fns = {t: create_loss(cfg["loss"], counts[t], cfg["smoothing"]) for t in counts}
    loss_fns["years"] = years_loss(cfg["years_sigma"])
    loop = Loop(device=dev, tasks=tasks, seed=cfg["seed"], rank=dist.rank, transform=BatchTransform(mean, std, cfg["augment"]),
                eval_transform=BatchTransform(mean, std, "none"), mixer=make_mixer(cfg), memory_format=memory_format,
                precision=precision, loss_fns=loss_fns,
                head_weights=dict(zip(MULTI_TASKS, cfg["head_weights"]), label=1.0, years=cfg["years_weight"]),
                optimizer=optimizer,
                scaler=scaler, schedule=schedule, ema=ema, raw_model=raw_model,
                clip=ClipGrad(cfg["clip_grad"]) if cfg["clip_grad"] > 0 else no_clip,
                bar=Bar() if cfg["progress"] and dist.is_main else NoBar(), mean=mean, std=std,
                out=Path(cfg.get("run_dir") or "."), mask_only_weight=cfg["mask_only_weight"],
                marginal=make_marginal(cfg), views=TTA_VIEWS[cfg.get("tta", "none")])
    return model, raw_model, loop


def make_loaders(cfg, table, images, tr_rows, va_rows, dist):
    cache_rows = table["cache_row"].to_numpy()
    train_labels = table["label"].to_numpy()[tr_rows]
    # targets: the 18-class label (metrics, sampler) and the class x year index (the loss)
    targets = loss_targets(table["label"], table["age_years"], table["full"])
    ds_tr = BatchDataset(images, cache_rows[tr_rows], targets[tr_rows])
    ds_va = BatchDataset(images, cache_rows[va_rows], targets[va_rows])
    cuda = dist.device.type == "cuda"
    workers = cfg["workers"] if cfg["workers"] is not None else (4 if cuda else 0)
    weights = None
    if cfg["sampler"] == "weighted":
        weights = 1.0 / np.bincount(train_labels, minlength=18)[train_labels]
    gpu = dist.device if cfg["gpu_data"] else None
    loader_tr = make_loader(ds_tr, cfg["batch_size"], True, cfg["seed"], weights, workers, dist.rank, dist.world, cuda,
                            gpu)
    loader_va = make_loader(ds_va, cfg["valid_batch_size"], False, cfg["seed"], None, workers, dist.rank, dist.world,
                            cuda, gpu)
    return loader_tr, loader_va, train_labels


def resume_state(out, loop, unit, resume, run_dir):
    """-> (start epoch, best F1, bad epochs, history), from last.pth when rank 0 finds one and the run
    was asked to resume; a stale last.pth in a reused folder is refused, not silently continued."""
    if not distributed.broadcast_object((out / "last.pth").is_file()):
        return 0, -1.0, 0, []
    if not resume:
        raise UserError(f"{out} holds an unfinished run (last.pth): continue it with --resume {run_dir}, or choose "
                        "another --run_dir")
    ck = load_checkpoint(out / "last.pth")
    loop.raw_model.load_state_dict(ck["model"])
    loop.optimizer.load_state_dict(ck["optimizer"])
    loop.schedule.load_state_dict(ck["schedule"])
    loop.scaler.load_state_dict(ck["scaler"])
    loop.ema.load_state_dict(ck["ema"])
    log_main(f"[{unit['subdir'] or 'run'}] resuming after epoch {ck['epoch'] + 1} (best F1 {ck['best_f1']:.4f})")
    return ck["epoch"] + 1, ck["best_f1"], ck["bad_epochs"], ck["history"]


def run_fold(train_people, valid_people, cfg, unit, table, images, out, dist):
    """Trains one model on train_people, validates on valid_people; -> best metrics. Every mode calls this."""
    tasks = tuple(unit["tasks"])
    # a gender or age model learns nothing from photos labelled with mask status only
    learns_mask = bool({"mask", "label"} & set(tasks))
    tr_rows = np.flatnonzero(table["people_path"].isin(set(train_people)) & (table["full"] | learns_mask))
    va_rows = np.flatnonzero(table["people_path"].isin(set(valid_people)))
    if len(tr_rows) == 0 or len(va_rows) == 0:
        raise UserError("a split has no images; use more people or a smaller --k_folds / --val_ratio")
    loader_tr, loader_va, train_labels = make_loaders(cfg, table, images, tr_rows, va_rows, dist)
    model, raw_model, loop = build_training(cfg, tasks, train_labels, len(loader_tr), dist)
    meta = dict(arch=cfg["model"], tasks=list(tasks), img_size=list(cfg["img_size"]), mean=loop.mean,
                std=loop.std, crop=table["crop"].iloc[va_rows[0]], age_bounds=list(cfg["age_bounds"]), config=cfg,
                valid_people=len(valid_people), train_people=len(train_people), face_crop=training_crop_recipe(cfg))
    loop.out, loop.valid_labels = out, table["label_official"].to_numpy()[va_rows]
    writer = NullWriter()
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tb"))
    start, best, bad_epochs, history = resume_state(out, loop, unit, bool(cfg["resume"]), cfg["run_dir"])
    for epoch in range(start, cfg["epochs"]):
        t0 = time.time()
        tr = train_one_epoch(model, loader_tr, loop, epoch)
        va = evaluate(loop.ema.module, loader_va, loop)
        probs = va.pop("probs")
        improved = va["f1"] > best
        bad_epochs = 0 if improved else bad_epochs + 1
        best = max(best, va["f1"])
        rec = {"epoch": epoch + 1, "time": round(time.time() - t0, 2),
               **{f"train_{k}": v for k, v in tr.items()}, **{f"valid_{k}": v for k, v in va.items()},
               "best": improved}
        history.append(rec)
        if dist.is_main:
            _log_epoch(writer, unit, cfg, rec, tr, va)
            m = {**meta, "epoch": epoch + 1, "metrics": rec}
            if improved:
                save_checkpoint(out / "best.pth", loop.ema.module, m)
                _write_valid_preds(out / "valid_preds.csv", table.iloc[va_rows], probs, tasks)
                _log_figures(writer, epoch + 1, tasks, probs, loop.valid_labels, images,
                             table["cache_row"].to_numpy()[va_rows])
            # no RNG state: every epoch reseeds from (seed, epoch, rank), which is what makes a resume exact
            save_checkpoint(out / "last.pth", raw_model, m, optimizer=loop.optimizer, schedule=loop.schedule,
                            scaler=loop.scaler, ema=loop.ema, epoch=epoch, best_f1=best, bad_epochs=bad_epochs,
                            history=history)
        distributed.barrier()
        if cfg["patience"] and bad_epochs >= cfg["patience"]:
            log_main(f"[{unit['subdir'] or 'run'}] early stop: no better F1 for {bad_epochs} epochs")
            break
    best_metrics = best_epoch_of(history)
    result = {"best_epoch": best_metrics["epoch"] if best_metrics else None, "best_f1": best,
              "best": best_metrics, "history": history, "tasks": list(tasks)}
    if dist.is_main:
        write_json_atomic(out / "metrics.json", result)  # its presence marks the unit as done
        writer.close()
    distributed.barrier()
    return result


def best_epoch_of(history):
    """The record of the best epoch: the last one that improved (a resumed run's history holds every
    improvement since epoch 1, and each later one beat the earlier)."""
    return next((h for h in reversed(history) if h.get("best")), None)


def _log_epoch(writer, unit, cfg, rec, tr, va):
    log_main(f"[{unit['subdir'] or 'run'}] epoch {rec['epoch']}/{cfg['epochs']} train loss {tr['loss']:.4f} "
             f"f1 {tr['f1']:.4f} | valid loss {va['loss']:.4f} f1 {va['f1']:.4f} acc {va['accuracy']:.4f}"
             + "".join(f" {t} {va[f'f1_{t}']:.3f}" for t in MULTI_TASKS if f"f1_{t}" in va)
             + f" | {rec['time']:.1f}s" + (" *" if rec["best"] else ""))
    for k, v in tr.items():
        writer.add_scalar(f"train/{k}", v, rec["epoch"])
    for k, v in va.items():
        writer.add_scalar(f"valid/{k}", v, rec["epoch"])


def prob_columns(task):
    """Column names of a task's probabilities in valid_preds.csv and oof.csv: p0..p17, mask0..mask2, ..."""
    return [f"{'p' if task == 'label' else task}{k}" for k in range(TASKS[task])]


def _write_valid_preds(path, rows, probs, tasks):
    cols = {c: p[:, k].numpy() for t, p in probs.items() for k, c in enumerate(prob_columns(t))}
    df = pd.DataFrame({"path": rows["path"].to_numpy(), "people_path": rows["people_path"].to_numpy(),
                       "label": rows["label_official"].to_numpy(), **cols})
    write_csv_atomic(df, path, float_format="%.6f")


def _log_figures(writer, step, tasks, probs, labels, images, rows):
    if isinstance(writer, NullWriter) or not ("label" in tasks or set(tasks) == set(MULTI_TASKS)):
        return
    pred = combine_probs(probs).argmax(1).numpy()
    writer.add_figure("valid/confusion", confusion_figure(labels, pred, f"epoch {step}"), step)
    wrong = np.flatnonzero(pred != labels)[:16]
    if len(wrong):
        arr = images.array if isinstance(images, ImageCache) else images
        import torchvision
        grid = torchvision.utils.make_grid(torch.from_numpy(np.asarray(arr[np.sort(rows[wrong])])).permute(0, 3, 1, 2),
                                           nrow=8)
        writer.add_image("valid/misclassified", grid, step)


# --- cross-validation merge ----------------------------------------------------------------------
def merge_cv(run_dir, k=None, quiet_missing=False):
    """Join the folds' out-of-fold predictions into oof.csv (path, label, p0..p17) and cv.json."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{cfg_path} not found: --merge takes a CV run folder written by train.py --cv True")
    cfg = json.loads(cfg_path.read_text())
    k = k or cfg["k_folds"]
    subs = [t for t in MULTI_TASKS] if cfg["multi"] else [""]
    missing = [f"fold{i}" for i in range(k) if not all((run_dir / f"fold{i}" / s / "metrics.json").is_file()
                                                         for s in subs)]
    if missing:
        if quiet_missing:
            log_main(f"folds still missing: {', '.join(missing)}; merge later with python train.py --merge {run_dir}")
            return None
        raise UserError(f"{run_dir}: folds {', '.join(missing)} have not finished; run them with --fold i "
                        f"--run_dir {run_dir}")
    oof = pd.concat([unit_preds(run_dir / f"fold{i}", subs).assign(fold=i) for i in range(k)], ignore_index=True)
    if oof["path"].duplicated().any():
        raise UserError(f"{run_dir}: an image appears in more than one fold's validation set")
    m = score(oof["label"].to_numpy(), oof[prob_columns("label")].to_numpy().argmax(1))
    write_csv_atomic(oof, run_dir / "oof.csv", float_format="%.6f")
    log_main(f"CV ({k} folds, {len(oof)} out-of-fold images): macro F1 {m['f1']:.4f} accuracy {m['accuracy']:.4f} "
             f"(mask {m['f1_mask']:.3f} gender {m['f1_gender']:.3f} age {m['f1_age']:.3f}) -> {run_dir / 'oof.csv'}")
    decided = fit_run_decision(run_dir, oof, "out-of-fold predictions of every person (oof.csv)")
    by_detection = score_by_detection(Path(cfg["data_dir"]), oof)
    write_json_atomic(run_dir / "cv.json", {**m, "n": len(oof), "folds": k, "decided_cross_fitted": decided,
                                            **({"by_detection": by_detection} if by_detection else {})})
    return m


def score_by_detection(data_dir, oof):
    """A run trained on face crops (faces/): out-of-fold macro F1 apart for photos where face_image.py found
    a face and photos that fell back to the centre region (faces/boxes.csv), so a detector's misses have a
    price. None for a run on whole photos."""
    boxes_csv = data_dir / "faces" / "boxes.csv"
    if not oof["path"].str.startswith("faces/").all() or not boxes_csv.is_file():
        return None
    found = oof["path"].map(pd.read_csv(boxes_csv).set_index("path")["detected"].rename(lambda p: f"faces/{p}"))
    out = {}
    for name, rows in (("found", oof[found == 1]), ("fallback", oof[found == 0])):
        if len(rows):
            r = score(rows["label"].to_numpy(), rows[prob_columns("label")].to_numpy().argmax(1))
            out[name] = {"n": len(rows), **{key: r[key] for key in ("f1", "accuracy", "f1_mask", "f1_gender", "f1_age")}}
    log_main("by detection: " + "; ".join(f"{n} {v['n']} photos macro F1 {v['f1']:.4f} (mask {v['f1_mask']:.3f} "
                                          f"gender {v['f1_gender']:.3f} age {v['f1_age']:.3f})" for n, v in out.items()))
    return out


def unit_preds(folder, subs):
    """The 18-class validation predictions of one split (folder: the run, or a fold): path,
    people_path, label, p0..p17, from its valid_preds.csv (one per task folder for --multi)."""
    frames = [pd.read_csv(folder / s / "valid_preds.csv") for s in subs]
    probs = {t: torch.tensor(f[prob_columns(t)].to_numpy()) for f in frames for t in TASKS
             if set(prob_columns(t)) <= set(f.columns)}
    p18 = combine_probs(probs).numpy()
    return pd.concat([frames[0][["path", "people_path", "label"]], pd.DataFrame(p18, columns=prob_columns("label"))],
                     axis=1)


def fit_run_decision(run_dir, preds, source):
    """Fit the run's macro-F1 offsets (decision.py) on predictions of people the model did not train on;
    -> the cross-fitted metrics (each person decided by offsets fitted without them)."""
    probs, labels = preds[prob_columns("label")].to_numpy(), preds["label"].to_numpy()
    record, held_pred = fit_decision(probs, labels, preds["people_path"].to_numpy(), source)
    write_decision(run_dir, record)
    held = score(labels, held_pred)
    log_main(f"decision offsets ({'kept' if record['used'] else 'not kept: argmax'}): macro F1 {held['f1']:.4f} on "
             f"people they were not fitted on (argmax {record['f1_argmax']:.4f}; mask {held['f1_mask']:.3f} gender "
             f"{held['f1_gender']:.3f} age {held['f1_age']:.3f}) -> {Path(run_dir) / DECISION_FILE}")
    return held


# --- entry ---------------------------------------------------------------------------------------
# settings that say how this machine runs a run, not what the run is: free to change on --resume
MACHINE_SETTINGS = ("resume", "progress", "device", "workers", "gpu_decode", "gpu_data", "cudnn_benchmark")


def given_flags(argv):
    """The settings this command line names explicitly (aliases included)."""
    ap = build_parser()
    for action in ap._actions:
        action.default = argparse.SUPPRESS
    return vars(ap.parse_args(argv))


def settings(args, argv):
    """The run's settings: this command line's, or with --resume the run's own config.json (defaults for
    settings newer than the run) with this command line's machine settings."""
    cfg = vars(args).copy()
    if cfg["multi"] == "cv":  # the original's --multi 2
        cfg.update(multi=True, cv=True)
    if not args.resume:
        demo_note(cfg["data_dir"], DEMO_TRAIN, "SM_CHANNEL_TRAIN", "--data_dir", argv)
        return cfg
    path = Path(args.resume) / "config.json"
    if not path.is_file():
        raise UserError(f"{path} not found: --resume takes a run folder written by train.py")
    saved = json.loads(path.read_text())
    changed = sorted(k for k in given_flags(argv) if k not in MACHINE_SETTINGS and k in saved and saved[k] != cfg[k])
    if changed:
        raise UserError(f"--resume continues {args.resume} with its own settings, and {', '.join('--' + k for k in changed)} "
                        f"differ from its config.json: start a new run for other settings")
    if not has_progress(args.resume):
        raise UserError(f"{args.resume}: nothing to resume (no last.pth: the run stopped before its first epoch "
                        "ended); start it again without --resume")
    return {**cfg, **saved, **{k: cfg[k] for k in MACHINE_SETTINGS}}


def has_progress(run_dir):
    """True once some unit of the run finished an epoch (last.pth) or all of them (metrics.json)."""
    return any(Path(run_dir).rglob("last.pth")) or any(Path(run_dir).rglob("metrics.json"))


def interrupted_hint(run_dir):
    """What to run after Ctrl-C or a scheduler's SIGTERM stopped the training."""
    if has_progress(run_dir):
        return f"{run_dir}: interrupted; continue it with: python train.py --resume {run_dir}"
    return f"{run_dir}: interrupted before its first epoch ended; start it again (without --resume)"


def resolve_data_dir(cfg):
    """SM_CHANNEL_TRAIN may name a train root, or (as the original's did) its images/ or faces/ folder."""
    d = Path(cfg["data_dir"])
    if d.name in ("images", "faces") and not (d / "train.csv").is_file() and (d.parent / "train.csv").is_file():
        source = d.name if cfg["source"] == "auto" else cfg["source"]
        log_main(f"data: {d} is the {d.name}/ folder of {d.parent}: training on {d.parent} with --source {source}")
        return {**cfg, "data_dir": str(d.parent), "source": source}
    return cfg


def given_run_dir(cfg):
    """The run folder given (--resume, --run_dir), or None: a new one under --model_dir, checked here
    and named when it is created, once the data has loaded (a run that fails on its data leaves no folder)."""
    if cfg["resume"] or cfg["run_dir"]:
        return Path(cfg["resume"] or cfg["run_dir"])
    writable_dir(cfg["model_dir"], "--model_dir (SM_MODEL_DIR)")
    return None


def create_run_dir(run_dir, cfg, dist):
    """Create the run folder (rank 0; a new one is named exp, exp2, ...) and write its config.json -> the
    folder, on every rank. A new name is claimed with an exclusive mkdir: a run started at the same moment
    (seeds launched together) may have taken it while this one loaded its data; then the next free one."""
    def claim():
        if run_dir is not None:
            writable_dir(run_dir, "--run_dir").mkdir(parents=True, exist_ok=True)
            return str(run_dir)
        while True:
            new = increment_dir(Path(cfg["model_dir"]), cfg["name"])
            try:
                new.mkdir(parents=True)
                return str(new)
            except FileExistsError:
                continue
    run_dir = Path(distributed.on_rank0(claim))
    cfg["run_dir"] = str(run_dir)
    if dist.is_main and not (run_dir / "config.json").is_file():
        write_json_atomic(run_dir / "config.json", {k: v for k, v in cfg.items() if k != "resume"})
    distributed.barrier()
    distributed.check_shared_dir(run_dir)
    return run_dir


def run_units(units, cfg, table, images, run_dir, dist):
    results = {}
    for unit in units:
        out = run_dir / unit["subdir"]
        done = distributed.broadcast_object(json.loads((out / "metrics.json").read_text())
                                            if dist.is_main and (out / "metrics.json").is_file() else None)
        if done:  # decided by rank 0 for every rank
            log_main(f"[{unit['subdir'] or 'run'}] already finished, skipped")
            results[unit["subdir"]] = done
            continue
        results[unit["subdir"]] = run_fold(unit["train"], unit["valid"], cfg, unit, table, images, out, dist)
    return results


@cli
def main(argv):
    load_dotenv_once()
    args = build_parser().parse_args(argv)
    if args.merge:
        merge_cv(args.merge)
        return
    cfg = settings(args, argv)
    if cfg["multi"] and cfg["heads"]:
        raise UserError("--multi (three models) and --heads (one model, three heads) exclude each other")
    if cfg["fold"] is not None and not cfg["cv"]:
        raise UserError("--fold needs --cv True")
    dist = distributed.setup(cfg["device"], cfg["cudnn_benchmark"])
    try:
        cfg = resolve_data_dir(cfg)
        if cfg["cache_dir"]:  # the default, <model_dir>/.cache, is checked with --model_dir
            writable_dir(cfg["cache_dir"], "--cache_dir")
        run_dir = given_run_dir(cfg)
        cfg.update(world_size=dist.world, data_dir=str(cfg["data_dir"]))
        log = Log(quiet=not dist.is_main)
        log_main(f"device {dist.device} x {dist.world} process(es), {choose_precision(dist.device, cfg['amp']).name}"
                 f"{', channels_last' if cfg['channels_last'] else ''}")
        table, images = load_data(cfg, log, str(dist.device) if cfg["gpu_decode"] else "cpu")
        units = plan_units(cfg, table)
        run_dir = create_run_dir(run_dir, cfg, dist)
        check_same_people(run_dir, table)
        t0 = time.time()
        try:
            results = run_units(units, cfg, table, images, run_dir, dist)
        except KeyboardInterrupt:
            if dist.is_main:
                print(interrupted_hint(run_dir), file=sys.stderr)
            raise
        summary = {u or "run": {"best_f1": r["best_f1"], "best_epoch": r["best_epoch"]} for u, r in results.items()}
        if cfg["cv"] and dist.is_main:
            cv = merge_cv(run_dir, cfg["k_folds"], quiet_missing=True)
            if cv:
                summary["cv"] = cv
        elif dist.is_main:
            summary["decided"] = fit_run_decision(run_dir, unit_preds(run_dir, [t for t in MULTI_TASKS] if cfg["multi"]
                                                                      else [""]), "the validation split (valid_preds.csv)")
        if dist.is_main:
            summary["wall_time_s"] = round(time.time() - t0, 1)
            write_json_atomic(run_dir / "summary.json", summary)
            log_main(f"done in {summary['wall_time_s']:.0f}s -> {run_dir}")
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    main()
