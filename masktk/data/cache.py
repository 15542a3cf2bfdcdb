"""The decode-once image cache: every photo decoded and resized once into a uint8 file that training,
folds, runs and inference share.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from masktk.data.gpu_decode import _decode_chunk_gpu, _HostStaging
from masktk.errors import UserError
from masktk.files import atomic_path, clean_stale_temps, nearest_existing
from masktk.images import decode_bytes, one_cv2_thread, prepare, read_at, read_bytes, read_rgb, why_unreadable


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


def _put_rows(ex, out, rows, arrays):
    """Write a GPU chunk's rows into `out` from the pool (one write per cache file: the rows are consecutive)
    while the next chunk is read and decoded. -> the writes' futures."""
    def put(k):
        out[k][rows] = arrays[k]
    return [ex.submit(put, k) for k in arrays]


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
    """Each thread takes 16 files at a time, start to finish: fewer hand-overs of the GIL than one task per
    image with a read-ahead thread, and no start-up cost of worker processes (docs/performance.md)."""
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
    """Write-only rows of a cache file being built, each written with pwrite: filling a memory-mapped file
    instead faults once per 4 KiB page, slow and serialised across threads in virtual machines."""

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
        """Complete and intact: the data file of its full size, and the metadata finish() wrote for it. A damaged
        or foreign cache (a torn copy, an edited file) is not used: it is decoded again."""
        try:
            meta = json.loads(self.meta.read_text())
            ok = meta["ok"]
            return (os.path.getsize(self.file) == self.nbytes and list(meta["shape"]) == list(self.shape)
                    and isinstance(ok, list) and len(ok) == len(self.paths) and all(isinstance(v, bool) for v in ok))
        except (OSError, ValueError, KeyError, TypeError):
            return False

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
            if read_at(fd, out, start * int(np.prod(self.shape[1:]))) < out.nbytes:
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
    clean_stale_temps(cache_dir)
    caches = {k: ImageCache(paths, k[0], k[1], cache_dir) for k in keys}
    missing = [k for k, c in caches.items() if not c.exists()]
    if missing:
        check_room(cache_dir, [caches[k] for k in missing])
        with contextlib.ExitStack() as stack:
            files = {k: stack.enter_context(caches[k].building()) for k in missing}
            _, ok = decode_many(paths, missing, desc=desc, device=device, out=files)
        for p, good in zip(paths, ok):
            if not good and log:
                log.warn("unreadable image", f"{p}: {why_unreadable(p)}, skipped")
        for k in missing:
            caches[k].finish(ok)
    return caches
