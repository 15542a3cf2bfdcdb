"""masktk/data/cache.py: the decode-once image cache."""
import os
import shutil

import numpy as np
import pytest
import torch


def test_a_cache_the_disk_cannot_hold_is_refused_before_decoding(tiny_root, tmp_path, monkeypatch):
    """Its file is sparse, so a full disk showed only after most of the decoding, as a bare ENOSPC. The disk
    is made to report 1 MiB free (filling a real one would take the machine with it if the check broke)."""
    from masktk.data import cache
    from masktk.errors import UserError
    paths = sorted((tiny_root / "train" / "images").rglob("*.jpg"))[:2]
    real = shutil.disk_usage
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: real(p)._replace(free=2**20))
    with pytest.raises(UserError, match=r"cache of 2 images at 512x512 needs 2 MiB and the disk has 1 MiB free"):
        cache.cached_images(paths, [((512, 512), "center")], tmp_path / "cache")  # 1.5 MiB
    assert not (tmp_path / "cache").exists()
    small = cache.cached_images(paths, [((256, 256), "center")], tmp_path / "cache")  # 0.4 MiB fits
    assert small[((256, 256), "center")].ok.all()


def test_threads_decode_every_file_as_one_at_a_time_would(tiny_root, tmp_path):
    """decode_many hands chunks of files to threads, which write into new arrays or the cache's files:
    every row must hold what decoding that file alone gives, and unreadable files must be marked."""
    from PIL import Image

    from masktk.data.cache import cached_images, decode_many
    from masktk.images import prepare, read_rgb
    photos = sorted((tiny_root / "train" / "images").glob("*/*.jpg"))[:70]
    assert len(photos) == 70  # several chunks of 16
    paths = [shutil.copy(p, tmp_path / f"{i}.jpg") for i, p in enumerate(photos)]
    Image.open(photos[0]).convert("RGBA").save(tmp_path / "rgba.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not a photo")
    paths[40:40] = [tmp_path / "empty.jpg", tmp_path / "rgba.png", tmp_path / "text.jpg"]
    keys = [((40, 32), "center"), ((24, 24), "none")]
    out, ok = decode_many(paths, keys, workers=2)
    cache = cached_images(paths, keys[:1], tmp_path / "cache")[keys[0]]
    assert np.flatnonzero(~ok).tolist() == np.flatnonzero(~cache.ok).tolist() == [40, 42]
    for size, crop in keys:
        want = np.zeros_like(out[(size, crop)])
        for i in np.flatnonzero(ok):
            want[i] = prepare(read_rgb(paths[i]), size, crop)
        assert np.array_equal(out[(size, crop)], want)
    assert np.array_equal(cache.array, out[keys[0]])


def test_file_rows_write_runs_and_single_rows(tmp_path):
    """FileRows writes consecutive rows with one call: scattered, consecutive and single rows all land."""
    from masktk.data.cache import FileRows
    shape = (10, 4, 3, 3)
    want = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    f = tmp_path / "rows.bin"
    with open(f, "wb+") as fh:
        fh.truncate(want.nbytes)
        rows = FileRows(fh.fileno(), shape)
        rows[[0, 1, 2, 5, 7, 8]] = want[[0, 1, 2, 5, 7, 8]]
        rows[np.array([9, 3])] = want[[9, 3]]
        rows[4] = want[4]
        rows[6] = want[6]
    assert np.array_equal(np.fromfile(f, np.uint8).reshape(shape), want)


