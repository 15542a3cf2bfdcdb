"""Data layer: labels, the label table, label fixes, person-level splits, the demo table."""
import os
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, assert_clean_error, run

from augment import BatchTransform
from dataset import Log, build_table
from labels import age_class, decode, encode, task_targets
from loaders import BatchDataset
from splits import holdout_split, kfold_split, people_of


def test_label_encode_decode_round_trip():
    for label in range(18):
        m, g, a = decode(label)
        assert encode(m, g, a) == label
        assert 0 <= m < 3 and 0 <= g < 2 and 0 <= a < 3
    assert encode(2, 1, 2) == 17 and encode(1, 0, 1) == 7


def test_age_bounds():
    ages = np.array([18, 29, 30, 57, 58, 59, 60])
    assert age_class(ages).tolist() == [0, 0, 1, 1, 1, 1, 2]
    assert age_class(ages, (29, 58)).tolist() == [0, 1, 1, 1, 2, 2, 2]


def test_table_skips_hidden_and_unknown_files_and_applies_fixes(tiny_root, tmp_path):
    d = tmp_path / "train"
    shutil.copytree(tiny_root / "train", d)
    csv = pd.read_csv(d / "train.csv", dtype=str)
    male = csv.index[csv["gender"] == "male"][0]
    other = csv.index[csv.index != male][0]
    csv.loc[male, "id"] = "004432"  # published fix: male -> female
    csv.loc[other, "id"] = "000020"  # published fix: incorrect_mask and normal swapped
    csv.to_csv(d / "train.csv", index=False)
    folder = d / "images" / csv.loc[male, "path"]
    (folder / "._mask1.jpg").write_bytes(b"\0\0")
    (folder / "notes.txt").write_text("x")
    log = Log(quiet=True)
    t = build_table(d, log=log)
    assert log.counts["hidden file"] == 1 and log.counts["unknown file"] == 1
    assert len(t) == 7 * len(csv)
    assert (t.loc[t["people_path"] == csv.loc[male, "path"], "gender"] == 1).all()
    swapped = t[t["people_path"] == csv.loc[other, "path"]]
    swapped = swapped.set_index(swapped["path"].str.rsplit("/", n=1).str[-1])
    assert swapped.loc["incorrect_mask.jpg", "mask"] == 2 and swapped.loc["normal.jpg", "mask"] == 1
    assert (t["label"] == encode(t["mask"], t["gender"], t["age"])).all()
    assert (t["sub_label"] == t["gender"] * 3 + t["age"]).all()
    assert not t["path"].str.startswith("/").any()  # relative: the file moves with the data


def test_fixes_file_holds_the_published_fixes():
    f = pd.read_csv(REPO / "label_fixes.csv", dtype=str)
    assert set(f.loc[f["value"] == "female", "id"]) == {"001498-1", "004432"}
    assert set(f.loc[f["value"] == "male", "id"]) == {f"00636{i}" for i in range(5)} | {"006359"}
    assert set(f.loc[f["field"] == "mask", "id"]) == {"000020", "004418", "005227"}


def test_committed_perfect_train_is_the_demo_table(tmp_path):
    run("synthetic.py", "--out", tmp_path / "demo")
    run("dataset.py", "--data_dir", tmp_path / "demo" / "train")
    assert (tmp_path / "demo" / "train" / "perfect_train.csv").read_bytes() == (REPO / "perfect_train.csv").read_bytes()


def test_synthetic_replaces_only_folders_it_made(tmp_path):
    """--out is replaced whole: a mistyped --out naming real data used to be deleted without a word."""
    (tmp_path / "real" / "train").mkdir(parents=True)
    (tmp_path / "real" / "train" / "train.csv").write_text("id,gender,race,age,path\n")
    p = run("synthetic.py", "--out", tmp_path / "real", "--people", "10", "--eval_ratio", "0.5", check=False)
    assert_clean_error(p, str(tmp_path / "real"), "not made by synthetic.py")
    assert (tmp_path / "real" / "train" / "train.csv").is_file() and len(list(tmp_path.iterdir())) == 1
    for people in ("10", "12"):  # its own output is replaced whole
        run("synthetic.py", "--out", tmp_path / "gen", "--people", people, "--eval_ratio", "0.5")
    assert len(pd.read_csv(tmp_path / "gen" / "eval" / "gt.csv")) + 7 * len(
        pd.read_csv(tmp_path / "gen" / "train" / "train.csv")) == 12 * 7


def _people(n_per=6):
    return pd.DataFrame({"people_path": [f"p{i:03d}" for i in range(6 * n_per)],
                         "sub_label": np.repeat(np.arange(6), n_per)})


