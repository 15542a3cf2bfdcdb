"""Data layer: label table, person-level splits, decode-once image cache, batched augmentation.

Write the per-image label table of a training set (default: the demo dataset):

    python dataset.py --data_dir demo_data/train              # -> demo_data/train/perfect_train.csv
    SM_CHANNEL_TRAIN=/data/train python dataset.py --age_bounds 29 58 --out table.csv

Layout read (the competition's): <data_dir>/train.csv (id, gender, race, age, path) and
<data_dir>/images/<path>/{mask1..mask5,incorrect_mask,normal}.{jpg,jpeg,png}.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from utils import UserError, atomic_path, cli, env_default, inside, load_dotenv_once, write_csv_atomic

# --- labels -------------------------------------------------------------------------------------
MASK_STEMS = {"mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0, "incorrect_mask": 1, "normal": 2}
IMG_EXTS = (".jpg", ".jpeg", ".png")
GENDERS = {"male": 0, "female": 1}
OFFICIAL_AGE_BOUNDS = (30, 60)
TASKS = {"label": 18, "mask": 3, "gender": 2, "age": 3}
MASK_NAMES = ("wear", "incorrect", "not wear")
GENDER_NAMES = ("male", "female")
AGE_NAMES = ("<30", "30-59", ">=60")
TABLE_COLUMNS = ["path", "age", "gender", "mask", "label", "people_path", "sub_label"]
REPO = Path(__file__).resolve().parent
DEFAULT_FIXES = REPO / "label_fixes.csv"
# Crop of the face region used when training on images/ instead of faces/: the competition
# photos are head-and-shoulders shots with the face in the upper middle.
CENTER_REGION = (0.18, 0.12, 0.82, 0.72)  # x1, y1, x2, y2 as fractions of width/height


def encode(mask, gender, age):
    return np.asarray(mask) * 6 + np.asarray(gender) * 3 + np.asarray(age)


def decode(label):
    label = np.asarray(label)
    return label // 6, (label // 3) % 2, label % 3


def age_class(age_years, bounds=OFFICIAL_AGE_BOUNDS):
    """0: < bounds[0], 1: < bounds[1], 2: the rest."""
    a = np.asarray(age_years)
    return (a >= bounds[0]).astype(int) + (a >= bounds[1]).astype(int)


def task_targets(labels, tasks):
    """(N,) 18-class labels -> (N, len(tasks)) integer targets for the given tasks."""
    mask, gender, age = decode(labels)
    parts = {"label": np.asarray(labels), "mask": mask, "gender": gender, "age": age}
    return np.stack([parts[t] for t in tasks], axis=1).astype(np.int64)


class Log:
    """Collects warnings about skipped data: prints the first few, counts all."""

    def __init__(self, limit=20, quiet=False):
        self.limit, self.quiet, self.counts, self.shown = limit, quiet, {}, 0

    def warn(self, kind, msg):
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if not self.quiet and self.shown < self.limit:
            print(f"warning: {msg}", file=sys.stderr)
            self.shown += 1

    def summary(self):
        if self.counts:
            parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
            print(f"skipped data ({parts})", file=sys.stderr)


# --- the label table ---------------------------------------------------------------------------
def read_fixes(path):
    if path is None or not Path(path).exists():
        return pd.DataFrame(columns=["id", "field", "value"])
    fixes = pd.read_csv(path, dtype=str)
    missing = {"id", "field", "value"} - set(fixes.columns)
    if missing:
        raise UserError(f"{path}: missing columns {sorted(missing)}; expected id,field,value")
    return fixes


def read_people(data_dir, fixes_path=DEFAULT_FIXES, log=None):
    """One row per valid person: id, gender (0/1), race, age_years, people_path, mask_swap."""
    data_dir = Path(data_dir)
    log = log or Log()
    csv = data_dir / "train.csv"
    if not csv.is_file():
        raise UserError(f"{csv} not found: the training dir must hold train.csv and images/ "
                        "(set SM_CHANNEL_TRAIN or --data_dir)")
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except Exception as e:
        raise UserError(f"{csv}: cannot be read as CSV ({e})")
    need = {"id", "gender", "age", "path"}
    if need - set(df.columns):
        raise UserError(f"{csv}: missing columns {sorted(need - set(df.columns))}; "
                        "expected id,gender,race,age,path")
    img_root = data_dir / "images"
    if not img_root.is_dir():
        raise UserError(f"{img_root} not found: the training dir must hold images/<person folders>")
    folders = {p.name for p in img_root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    rows, seen = [], set()
    for r in df.itertuples(index=False):
        pid, folder = str(r.id).strip(), str(r.path).strip()
        where = f"{csv.name} row id={pid!r}"
        if pid in seen:
            log.warn("duplicate id", f"{where}: duplicate id, keeping the first row")
            continue
        seen.add(pid)
        gender = GENDERS.get(str(r.gender).strip().lower())
        if gender is None:
            log.warn("bad gender", f"{where}: gender {r.gender!r} is not male/female, person skipped")
            continue
        try:
            age = int(float(str(r.age).strip()))
        except ValueError:
            log.warn("bad age", f"{where}: age {r.age!r} is not a number, person skipped")
            continue
        inside(img_root, folder)  # refuses '../' escapes
        if folder not in folders:
            log.warn("row without folder", f"{where}: no folder images/{folder}, person skipped")
            continue
        rows.append(dict(id=pid, gender=gender, race=getattr(r, "race", ""), age_years=age,
                         people_path=folder, mask_swap=False))
    for folder in sorted(folders - {r["people_path"] for r in rows} - set(df["path"].astype(str))):
        log.warn("folder without row", f"images/{folder}: folder has no row in train.csv, skipped")
    people = pd.DataFrame(rows, columns=["id", "gender", "race", "age_years", "people_path", "mask_swap"])
    for f in read_fixes(fixes_path).itertuples(index=False):
        hit = people["id"] == str(f.id)
        if not hit.any():
            continue
        if f.field == "gender":
            people.loc[hit, "gender"] = GENDERS[f.value]
        elif f.field == "mask" and f.value == "swap_incorrect_normal":
            people.loc[hit, "mask_swap"] = True
        else:
            raise UserError(f"{fixes_path}: unknown fix {f.field}={f.value} (known: gender=male|female, "
                            "mask=swap_incorrect_normal)")
    return people


def image_ok(path) -> bool:
    """Cheap header check; full decoding happens once, in the cache."""
    try:
        if os.path.getsize(path) == 0:
            return False
        from PIL import Image
        with Image.open(path) as im:
            im.size  # noqa: B018 - parses the header
        return True
    except Exception:
        return False


def build_table(data_dir, age_bounds=OFFICIAL_AGE_BOUNDS, fixes_path=DEFAULT_FIXES, max_bad=0.01,
                log=None, check_images=True):
    """Per-image label table (TABLE_COLUMNS + age_years, id) of a training dir."""
    data_dir = Path(data_dir)
    log = log or Log()
    people = read_people(data_dir, fixes_path, log)
    rows, bad, total = [], 0, 0
    for p in people.itertuples(index=False):
        folder = data_dir / "images" / p.people_path
        stems = {}
        for f in sorted(folder.iterdir()):
            if f.name.startswith("."):
                log.warn("hidden file", f"{f}: hidden file skipped")
                continue
            if f.suffix.lower() not in IMG_EXTS or f.stem not in MASK_STEMS:
                log.warn("unknown file", f"{f}: not one of {'/'.join(MASK_STEMS)}.jpg|jpeg|png, skipped")
                continue
            if f.stem in stems:
                log.warn("extra photo", f"{f}: second file for {f.stem}, skipped")
                continue
            total += 1
            if check_images and not image_ok(f):
                bad += 1
                log.warn("unreadable image", f"{f}: unreadable or empty image, skipped")
                continue
            stems[f.stem] = f
        if len(stems) != len(MASK_STEMS):
            miss = sorted(set(MASK_STEMS) - set(stems))
            log.warn("incomplete person", f"{folder}: missing {','.join(miss)}; using the {len(stems)} present")
        for stem, f in stems.items():
            mask = MASK_STEMS[stem]
            if p.mask_swap and mask in (1, 2):
                mask = 3 - mask
            rows.append(dict(path=f.relative_to(data_dir).as_posix(), age_years=p.age_years,
                             gender=p.gender, mask=mask, people_path=p.people_path, id=p.id))
    if total and bad / total > max_bad:
        raise UserError(f"{data_dir}: {bad} of {total} images are unreadable ({bad / total:.1%} > "
                        f"--max_bad {max_bad:.1%}); fix or remove them, or raise --max_bad")
    if not rows:
        raise UserError(f"{data_dir}: no usable images found (see warnings above)")
    t = pd.DataFrame(rows)
    t["age"] = age_class(t["age_years"], age_bounds)
    t["label"] = encode(t["mask"], t["gender"], t["age"])
    t["sub_label"] = t["gender"] * 3 + t["age"]
    return t[TABLE_COLUMNS + ["age_years", "id"]].reset_index(drop=True)


def people_of(table):
    """One row per person with its sub_label, for splitting."""
    return table.groupby("people_path", sort=True)["sub_label"].first().reset_index()


# --- splits by person --------------------------------------------------------------------------
def _can_stratify(y, n_splits):
    return len(y) >= 2 and np.bincount(y).max() >= 2 and np.bincount(y)[np.bincount(y) > 0].min() >= n_splits


def holdout_split(people, val_ratio=0.2, seed=42):
    """-> (train_people, valid_people): lists of people_path, stratified on sub_label."""
    from sklearn.model_selection import train_test_split
    y = people["sub_label"].to_numpy()
    n_valid = math.ceil(len(y) * val_ratio)
    # stratify when every class can give a person to each side; tiny datasets fall back to random
    fits = n_valid >= len(set(y)) and len(y) - n_valid >= len(set(y))
    strat = y if fits and _can_stratify(y, 2) else None
    if n_valid < 1 or n_valid >= len(y):
        raise UserError(f"{len(y)} people cannot be split with --val_ratio {val_ratio}")
    tr, va = train_test_split(people["people_path"].to_numpy(), test_size=val_ratio, random_state=seed,
                              stratify=strat)
    return sorted(tr), sorted(va)


def kfold_split(people, k=5, seed=42):
    """-> list of k (train_people, valid_people); each person is validated exactly once."""
    from sklearn.model_selection import KFold, StratifiedKFold
    if len(people) < k:
        raise UserError(f"{len(people)} people cannot be split into {k} folds; lower --k_folds")
    y = people["sub_label"].to_numpy()
    paths = people["people_path"].to_numpy()
    splitter = (StratifiedKFold(k, shuffle=True, random_state=seed) if _can_stratify(y, k)
                else KFold(k, shuffle=True, random_state=seed))
    return [(sorted(paths[a]), sorted(paths[b])) for a, b in splitter.split(paths, y)]


# --- eval set -----------------------------------------------------------------------------------
def read_eval(eval_dir, source="images"):
    """info.csv rows with absolute image paths; every ImageID must exist (a submission covers all)."""
    eval_dir = Path(eval_dir)
    info_path = eval_dir / "info.csv"
    if not info_path.is_file():
        raise UserError(f"{info_path} not found: the eval dir must hold info.csv and images/ "
                        "(set SM_CHANNEL_EVAL or --data_dir)")
    info = pd.read_csv(info_path, dtype={"ImageID": str})
    if "ImageID" not in info.columns:
        raise UserError(f"{info_path}: no ImageID column")
    if info.empty:
        raise UserError(f"{info_path}: no rows")
    root = eval_dir / source
    paths = []
    for iid in info["ImageID"]:
        p = inside(root, iid)
        if not p.is_file():
            raise UserError(f"{p}: image listed in {info_path.name} is missing; a submission must "
                            "cover every ImageID")
        paths.append(p)
    return info, paths


# --- decoding, cropping, the cache --------------------------------------------------------------
def read_rgb(path):
    """Decode any JPEG/PNG (grey, CMYK, RGBA, 16-bit, EXIF-rotated) to uint8 RGB; None if unreadable."""
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        return None
    if data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in data[-65536:].tobytes():
        return None  # truncated JPEG: libjpeg would fill the missing part with grey and only warn
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)  # applies EXIF orientation, drops alpha, 16->8 bit
    if img is None:
        try:  # CMYK and a few exotic JPEGs: PIL converts them
            from PIL import Image, ImageOps
            with Image.open(path) as im:
                return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        except Exception:
            return None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def center_region(w, h):
    x1, y1, x2, y2 = CENTER_REGION
    return (round(x1 * w), round(y1 * h), round(x2 * w), round(y2 * h))


def center_crop(img):
    """The face region of a full head-and-shoulders photo (used when no face box is known)."""
    x1, y1, x2, y2 = center_region(img.shape[1], img.shape[0])
    return img[y1:y2, x1:x2]


def prepare(img, size, crop):
    """RGB image -> uint8 (H, W, 3) at the model's size. crop: 'center' (face region of a
    full photo), or 'none' (a faces/ crop)."""
    if crop == "center":
        img = center_crop(img)
    h, w = size
    interp = cv2.INTER_AREA if img.shape[0] >= h else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def decode_many(paths, sizes_crops, workers=None, desc="decode", face_fn=None, chunk=256):
    """Decode each file once and prepare it for every (size, crop) asked: -> ({(size, crop): uint8
    array (N, H, W, 3)}, ok mask). crop 'face' needs face_fn (list of images -> list of face crops,
    e.g. MTCNN + the shared crop of face_image.py). Threads: cv2 releases the GIL while decoding."""
    from tqdm import tqdm
    n = len(paths)
    out = {k: np.zeros((n, k[0][0], k[0][1], 3), np.uint8) for k in sizes_crops}
    ok = np.zeros(n, bool)
    if any(c == "face" for _, c in sizes_crops) and face_fn is None:
        raise ValueError("crop 'face' needs a face_fn")
    with ThreadPoolExecutor(workers or os.cpu_count()) as ex, \
            tqdm(total=n, desc=desc, leave=False, disable=True if n < 200 else None, file=sys.stderr) as bar:
        for start in range(0, n, chunk):
            idx = range(start, min(n, start + chunk))
            imgs = list(ex.map(lambda i: read_rgb(paths[i]), idx))
            good = [j for j, im in enumerate(imgs) if im is not None]
            faces = dict(zip(good, face_fn([imgs[j] for j in good]))) if face_fn and good else {}

            def work(j):
                if imgs[j] is None:
                    return
                for (size, crop), arr in out.items():
                    arr[start + j] = prepare(faces[j] if crop == "face" else imgs[j], size,
                                             "none" if crop == "face" else crop)
                ok[start + j] = True

            list(ex.map(work, range(len(imgs))))
            bar.update(len(imgs))
    return out, ok


class ImageCache:
    """uint8 (N, H, W, 3) memory-mapped file of every image, decoded and resized once.

    Shared by loader workers, folds, runs and inference; the key covers the files' paths, sizes and
    mtimes, the size and the crop, so any change rebuilds it. Build with `cached_images`.
    """

    VERSION = 1

    def __init__(self, paths, size, crop, cache_dir):
        self.paths = [Path(p) for p in paths]
        self.size, self.crop = tuple(size), crop
        h = hashlib.sha1(f"{self.VERSION}|{self.size}|{crop}".encode())
        for p in self.paths:
            st = p.stat()
            h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        self.key = h.hexdigest()[:16]
        cache_dir = Path(cache_dir)
        self.file = cache_dir / f"images-{self.key}.u8"
        self.meta = cache_dir / f"images-{self.key}.json"
        self.shape = (len(self.paths), self.size[0], self.size[1], 3)
        self._arr = None

    def exists(self):
        return self.file.exists() and self.meta.exists()

    @property
    def ok(self):
        return np.array(json.loads(self.meta.read_text())["ok"], bool)

    @property
    def nbytes(self):
        return int(np.prod(self.shape))

    def write(self, arr, ok):
        with atomic_path(self.file) as tmp:
            arr.tofile(tmp)
        with atomic_path(self.meta) as tmp:  # written last: its presence means the data is complete
            Path(tmp).write_text(json.dumps({"ok": ok.tolist(), "shape": self.shape}))

    @property
    def array(self):
        # opened lazily so that DataLoader workers each map the file instead of pickling it
        if self._arr is None:
            self._arr = np.memmap(self.file, np.uint8, "r", shape=self.shape)
        return self._arr

    def __getstate__(self):
        return {**self.__dict__, "_arr": None}


def cached_images(paths, keys, cache_dir, log=None, desc="caching images"):
    """{(size, crop): ImageCache} over the same files; every key not cached yet is built from one
    decoding pass. Undecodable files are named in `log` and marked in each cache's `ok`."""
    caches = {k: ImageCache(paths, k[0], k[1], cache_dir) for k in keys}
    missing = [k for k, c in caches.items() if not c.exists()]
    if missing:
        arrays, ok = decode_many(paths, missing, desc=desc)
        for p, good in zip(paths, ok):
            if not good and log:
                log.warn("unreadable image", f"{p}: cannot be decoded, skipped")
        for k in missing:
            caches[k].write(arrays[k], ok)
    return caches