def test_gpu_chunk_path_writes_every_row_where_the_cpu_path_does(tiny_root, tmp_path, monkeypatch):
    """The first-run GPU path (cached_images on 'cuda': decode a chunk, resize it, bring it back through the
    two host buffers, write its rows into the cache file from the pool, PNG and EXIF-rotated files on the
    CPU) run here with the CPU's decoder standing in for the GPU's JPEG engine: chunks of 8 take the buffers
    in turn, and every row lands where the CPU path puts it (fallback rows exactly; the rest within the
    GPU resize's few levels, as tests/test_cuda.py holds the real decoder)."""
    from PIL import Image

    from masktk.data import cache
    from masktk.data import gpu_decode as gpu_codecs
    from masktk.data.cache import cached_images
    from masktk.images import decode_bytes
    src = sorted((tiny_root / "eval" / "images").glob("*.jpg"))[:32]
    Image.open(src.pop()).save(tmp_path / "as.png")  # photos of their own: each row has one right place
    im = Image.open(src.pop())
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    paths = src[:13] + [tmp_path / "as.png"] + src[13:] + [tmp_path / "rotated.jpg"]
    cpu_engine = lambda datas: [torch.from_numpy(decode_bytes(d, "x")).permute(2, 0, 1) for d in datas]  # noqa: E731
    monkeypatch.setattr(gpu_codecs, "gpu_jpeg_decoder", lambda device: ("the CPU's, standing in", cpu_engine))
    real_decode_many = cache.decode_many
    monkeypatch.setattr(cache, "decode_many", lambda *a, **k: real_decode_many(*a, **k | dict(chunk=8)))
    keys = [((64, 48), "center"), ((24, 24), "none")]
    gpu = cached_images(paths, keys, tmp_path / "gpu", device="cuda")
    cpu = cached_images(paths, keys, tmp_path / "cpu", device="cpu")
    fallback = [13, len(paths) - 1]
    for k in keys:
        assert gpu[k].ok.all() and cpu[k].ok.all()
        g, c = np.asarray(gpu[k].array).astype(int), np.asarray(cpu[k].array).astype(int)
        assert (g[fallback] == c[fallback]).all(), "PNG and EXIF-rotated rows are the CPU's own"
        d = np.abs(np.delete(g, fallback, 0) - np.delete(c, fallback, 0))
        assert d.mean() < 2.0 and np.percentile(d, 99) <= 16, (k, d.mean(), np.percentile(d, 99))
        nearest = [int(np.abs(c - row).mean(axis=(1, 2, 3)).argmin()) for row in g]
        assert nearest == list(range(len(paths))), "each row must be its own photo's"


def test_cache_rows_read_back_and_a_cut_cache_file_is_named(tiny_root, tmp_path):
    """ImageCache.read_into gives the rows the memory map shows, and a cache file cut short is a clear error."""
    from masktk.data.cache import cached_images
    from masktk.errors import UserError
    paths = sorted((tiny_root / "train" / "images").rglob("*.jpg"))[:5]
    key = ((32, 24), "center")
    cache = cached_images(paths, [key], tmp_path)[key]
    out = np.empty((3, 32, 24, 3), np.uint8)
    cache.read_into(2, out)
    assert np.array_equal(out, cache.array[2:5]) and out.any()
    with open(cache.file, "r+b") as f:
        f.truncate(cache.nbytes - 1)
    cache.read_into(0, out)  # rows before the cut still read
    with pytest.raises(UserError, match="cache file is shorter than its metadata says; delete it"):
        cache.read_into(2, out)


def test_temp_files_of_a_killed_run_are_cleaned_by_the_next_and_a_live_ones_kept(tiny_root, tmp_path):
    """A kill -9 while decoding left .tmp-images-*.u8 in the cache forever."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import REPO

    from masktk.data.cache import cached_images
    cache = tmp_path / "cache"
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from masktk.files import atomic_path\n"
            "with atomic_path(sys.argv[2]) as t:\n"
            "    t.write_bytes(b'x' * 1000); print('writing', flush=True); time.sleep(120)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(REPO), str(cache / "images-abc.u8")],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    from masktk.files import atomic_path
    with atomic_path(cache / "images-live.u8") as live:  # this process's, still being written
        live.write_bytes(b"y")
        assert len(list(cache.glob(".tmp-images-*"))) == 2
        paths = sorted((tiny_root / "train" / "images").rglob("*.jpg"))[:3]
        cached_images(paths, [((32, 32), "center")], cache)
        assert [f.name for f in cache.glob(".tmp-images-*")] == [live.name]


def test_a_damaged_cache_is_decoded_again_not_trusted(tiny_root, tmp_path):
    """The toolkit reads its cache back: a metadata file that is not its own (damaged, edited, another length) or
    a data file cut short makes the next run decode the photos again, to the same rows."""
    from masktk.data.cache import cached_images
    paths = sorted((tiny_root / "train" / "images").rglob("*.jpg"))[:4]
    key = ((32, 24), "center")
    first = cached_images(paths, [key], tmp_path)[key]
    rows = np.array(first.array)
    for damage in (lambda c: c.meta.write_text("{not json"), lambda c: c.meta.write_text('{"ok": [true], "shape": []}'),
                   lambda c: os.truncate(c.file, c.nbytes // 2)):
        damage(first)
        again = cached_images(paths, [key], tmp_path)[key]
        assert again.exists() and np.array_equal(np.array(again.array), rows) and again.ok.all()
