"""Data layer: label table, person-level splits, decode-once image cache, batched augmentation.

Write the per-image label table of a training set (default: the demo dataset):

    python dataset.py --data_dir demo_data/train              # -> demo_data/train/perfect_train.csv
    SM_CHANNEL_TRAIN=/data/train python dataset.py --age_bounds 29 58 --out table.csv

Layout read (the competition's): <data_dir>/train.csv (id, gender, race, age, path) and
<data_dir>/images/<path>/{mask1..mask5,incorrect_mask,normal}.{jpg,jpeg,png}.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from labels import (AGE_NAMES, GENDER_NAMES, MASK_NAMES, OFFICIAL_AGE_BOUNDS, TASKS, YEARS, age_class,  # noqa: F401
                    decode, encode, joint_targets, loss_targets, task_targets)
from utils import (Rising, UserError, atomic_path, check_ids, cli, demo_note, env_default, fraction, inside,
                   load_dotenv_once, make_parser, nearest_existing, positive, write_csv_atomic)

# --- layout -------------------------------------------------------------------------------------
MASK_STEMS = {"mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0, "incorrect_mask": 1, "normal": 2}
IMG_EXTS = (".jpg", ".jpeg", ".png")
GENDERS = {"male": 0, "female": 1}
TABLE_COLUMNS = ["path", "age", "gender", "mask", "label", "people_path", "sub_label"]
REPO = Path(__file__).resolve().parent
DEFAULT_FIXES = REPO / "label_fixes.csv"
# Crop of the face region used when training on images/ instead of faces/: the competition
# photos are head-and-shoulders shots with the face in the upper middle.
CENTER_REGION = (0.18, 0.12, 0.82, 0.72)  # x1, y1, x2, y2 as fractions of width/height


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
    """The label fixes file (id, field, value). A file named on the command line must exist; the repo's
    default is optional."""
    if path is None or (not Path(path).exists() and Path(path) == DEFAULT_FIXES):
        return pd.DataFrame(columns=["id", "field", "value"])
    if not Path(path).is_file():
        raise UserError(f"{path}: label fixes file not found (--fixes); give an existing CSV of id,field,value")
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
        if f.field == "gender" and f.value in GENDERS:
            people.loc[hit, "gender"] = GENDERS[f.value]
        elif f.field == "mask" and f.value == "swap_incorrect_normal":
            people.loc[hit, "mask_swap"] = True
        else:
            raise UserError(f"{fixes_path}: unknown fix {f.field}={f.value} (known: gender=male|female, "
                            "mask=swap_incorrect_normal)")
    return people


def image_ok(path, log=None) -> bool:
    """Cheap check (header, and a JPEG's end); full decoding happens once, in the cache. A tiny image is
    kept with a warning: it will be enlarged to the model's input size."""
    try:
        data = read_bytes(path)
        if data.size == 0 or truncated_jpeg(data):
            return False
        from PIL import Image
        with Image.open(io.BytesIO(data)) as im:  # the bytes already read: no second open
            w, h = im.size
        if min(w, h) < 32 and log:
            log.warn("tiny image", f"{path}: only {w}x{h} pixels; it will be enlarged to the input size")
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
            if check_images and not image_ok(f, log):
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


def has_faces(split_dir):
    """Whether face_image.py has cropped this split: its faces/boxes.csv is written last, so a folder
    left by an interrupted run does not count. Training and inference both ask this."""
    return (Path(split_dir) / "faces" / "boxes.csv").is_file()


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
    try:
        info = pd.read_csv(info_path, dtype={"ImageID": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{info_path}: cannot be read as CSV ({str(e).splitlines()[0]}); it must hold ImageID,ans rows")
    if "ImageID" not in info.columns:
        raise UserError(f"{info_path}: no ImageID column")
    if info.empty:
        raise UserError(f"{info_path}: no rows")
    check_ids(info["ImageID"], info_path)
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
def read_bytes(path):
    """A file's bytes as a uint8 array, in four system calls (open, stat, read, close) where np.fromfile
    makes 22 (Python's buffered file plus numpy's seeks): 1.5-2x the files per second on the 2-core machine
    and on an H200 machine, whose sandbox makes each call dear (README, Performance). Raises OSError like open()."""
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = np.empty(os.fstat(fd).st_size, np.uint8)
        return buf[:_read_at(fd, buf, 0)]  # shorter if the file shrank meanwhile
    finally:
        os.close(fd)


def _read_at(fd, out, at):
    """Fill the writable buffer `out` from byte `at` of the open file -> bytes read (fewer only at its end)."""
    view, got = memoryview(out).cast("B"), 0
    while got < len(view):  # a read may stop short: go on where it stopped
        n = os.preadv(fd, [view[got:]], at + got)
        if not n:
            break
        got += n
    return got


def read_rgb(path):
    """Decode any JPEG/PNG (grey, CMYK, RGBA, 16-bit, EXIF-rotated) to uint8 RGB; None if unreadable."""
    return decode_bytes(read_bytes(path), path)


def truncated_jpeg(data):
    """A JPEG whose main image lost its end: libjpeg decodes it with the missing part grey and only warns.
    The end marker is looked for after the main image's first scan, found by walking the segments from
    the start: an EXIF thumbnail (inside APP1) has an end marker of its own, and phone "motion photos"
    carry a video after the image's end."""
    if data[-2:].tobytes() == b"\xff\xd9":  # ends with an end marker: entropy-coded data cannot (FF is stuffed)
        return False
    b = data.tobytes()
    if b[:2] != b"\xff\xd8":
        return False
    i = 2
    while i + 4 <= len(b):
        if b[i] != 0xFF:
            return True  # lost in the headers: broken
        marker = b[i + 1]
        if marker == 0xFF:  # padding
            i += 1
            continue
        if marker == 0xDA:  # start of scan: entropy-coded data never holds FF D9 (FF is stuffed as FF 00)
            return b.find(b"\xff\xd9", i) < 0
        i += 2 + int.from_bytes(b[i + 2:i + 4], "big")
    return True


def decode_bytes(data, path):
    if data.size == 0 or truncated_jpeg(data):
        return None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)  # applies EXIF orientation, drops alpha, 16->8 bit
    if img is None:
        try:  # CMYK and a few exotic JPEGs: PIL converts them
            from PIL import Image, ImageOps
            with Image.open(path) as im:
                return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        except Exception:
            return None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def exif_rotated(data):
    """True when a JPEG's EXIF orientation asks for a rotation or flip (nvJPEG ignores it; cv2 applies it)."""
    head = data[:65536].tobytes()
    i = head.find(b"Exif\x00\x00")
    if i < 0:
        return False
    tiff = head[i + 6:]
    order = "little" if tiff[:2] == b"II" else "big"
    try:
        ifd = int.from_bytes(tiff[4:8], order)
        for k in range(int.from_bytes(tiff[ifd:ifd + 2], order)):
            e = tiff[ifd + 2 + 12 * k:ifd + 14 + 12 * k]
            if int.from_bytes(e[:2], order) == 0x0112:
                return int.from_bytes(e[8:10], order) not in (0, 1)
    except (IndexError, ValueError):
        return True  # unparsable: let the CPU path decide
    return False


def gpu_decodable(data):
    """Plain baseline/progressive JPEG that nvJPEG decodes to the same picture as the CPU path."""
    return data.size > 0 and data[:2].tobytes() == b"\xff\xd8" and not truncated_jpeg(data) and not exif_rotated(data)


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


def prepare_gpu(imgs, size, crop):
    """The GPU twin of `prepare` for a batch: (3, H, W) uint8 images on the GPU -> (n, H, W, 3) uint8 at the
    model's size, one resize per distinct photo shape (a competition's photos share one). Antialiased
    bilinear stands in for cv2's INTER_AREA when shrinking (tested within a few levels)."""
    out = torch.empty((len(imgs), *size, 3), dtype=torch.uint8, device=imgs[0].device)
    shapes = {}
    for i, im in enumerate(imgs):
        shapes.setdefault(tuple(im.shape), []).append(i)
    for (_, h, w), rows in shapes.items():
        x = torch.stack([imgs[i] for i in rows])
        if crop == "center":
            x1, y1, x2, y2 = center_region(w, h)
            x = x[:, :, y1:y2, x1:x2]
        x = F.interpolate(x.float(), size=tuple(size), mode="bilinear", align_corners=False,
                          antialias=x.shape[2] >= size[0])
        out[rows] = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return out


@functools.lru_cache(maxsize=None)
def gpu_jpeg_decoder(device):
    """-> (name, decode): decode(list of JPEG byte arrays) -> list of (3, H, W) uint8 images on `device`
    (None where one failed: the CPU takes those). nvImageCodec where it is installed and starts (it uses the
    hardware JPEG engines of A100, H100 and H200; on an H200 it decoded 21,000-30,000 img/s in three runs
    against torchvision's 15,000-29,000, within 1 level of libjpeg's pixels where torchvision's were up to
    78 apart), else torchvision's nvJPEG. One that is installed but cannot start (a wheel for another
    CUDA, no nvJPEG library) is named in a warning and the other is used."""
    try:
        nv = _import_nvimgcodec()
        if nv is not None:
            return "nvImageCodec", _nvimgcodec_decode(nv, torch.device(device))
    except (ImportError, OSError, RuntimeError) as e:
        print(f"warning: nvImageCodec is installed but cannot decode here ({type(e).__name__}: {e}); "
              "decoding with torchvision's nvJPEG instead", file=sys.stderr)
    return "torchvision nvJPEG", functools.partial(_nvjpeg_decode, device=device)


def _nvjpeg_decode(datas, device):
    from torchvision.io import ImageReadMode, decode_jpeg
    try:
        return decode_jpeg([torch.from_numpy(d) for d in datas], mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # nvJPEG refuses the whole batch when one file is odd: all go to the CPU
        return [None] * len(datas)


def _nvimgcodec_decode(nv, dev):
    decoder = nv.Decoder(device_id=dev.index if dev.index is not None else torch.cuda.current_device())
    params = nv.DecodeParams(color_spec=nv.ColorSpec.SRGB, apply_exif_orientation=True)

    def decode(datas):
        try:
            imgs = decoder.decode([nv.CodeStream(d) for d in datas], params=params,  # d: read, not copied
                                  cuda_stream=torch.cuda.current_stream(dev).cuda_stream)
        except RuntimeError:  # as nvJPEG: the whole batch goes to the CPU
            return [None] * len(datas)
        return [None if im is None else torch.as_tensor(im, device=dev).permute(2, 0, 1) for im in imgs]
    return decode


def _import_nvimgcodec():
    """nvidia.nvimgcodec with its JPEG extensions only, or None where it is not installed. The others
    (JPEG 2000, TIFF) print errors at start when their libraries are absent, and only JPEGs are decoded on
    the GPU here. The nvJPEG library comes from the nvidia-nvjpeg wheel (CUDA 13; nvidia-nvjpeg-cu12 for 12)."""
    import ctypes
    import importlib.util
    import tempfile
    try:
        spec = importlib.util.find_spec("nvidia.nvimgcodec")
    except ModuleNotFoundError:
        return None
    if spec is None:
        return None
    wheels = ("nvidia/cu13/lib/libnvjpeg.so.13", "nvidia/nvjpeg/lib/libnvjpeg.so.12")  # nvidia-nvjpeg(-cu12)
    for lib in (Path(base or ".") / w for base in sys.path for w in wheels):
        if lib.is_file():  # loaded by its soname, the extension finds it wherever the wheel put it
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            break
    if "NVIMGCODEC_EXTENSIONS_PATH" in os.environ:  # the user's choice
        from nvidia import nvimgcodec
        return nvimgcodec
    with tempfile.TemporaryDirectory() as keep:
        for ext in (Path(spec.origin).parent / "extensions").glob("lib*jpeg*_ext.so*"):
            if "jpeg2k" not in ext.name:
                (Path(keep) / ext.name).symlink_to(ext)
        os.environ["NVIMGCODEC_EXTENSIONS_PATH"] = keep
        try:
            from nvidia import nvimgcodec  # loads the extensions, once per process
        finally:
            del os.environ["NVIMGCODEC_EXTENSIONS_PATH"]
    return nvimgcodec


def _decode_chunk_gpu(datas, sizes_crops, device, to_host):
    """One chunk's JPEG bytes -> ({key: uint8 (n, H, W, 3) on the host}, indices decoded). The GPU decodes
    the batch at once (gpu_jpeg_decoder); whatever it cannot take (PNG, CMYK, EXIF-rotated, refused) is
    left to the CPU. to_host(key, tensor) brings each result back (_HostStaging.host)."""
    idx = [j for j, d in enumerate(datas) if gpu_decodable(d)]
    imgs = gpu_jpeg_decoder(str(device))[1]([datas[j] for j in idx]) if idx else []
    done = [j for j, im in zip(idx, imgs) if im is not None]
    imgs = [im for im in imgs if im is not None]
    if not imgs:
        return {}, []
    return {k: to_host(k, prepare_gpu(imgs, k[0], k[1])) for k in sizes_crops}, done


def decode_many(paths, sizes_crops, workers=None, desc="decode", face_fn=None, chunk=256, device="cpu", out=None):
    """Decode each file once and prepare it for every (size, crop) asked: -> ({(size, crop): uint8
    array (N, H, W, 3)}, ok mask). out: arrays to fill (the cache's files, see FileRows), else new ones.
    Threads: cv2 releases the GIL while decoding. crop 'face' needs face_fn (list of images -> list of
    face crops, e.g. MTCNN + the shared crop of face_image.py), which runs on whole chunks of decoded
    images; device 'cuda': JPEGs are decoded in batches on the GPU (gpu_jpeg_decoder) and resized there, the
    rest of each chunk on the CPU."""
    n = len(paths)
    out = out or {k: np.zeros((n, k[0][0], k[0][1], 3), np.uint8) for k in sizes_crops}
    if any(c == "face" for _, c in sizes_crops) and face_fn is None:
        raise ValueError("crop 'face' needs a face_fn")
    workers = workers or os.cpu_count()
    gpu = torch.device(device).type == "cuda" and face_fn is None
    if face_fn is None and not gpu:
        return out, _decode_in_threads(paths, out, workers, desc)
    ok, stage = np.zeros(n, bool), _HostStaging(chunk)
    with one_cv2_thread(), ThreadPoolExecutor(workers) as ex, _bar(n, desc) as bar:
        for start, datas in _read_ahead(ex, paths, chunk):
            done = []
            if gpu:
                stage.next()
                arrays, done = _decode_chunk_gpu(datas, sizes_crops, device, stage.host)
                stage.writes[stage.turn] = _put_rows(ex, out, [start + j for j in done], arrays)
                ok[[start + j for j in done]] = True
            rest = sorted(set(range(len(datas))) - set(done))
            _decode_chunk_cpu(ex, [datas[j] for j in rest], [paths[start + j] for j in rest],
                              [start + j for j in rest], out, ok, face_fn)
            bar.update(len(datas))
        stage.drain()
    return out, ok


class _HostStaging:
    """Two sets of host buffers of one chunk each (pinned on CUDA), used in turn: a chunk comes off the GPU
    into one set while the other set's rows are still being written out (_put_rows). A new host array for
    every chunk costs a page fault per 4 KiB: a chunk is 38 MB at 224x224, which took 18.6 ms to allocate and
    fill against 1.9 ms to refill a buffer (2-core machine); with them an H200 machine built the eval cache on the
    GPU at 5,600-6,400 img/s against 4,000 before (README, On a GPU)."""

    def __init__(self, chunk):
        self.chunk, self.turn, self.bufs, self.writes = chunk, 0, {}, [[], []]

    def next(self):
        """Take the other set, once the writes still reading it have finished."""
        self.turn ^= 1
        for w in self.writes[self.turn]:
            w.result()
        self.writes[self.turn] = []

    def drain(self):
        """Wait for every write still reading either set."""
        self.next(), self.next()

    def host(self, key, t):
        """Tensor t (a chunk's rows for `key`) -> its copy in this turn's buffer, as a numpy array."""
        buf = self.bufs.get((self.turn, key))
        if buf is None:
            buf = self.bufs[self.turn, key] = torch.empty((self.chunk, *t.shape[1:]), dtype=t.dtype,
                                                          pin_memory=t.is_cuda)
        buf[:len(t)].copy_(t)
        return buf[:len(t)].numpy()


def _put_rows(ex, out, rows, arrays):
    """Write a GPU chunk's rows into `out` from the pool (one write per cache file: the rows are consecutive)
    while the next chunk is read and decoded. -> the writes' futures."""
    def put(k):
        out[k][rows] = arrays[k]
    return [ex.submit(put, k) for k in arrays]


@contextlib.contextmanager
def one_cv2_thread():
    """Parallel over images, not inside each resize: no oversubscription."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def _bar(n, desc):
    from tqdm import tqdm
    return tqdm(total=n, desc=desc, leave=False, disable=True if n < 200 else None, file=sys.stderr)


def _write_row(out, r, img, face=None):
    """Row r of every array in `out`, prepared from the decoded image (crop 'face': from its face crop)."""
    for (size, crop), arr in out.items():
        arr[r] = prepare(face if crop == "face" else img, size, "none" if crop == "face" else crop)


def _decode_rows(paths, rows, out):
    """Decode the files of `rows`, prepare them and write them into `out`; -> the rows that decoded."""
    done = []
    for r in rows:
        img = read_rgb(paths[r])
        if img is not None:
            _write_row(out, r, img)
            done.append(r)
    return done


def _decode_in_threads(paths, out, workers, desc, chunk=16):
    """Each thread takes 16 files at a time, start to finish. One task per image, with the files read
    ahead by another thread (the way before), cost more hand-overs of the GIL than it gained (2-core CPU:
    1.2x faster on 4,000 photos; README, Performance). Forked worker processes were slower than these
    threads there (and about 50 ms to start)."""
    ok = np.zeros(len(paths), bool)
    chunks = [range(s, min(s + chunk, len(paths))) for s in range(0, len(paths), chunk)]
    with one_cv2_thread(), ThreadPoolExecutor(workers) as ex, _bar(len(paths), desc) as bar:
        for rows, done in zip(chunks, ex.map(lambda rows: _decode_rows(paths, rows, out), chunks)):
            ok[done] = True
            bar.update(len(rows))
    return ok


def _read_ahead(ex, paths, chunk):
    """-> (start, [file bytes]) per chunk; the next chunk's files are being read meanwhile."""
    def read(start):
        return list(ex.map(read_bytes, paths[start:start + chunk]))
    starts = list(range(0, len(paths), chunk))
    with ThreadPoolExecutor(1) as reader:
        nxt = reader.submit(read, starts[0]) if starts else None
        for k, start in enumerate(starts):
            datas = nxt.result()
            if k + 1 < len(starts):
                nxt = reader.submit(read, starts[k + 1])
            yield start, datas


def _decode_chunk_cpu(ex, datas, paths, rows, out, ok, face_fn):
    imgs = list(ex.map(decode_bytes, datas, paths))
    good = [j for j, im in enumerate(imgs) if im is not None]
    faces = dict(zip(good, face_fn([imgs[j] for j in good]))) if face_fn and good else {}

    def work(j):
        _write_row(out, rows[j], imgs[j], faces.get(j))
        ok[rows[j]] = True

    list(ex.map(work, good))


class FileRows:
    """Write-only rows of a cache file being built, each written with pwrite. Filling a memory-mapped
    file instead faults once per 4 KiB page, and in a virtual machine those faults are slow and
    serialised across threads (measured: 3,500 img/s with 16 threads on an H200 machine)."""

    def __init__(self, fd, shape):
        self.fd, self.row = fd, int(np.prod(shape[1:]))

    def __setitem__(self, rows, values):
        values = np.ascontiguousarray(values, dtype=np.uint8)
        if np.ndim(rows) == 0:
            return self._write(values, int(rows))
        rows = np.asarray(rows, np.int64).reshape(-1)
        # one write per run of consecutive rows (a GPU chunk is one run): each system call is dear in a VM
        for run in np.split(np.arange(len(rows)), np.flatnonzero(np.diff(rows) != 1) + 1) if len(rows) else []:
            self._write(values[run[0]:run[-1] + 1], int(rows[run[0]]))

    def _write(self, block, row):
        data, at = memoryview(block).cast("B"), row * self.row
        while data:  # a write may stop short (signals, huge runs): go on where it stopped
            n = os.pwrite(self.fd, data, at)
            data, at = data[n:], at + n


class ImageCache:
    """uint8 (N, H, W, 3) memory-mapped file of every image, decoded and resized once.

    Shared by loader workers, folds, runs and inference; the key covers the files' paths, sizes and
    mtimes, the size and the crop, so any change rebuilds it. Build with `cached_images`.
    """

    VERSION = 2

    def __init__(self, paths, size, crop, cache_dir):
        self.paths = [os.fspath(p) for p in paths]
        self.size, self.crop = tuple(size), crop
        # One stat per file, nothing else per file (resolve() and abspath() cost syscalls each): a key
        # check on a warm cache must stay small next to a GPU pass over the same images.
        cwd = os.getcwd()
        lines = [f"{self.VERSION}|{self.size}|{crop}"]
        for p in self.paths:
            st = os.stat(p)
            lines.append(f"{os.path.join(cwd, p)}|{st.st_size}|{st.st_mtime_ns}")
        self.key = hashlib.sha1("\n".join(lines).encode()).hexdigest()[:16]
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

    @contextlib.contextmanager
    def building(self):
        """Yield the rows of a temp file to fill (FileRows); on success it becomes the cache. The
        decoder writes each image straight into it: no second copy of every image, no write pass."""
        with atomic_path(self.file) as tmp, open(tmp, "r+b", buffering=0) as f:
            f.truncate(self.nbytes)
            yield FileRows(f.fileno(), self.shape)

    def __len__(self):
        return self.shape[0]

    def read_into(self, start, out):
        """Rows start:start+len(out) into `out` (a writable uint8 array) with plain reads: the kernel
        copies from the page cache, and nothing is mapped (see FileRows)."""
        fd = os.open(self.file, os.O_RDONLY)
        try:
            if _read_at(fd, out, start * int(np.prod(self.shape[1:]))) < out.nbytes:
                raise UserError(f"{self.file}: cache file is shorter than its metadata says; delete it")
        finally:
            os.close(fd)

    def finish(self, ok):
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


def check_room(cache_dir, caches):
    """Refuse, before decoding anything, a cache the disk cannot hold: its file is sparse, so a full disk
    would only show once the decoder had filled most of it."""
    need = sum(c.nbytes for c in caches)
    free = shutil.disk_usage(nearest_existing(cache_dir)).free
    if need > free:
        sizes = " and ".join(f"{c.size[0]}x{c.size[1]}" for c in caches)
        raise UserError(f"{cache_dir}: the decoded-image cache of {len(caches[0])} images at {sizes} needs "
                        f"{need / 2**20:,.0f} MiB and the disk has {free / 2**20:,.0f} MiB free: free space, pass "
                        "--cache_dir on a larger disk, or use a smaller --img_size")


def cached_images(paths, keys, cache_dir, log=None, desc="caching images", device="cpu"):
    """{(size, crop): ImageCache} over the same files; every key not cached yet is built from one
    decoding pass (on `device`: see decode_many). Undecodable files are named in `log` and marked in
    each cache's `ok`."""
    caches = {k: ImageCache(paths, k[0], k[1], cache_dir) for k in keys}
    missing = [k for k, c in caches.items() if not c.exists()]
    if missing:
        check_room(cache_dir, [caches[k] for k in missing])
        with contextlib.ExitStack() as stack:
            files = {k: stack.enter_context(caches[k].building()) for k in missing}
            _, ok = decode_many(paths, missing, desc=desc, device=device, out=files)
        for p, good in zip(paths, ok):
            if not good and log:
                log.warn("unreadable image", f"{p}: cannot be decoded, skipped")
        for k in missing:
            caches[k].finish(ok)
    return caches


class BatchDataset(torch.utils.data.Dataset):
    """Indexed by a list of indices: returns a whole uint8 batch (B, 3, H, W) and its targets.

    One code path for the 18-class label and the task labels: `targets` has one column per task.
    """

    def __init__(self, images, rows, targets):
        self.images, self.rows, self.targets = images, np.asarray(rows), torch.as_tensor(targets)

    def __len__(self):
        return len(self.rows)

    @property
    def image_shape(self):
        return tuple(self.images.shape[1:])  # (H, W, 3)

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


def make_loader(dataset, batch_size, train, seed, weights=None, workers=0, rank=0, world=1, pin=False,
                gpu=None):
    """Batches of (uint8 images (B, 3, H, W), targets, indices). gpu: a CUDA device on which to hold the
    images when they take under a quarter of its free memory (DeviceLoader); else a DataLoader."""
    sampler = BatchSampler(len(dataset), batch_size, shuffle=train, seed=seed, weights=weights, rank=rank,
                           world=world, drop_last=train and len(dataset) // world > batch_size)
    if gpu is not None and torch.device(gpu).type == "cuda":
        if len(dataset) * int(np.prod(dataset.image_shape)) < torch.cuda.mem_get_info(gpu)[0] / 4:
            return DeviceLoader(dataset, sampler, gpu)
    return torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=workers,
                                       pin_memory=pin, persistent_workers=workers > 0)


def send(t, device):
    """A small host tensor to `device` without stalling it: pinned first on CUDA, then an asynchronous copy."""
    return (t.pin_memory() if device.type == "cuda" else t).to(device, non_blocking=True)


def to_device(batches, device):
    """Yield each batch (a tuple of tensors) on `device`. On CUDA the next batch is copied on a side
    stream while the current one computes (from pinned memory: asynchronous); elsewhere a plain move."""
    device = torch.device(device)
    if device.type != "cuda":
        yield from (tuple(t.to(device) for t in b) for b in batches)
        return
    stream, main, current = torch.cuda.Stream(device), torch.cuda.current_stream(device), None
    for b in batches:
        with torch.cuda.stream(stream):
            nxt = tuple(t.to(device, non_blocking=True) for t in b)
        if current is not None:
            yield current
        main.wait_stream(stream)
        for t in nxt:  # the main stream uses memory the side stream allocated
            t.record_stream(main)
        current = nxt
    if current is not None:
        yield current


def pinned_batches(images, batch_size, pin, threads=4):
    """uint8 (N, H, W, 3) images (an array or an ImageCache) -> batches as tensors, each read once
    straight into (pinned, when `pin`) memory by helper threads while the caller computes."""
    def load(i):
        out = torch.empty((min(batch_size, len(images) - i),) + tuple(images.shape[1:]), dtype=torch.uint8,
                          pin_memory=pin)
        if isinstance(images, ImageCache):
            images.read_into(i, out.numpy())
        else:
            out.numpy()[...] = images[i:i + batch_size]
        return (out,)
    starts = range(0, len(images), batch_size)
    with ThreadPoolExecutor(threads) as ex:
        ahead = [ex.submit(load, i) for i in starts[:threads]]
        for k in range(len(starts)):
            if k + threads < len(starts):
                ahead.append(ex.submit(load, starts[k + threads]))
            yield ahead[k].result()
            ahead[k] = None


class DeviceLoader:
    """A split's uint8 images held on the GPU: each batch is one gather there, with no worker processes,
    no host copies and no transfers (the profile of the DataLoader path on an H200: the host, not the
    GPU, set the pace). Same sampler, same batches as the DataLoader it replaces."""

    def __init__(self, dataset, sampler, device, chunk=512):
        self.sampler, self.device = sampler, torch.device(device)
        n = len(dataset)
        self.images = torch.empty((n,) + tuple(dataset.image_shape), dtype=torch.uint8, device=self.device)
        for s in range(0, n, chunk):
            x, _, _ = dataset[np.arange(s, min(n, s + chunk))]
            self.images[s:s + chunk] = x.permute(0, 2, 3, 1).to(self.device)
        self.targets = dataset.targets.to(self.device)

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        for idx in self.sampler:
            i = send(torch.as_tensor(idx), self.device)
            yield self.images[i].permute(0, 3, 1, 2), self.targets[i], i


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
        # (x - mean) / std as x * scale + shift: one kernel (addcmul reads the uint8 batch itself)
        # instead of three passes over a float copy
        self.scale = 1 / (torch.tensor(std).view(1, 3, 1, 1) * 255)
        self.shift = -torch.tensor(mean).view(1, 3, 1, 1) * 255 * self.scale
        self.p = AUG_PRESETS[preset]

    def __call__(self, x, train=False, generator=None):
        if train and self.p:
            x = self._augment(x.float(), generator)
        if self.scale.device != x.device:  # moved once: a blocking copy per batch would stall the GPU
            self.scale, self.shift = self.scale.to(x.device), self.shift.to(x.device)
        return torch.addcmul(self.shift, x, self.scale)

    def _augment(self, x, g):
        p, b, dev = self.p, x.shape[0], x.device
        # Every random number of the batch in one draw from the CPU generator (the same stream on any
        # device), sent in one asynchronous copy: no host synchronisation per batch.
        r = send(torch.rand(b, 14, generator=g), dev)
        s = p["scale"][0] + (p["scale"][1] - p["scale"][0]) * r[:, 0]
        ang = (r[:, 1] * 2 - 1) * math.radians(p["rotate"])
        flip = torch.where(r[:, 2] < p["flip"], -1.0, 1.0)
        t = (r[:, 3:5] * 2 - 1) * p["shift"] * 2
        cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
        theta = torch.stack([torch.stack([cos * flip, -sin, t[:, 0]], 1),
                             torch.stack([sin * flip, cos, t[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        per_sample = r.view(b, 14, 1, 1, 1)
        x = (x - mean) * (1 + (per_sample[:, 5] * 2 - 1) * p["contrast"]) + mean
        x = x * (1 + (per_sample[:, 6] * 2 - 1) * p["brightness"])
        if p.get("saturation"):
            grey = x.mean(dim=1, keepdim=True)
            x = (x - grey) * (1 + (per_sample[:, 7] * 2 - 1) * p["saturation"]) + grey
            x = torch.where(per_sample[:, 8] < p["gray"], grey.expand_as(x), x)
        if p.get("erase"):  # one random rectangle per chosen sample, filled with the image mean
            h, w = x.shape[-2:]
            cy, cx, eh, ew = r[:, 9] * h, r[:, 10] * w, (0.1 + 0.2 * r[:, 11]) * h, (0.1 + 0.2 * r[:, 12]) * w
            yy = torch.arange(h, device=dev).view(1, h, 1)
            xx = torch.arange(w, device=dev).view(1, 1, w)
            box = ((yy - cy.view(-1, 1, 1)).abs() < eh.view(-1, 1, 1) / 2) & \
                  ((xx - cx.view(-1, 1, 1)).abs() < ew.view(-1, 1, 1) / 2)
            box &= (r[:, 13] < p["erase"]).view(-1, 1, 1)
            x = torch.where(box.unsqueeze(1), mean, x)
        return x.clamp(0, 255)


# --- command ------------------------------------------------------------------------------------
@cli
def main(argv):
    load_dotenv_once()
    ap = make_parser(__doc__)
    ap.add_argument("--data_dir", default=env_default("SM_CHANNEL_TRAIN", "demo_data/train"),
                    help="training dir holding train.csv and images/ (env SM_CHANNEL_TRAIN)")
    ap.add_argument("--out", default=None, help="output CSV (default <data_dir>/perfect_train.csv)")
    ap.add_argument("--age_bounds", type=positive(int, 1, inclusive=True), nargs=2, action=Rising,
                    default=list(OFFICIAL_AGE_BOUNDS), metavar=("LOW", "HIGH"))
    ap.add_argument("--fixes", default=str(DEFAULT_FIXES), help="label fixes CSV (id,field,value)")
    ap.add_argument("--max_bad", type=fraction, default=0.01, help="max fraction of unreadable images")
    args = ap.parse_args(argv)
    demo_note(args.data_dir, "demo_data/train", "SM_CHANNEL_TRAIN", "--data_dir", argv)
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