def test_splits_are_by_person_and_stratified(tiny_root):
    people = _people()
    tr, va = holdout_split(people, 0.2, seed=1)
    assert not set(tr) & set(va) and set(tr) | set(va) == set(people["people_path"])
    folds = kfold_split(people, k=5, seed=1)
    seen = []
    lab = dict(zip(people["people_path"], people["sub_label"]))
    for tr, va in folds:
        assert not set(tr) & set(va)
        assert {lab[p] for p in va} == set(range(6)) and {lab[p] for p in tr} == set(range(6))
        seen += va
    assert sorted(seen) == sorted(people["people_path"])
    # on a real table: no person (by id, not by a path that already holds it) on both sides
    t = build_table(tiny_root / "train", log=Log(quiet=True))
    tr, va = holdout_split(people_of(t), 0.25, seed=0)
    assert not set(t.loc[t["people_path"].isin(tr), "id"]) & set(t.loc[t["people_path"].isin(va), "id"])
    assert set(t.loc[t["people_path"].isin(tr), "id"]) | set(t.loc[t["people_path"].isin(va), "id"]) == set(t["id"])


def test_one_dataset_class_serves_label_and_tasks():
    images = np.random.default_rng(0).integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    labels = np.array([0, 7, 11, 17, 3])
    ds = BatchDataset(images, np.arange(5), task_targets(labels, ["label"]))
    x, y, idx = ds[[4, 1]]
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.uint8 and y[:, 0].tolist() == [3, 7]
    ds3 = BatchDataset(images, np.arange(5), task_targets(labels, ["mask", "gender", "age"]))
    assert ds3[[3]][1].tolist() == [[2, 1, 2]]
    assert np.array_equal(x[1].permute(1, 2, 0).numpy(), images[1])