class BatchDataset(torch.utils.data.Dataset):
    """Indexed by a list of indices: returns a whole uint8 batch (B, 3, H, W) and its targets.

    One code path for the 18-class label and the task labels: `targets` has one column per task.
    """

    def __init__(self, images, rows, targets):
        self.images, self.rows, self.targets = images, np.asarray(rows), torch.as_tensor(targets)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, idx):
        idx = np.asarray(idx)
        arr = self.images.array if isinstance(self.images, ImageCache) else self.images
        order = np.argsort(self.rows[idx])  # sorted reads are faster on a memmap
        x = np.empty((len(idx),) + arr.shape[1:], np.uint8)
        x[order] = arr[self.rows[idx][order]]
        return torch.from_numpy(x).permute(0, 3, 1, 2), self.targets[idx], torch.as_tensor(idx)


class BatchSampler(torch.utils.data.Sampler):
    """Yields lists of indices. The order of an epoch depends on (seed, epoch) only, so a resumed
    run sees the same batches. Under DDP each rank takes every world-th batch element; training
    pads with repeats so ranks step together, evaluation does not pad (each sample once)."""

    def __init__(self, n, batch_size, shuffle, seed=0, weights=None, rank=0, world=1, drop_last=False):
        self.n, self.bs, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.rank, self.world, self.drop_last, self.epoch = rank, world, drop_last, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def _indices(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        if self.weights is not None:
            idx = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        elif self.shuffle:
            idx = torch.randperm(self.n, generator=g)
        else:
            idx = torch.arange(self.n)
        if self.shuffle and self.world > 1:  # pad so every rank gets the same number of steps
            pad = (-len(idx)) % self.world
            idx = torch.cat([idx, idx[:pad]])
        return idx[self.rank::self.world].tolist()

    def __iter__(self):
        idx = self._indices()
        stop = len(idx) - len(idx) % self.bs if self.drop_last else len(idx)
        for i in range(0, stop, self.bs):
            yield idx[i:i + self.bs]

    def __len__(self):
        m = len(self._indices())
        return m // self.bs if self.drop_last else math.ceil(m / self.bs)


def make_loader(dataset, batch_size, train, seed, weights=None, workers=0, rank=0, world=1, pin=False):
    sampler = BatchSampler(len(dataset), batch_size, shuffle=train, seed=seed, weights=weights, rank=rank,
                           world=world, drop_last=train and len(dataset) // world > batch_size)
    return torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=workers,
                                       pin_memory=pin, persistent_workers=workers > 0)


# --- batched augmentation on uint8 tensors ------------------------------------------------------
AUG_PRESETS = {
    "none": dict(),
    "basic": dict(flip=0.5, scale=(0.9, 1.1), shift=0.05, rotate=0.0, brightness=0.2, contrast=0.2),
    "strong": dict(flip=0.5, scale=(0.85, 1.15), shift=0.08, rotate=10.0, brightness=0.3, contrast=0.3,
                   saturation=0.3, gray=0.1, erase=0.25),
}


class BatchTransform:
    """uint8 (B, 3, H, W) -> normalised float, with the preset's random augmentation when
    training. One affine warp (flip, scale, shift, rotation) and a few per-sample colour ops for
    the whole batch, on whatever device the batch is on."""

    def __init__(self, mean, std, preset="none"):
        if preset not in AUG_PRESETS:
            raise UserError(f"unknown augmentation {preset!r}; valid: {', '.join(AUG_PRESETS)}")
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255
        self.p = AUG_PRESETS[preset]

    def __call__(self, x, train=False, generator=None):
        x = x.float()
        if train and self.p:
            x = self._augment(x, generator)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def _augment(self, x, g):
        p, b, dev = self.p, x.shape[0], x.device

        def rand(*shape):
            return torch.rand(*shape, generator=g).to(dev)

        s = p["scale"][0] + (p["scale"][1] - p["scale"][0]) * rand(b)
        ang = (rand(b) * 2 - 1) * math.radians(p["rotate"])
        flip = torch.where(rand(b) < p["flip"], -1.0, 1.0)
        t = (rand(b, 2) * 2 - 1) * p["shift"] * 2
        cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
        theta = torch.stack([torch.stack([cos * flip, -sin, t[:, 0]], 1),
                             torch.stack([sin * flip, cos, t[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (1 + (rand(b, 1, 1, 1) * 2 - 1) * p["contrast"]) + mean
        x = x * (1 + (rand(b, 1, 1, 1) * 2 - 1) * p["brightness"])
        if p.get("saturation"):
            grey = x.mean(dim=1, keepdim=True)
            x = (x - grey) * (1 + (rand(b, 1, 1, 1) * 2 - 1) * p["saturation"]) + grey
            x = torch.where(rand(b, 1, 1, 1) < p["gray"], grey.expand_as(x), x)
        if p.get("erase"):  # one random rectangle per chosen sample, filled with the image mean
            h, w = x.shape[-2:]
            cy, cx, eh, ew = rand(b) * h, rand(b) * w, (0.1 + 0.2 * rand(b)) * h, (0.1 + 0.2 * rand(b)) * w
            yy = torch.arange(h, device=dev).view(1, h, 1)
            xx = torch.arange(w, device=dev).view(1, 1, w)
            box = ((yy - cy.view(-1, 1, 1)).abs() < eh.view(-1, 1, 1) / 2) & \
                  ((xx - cx.view(-1, 1, 1)).abs() < ew.view(-1, 1, 1) / 2)
            box &= (rand(b) < p["erase"]).view(-1, 1, 1)
            x = torch.where(box.unsqueeze(1), mean, x)
        return x.clamp(0, 255)


# --- command ------------------------------------------------------------------------------------
@cli
def main(argv):
    load_dotenv_once()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data_dir", default=env_default("SM_CHANNEL_TRAIN", "demo_data/train"),
                    help="training dir holding train.csv and images/ (env SM_CHANNEL_TRAIN)")
    ap.add_argument("--out", default=None, help="output CSV (default <data_dir>/perfect_train.csv)")
    ap.add_argument("--age_bounds", type=int, nargs=2, default=list(OFFICIAL_AGE_BOUNDS), metavar=("LOW", "HIGH"))
    ap.add_argument("--fixes", default=str(DEFAULT_FIXES), help="label fixes CSV (id,field,value)")
    ap.add_argument("--max_bad", type=float, default=0.01, help="max fraction of unreadable images")
    args = ap.parse_args(argv)
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise UserError(f"{data_dir} is not a directory: pass --data_dir or set SM_CHANNEL_TRAIN "
                        "(run 'python synthetic.py' to make the demo dataset)")
    log = Log()
    table = build_table(data_dir, tuple(args.age_bounds), args.fixes, args.max_bad, log)
    log.summary()
    out = Path(args.out) if args.out else data_dir / "perfect_train.csv"
    write_csv_atomic(table[TABLE_COLUMNS], out)
    n_people = table["people_path"].nunique()
    print(f"wrote {out}: {len(table)} images of {n_people} people; labels per class: "
          f"{np.bincount(table['label'], minlength=18).tolist()}")


if __name__ == "__main__":
    main()