def test_augmentation_is_deterministic_for_a_generator_and_off_when_not_training():
    x = torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8)
    t = BatchTransform((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "strong")
    a = t(x, train=True, generator=torch.Generator().manual_seed(1))
    b = t(x, train=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (4, 3, 16, 16)
    plain = t(x)
    assert not torch.allclose(a, plain)  # it did augment
    c = t(x, train=True, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(a, c)  # and the generator decides how
    assert torch.allclose(plain, (x.float() - 127.5) / 63.75, atol=1e-6)  # x * scale + shift: float rounding


def test_only_plain_jpegs_go_to_the_gpu_decoder(tmp_path):
    """nvJPEG ignores EXIF orientation and cannot read PNGs: those, and truncated JPEGs, stay on the CPU."""
    from PIL import Image

    from gpu_codecs import gpu_decodable
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    img.save(tmp_path / "plain.jpg")
    img.save(tmp_path / "a.png")
    for orientation in (1, 6):
        exif = img.getexif()
        exif[0x0112] = orientation
        img.save(tmp_path / f"o{orientation}.jpg", exif=exif.tobytes())
    data = (tmp_path / "plain.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    read = {p.name: np.fromfile(p, np.uint8) for p in tmp_path.iterdir()}
    assert {n for n, d in read.items() if gpu_decodable(d)} == {"plain.jpg", "o1.jpg"}


def test_pinned_batches_cover_every_row_in_order_and_to_device_keeps_them():
    from loaders import pinned_batches, to_device
    images = np.random.default_rng(0).integers(0, 255, (10, 4, 3, 3), dtype=np.uint8)
    got = [x for (x,) in to_device(pinned_batches(images, 4, pin=False), "cpu")]
    assert [len(x) for x in got] == [4, 4, 2]
    assert np.array_equal(torch.cat(got).numpy(), images)
    assert all(x.numpy().flags.writeable for x in got)  # no read-only memmap views reach torch


def test_device_loader_gives_the_dataloaders_batches():
    """The GPU-resident loader (here on the CPU device, same code) yields exactly the batches of the
    DataLoader: same sampler, same rows, same targets, for a split that is not in cache order."""
    from loaders import DeviceLoader, make_loader
    images = np.random.default_rng(0).integers(0, 255, (40, 6, 5, 3), dtype=np.uint8)
    rows = np.random.default_rng(1).permutation(40)[:30]
    ds = BatchDataset(images, rows, task_targets(np.arange(30) % 18, ["label", "mask"]))
    ref = make_loader(ds, 8, True, seed=3)
    dev = DeviceLoader(ds, ref.sampler, "cpu")
    for epoch in (0, 1):
        ref.sampler.set_epoch(epoch)
        a, b = list(ref), list(dev)
        assert len(a) == len(b) == len(dev) == 3  # 30 // 8 full batches (drop_last when training)
        for (xa, ya, ia), (xb, yb, ib) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)



def test_threads_decode_every_file_as_one_at_a_time_would(tiny_root, tmp_path):
    """decode_many hands chunks of files to threads, which write into new arrays or the cache's files:
    every row must hold what decoding that file alone gives, and unreadable files must be marked."""
    from PIL import Image

    from cache import cached_images, decode_many
    from images import prepare, read_rgb
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
    from cache import FileRows
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


def test_batched_gpu_resize_matches_cv2_in_order(tiny_root):
    """prepare_gpu (the GPU decoding path's resize, run here on CPU tensors): photos of two shapes in one
    batch come back in their order, within a few levels of cv2's prepare."""
    from gpu_codecs import prepare_gpu
    from images import decode_bytes, prepare
    paths = sorted((tiny_root / "eval" / "images").glob("*"))[:4]
    imgs = [decode_bytes(np.fromfile(p, np.uint8), p) for p in paths]
    imgs[1] = cv2.resize(imgs[1], (300, 400))  # a second shape between the others
    imgs[3] = cv2.resize(imgs[3], (300, 400))
    for size, crop in (((224, 224), "center"), ((48, 40), "none")):
        got = prepare_gpu([torch.from_numpy(im).permute(2, 0, 1) for im in imgs], size, crop).numpy()
        want = np.stack([prepare(im, size, crop) for im in imgs])
        d = np.abs(got.astype(int) - want)
        assert got.shape == want.shape and d.mean() < 2.0 and np.percentile(d, 99) <= 16, (size, d.mean())


def test_a_broken_nvimgcodec_install_falls_back_to_nvjpeg_with_a_warning(tmp_path):
    """nvImageCodec installed but unable to start (here: its package raises on import, as a wheel built for
    another CUDA does): GPU decoding names the problem once and uses torchvision's nvJPEG."""
    pkg = tmp_path / "nvidia" / "nvimgcodec"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('libcudart.so.12: cannot open shared object file')\n")
    code = ("from gpu_codecs import gpu_jpeg_decoder\n"
            "print(gpu_jpeg_decoder('cuda')[0]); print(gpu_jpeg_decoder('cuda')[0])\n")
    p = run("-c", code, env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"})
    assert p.stdout.split("\n")[:2] == ["torchvision nvJPEG"] * 2, p.stdout
    assert p.stderr.count("warning: nvImageCodec is installed but cannot decode here") == 1, p.stderr
    assert "libcudart.so.12" in p.stderr and "Traceback" not in p.stderr


def test_host_staging_reuses_a_buffer_only_after_its_writes():
    """The GPU path's host buffers (_HostStaging, run here on CPU tensors): two sets in turn; a set is
    refilled only once the writes reading it have finished, and then in the same memory."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from gpu_codecs import _HostStaging
    key, stage, release, written = "k", _HostStaging(4), threading.Event(), []
    chunk = lambda v: torch.full((3, 2, 2, 3), v, dtype=torch.uint8)  # noqa: E731
    with ThreadPoolExecutor(1) as ex:
        stage.next()
        first = stage.host(key, chunk(1))
        slow = ex.submit(lambda a=first: (release.wait(10), written.append(a.copy())))
        stage.writes[stage.turn] = [slow]
        stage.next()
        second = stage.host(key, chunk(2))
        assert not slow.done() and not np.shares_memory(first, second)
        threading.Timer(0.3, release.set).start()
        stage.next()  # back to the first set: waits for its write
        assert slow.done() and (written[0] == 1).all()
        third = stage.host(key, chunk(3))
        assert np.shares_memory(first, third) and (third == 3).all() and (second == 2).all()


def test_gpu_chunk_path_writes_every_row_where_the_cpu_path_does(tiny_root, tmp_path, monkeypatch):
    """The first-run GPU path (cached_images on 'cuda': decode a chunk, resize it, bring it back through the
    two host buffers, write its rows into the cache file from the pool, PNG and EXIF-rotated files on the
    CPU) run here with the CPU's decoder standing in for the GPU's JPEG engine: chunks of 8 take the buffers
    in turn, and every row lands where the CPU path puts it (fallback rows exactly; the rest within the
    GPU resize's few levels, as tests/test_cuda.py holds the real decoder)."""
    from PIL import Image

    import cache
    import gpu_codecs
    from cache import cached_images
    from images import decode_bytes
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


def test_read_bytes_gives_every_byte_writable(tiny_root, tmp_path):
    """read_bytes returns a file's exact bytes in a writable array (torch.from_numpy takes it without the
    non-writable warning), an empty array for an empty file, and raises for a missing one."""
    import warnings

    from images import read_bytes
    files = sorted((tiny_root / "train" / "images").rglob("*.*"))[:5] + [tmp_path / "empty.jpg"]
    (tmp_path / "empty.jpg").touch()
    for f in files:
        got = read_bytes(f)
        assert got.dtype == np.uint8 and got.tobytes() == f.read_bytes(), f
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            torch.from_numpy(got)
    assert read_bytes(files[-1]).size == 0
    try:
        read_bytes(tmp_path / "missing.jpg")
    except FileNotFoundError:
        pass
    else:
        raise AssertionError("a missing file must raise")


def test_cache_rows_read_back_and_a_cut_cache_file_is_named(tiny_root, tmp_path):
    """ImageCache.read_into gives the rows the memory map shows, and a cache file cut short is a clear error."""
    from cache import cached_images
    from utils import UserError
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
