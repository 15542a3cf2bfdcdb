"""Where first-run decoding can go on a GPU machine: img/s of each decoder on the eval photos, bytes already
in memory, and of the steps around it (reading, resizing, writing the cache). Run by .ci/gpu-check's codec step:
    python .ci/codec_probe.py DATA_DIR [SIZE]
nvImageCodec (nvidia-nvimgcodec-cu13 + nvidia-nvjpeg wheels) is optional: its lines are skipped when missing."""
import glob
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from masktk.checkpoint import CheckpointMeta
from masktk.data.cache import decode_many
from masktk.data.gpu_decode import prepare_gpu
from masktk.images import decode_bytes, read_bytes

paths = sorted(glob.glob(sys.argv[1] + "/eval/images/*"))[:4200]
SIZE = int(sys.argv[2]) if len(sys.argv) > 2 else 224
KEY = ((SIZE, SIZE), "center")
CHUNK = 256
N = len(paths)
cuda = torch.cuda.is_available()


def sync():
    if cuda:
        torch.cuda.synchronize()


def rate(name, fn, repeat=2):
    """Best of `repeat` timings after one warm-up: prints img/s, returns the last result."""
    out = fn()
    best = float("inf")
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    print(f"{name}: {N / best:,.0f} img/s ({best * 1000:.0f} ms for {N})", flush=True)
    return out


def read_all(workers=16, read=read_bytes):
    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(read, paths))


def lite0():
    """The benchmark's model with random weights (speed only), on the GPU in channels_last."""
    import timm
    return timm.create_model("efficientnet_lite0", num_classes=18).cuda().eval().to(memory_format=torch.channels_last)


def chunks(seq):
    return [seq[i:i + CHUNK] for i in range(0, len(seq), CHUNK)]


def focus():
    """This session's open questions only: which nvImageCodec set-up overlaps with reading, and whether a warm
    pass lost speed when the cache's batch reads moved from a buffered file to os.open + preadv."""
    datas = read_all()
    probe_decoder_setups(datas)
    probe_warm_read_into()


def main():
    print(f"{N} photos, {SIZE}x{SIZE}, torch {torch.__version__}, cuda {torch.version.cuda}, "
          f"{torch.cuda.get_device_name() if cuda else 'no GPU'}, {os.cpu_count()} cores", flush=True)
    rate("read bytes with np.fromfile (22 system calls a file), 16 threads",
         lambda: read_all(read=lambda p: np.fromfile(p, np.uint8)))
    datas = rate("read bytes with read_bytes (4 system calls a file), 16 threads", read_all)
    print(f"mean file {np.mean([d.size for d in datas]) / 1024:.1f} KiB", flush=True)
    rate("cv2 decode + prepare, 16 threads (decode_many)", lambda: decode_many(paths, [KEY], workers=16))
    ref = [decode_bytes(d, p) for d, p in zip(datas[:64], paths[:64])]
    if not cuda:
        return
    from torchvision.io import ImageReadMode, decode_jpeg
    tens = [torch.from_numpy(d) for d in datas]

    def tv_decode():
        return [im for c in chunks(tens) for im in decode_jpeg(c, mode=ImageReadMode.RGB, device="cuda")]
    imgs = rate("torchvision nvJPEG decode only, chunks of 256", tv_decode)
    diff = max(int((imgs[i].permute(1, 2, 0).cpu().int() - torch.from_numpy(ref[i]).int()).abs().max()) for i in range(64))
    print(f"  torchvision nvJPEG vs cv2: max abs diff {diff}", flush=True)
    rate("batched resize on the GPU (prepare_gpu, chunks of 256)",
         lambda: [prepare_gpu(c, (SIZE, SIZE), "center") for c in chunks(imgs)])
    out = torch.cat([prepare_gpu(c, (SIZE, SIZE), "center") for c in chunks(imgs)])
    pinned = torch.empty(out.shape, dtype=torch.uint8, pin_memory=True)
    rate("device -> pinned host copy", lambda: pinned.copy_(out, non_blocking=True))
    with tempfile.NamedTemporaryFile(dir="/tmp") as f:
        mm = np.memmap(f.name, np.uint8, "w+", shape=tuple(out.shape))
        host = pinned.numpy()
        rate("pinned host -> memmap file in /tmp (one copy)", lambda: mm.__setitem__(slice(None), host))
        rate("pinned host -> memmap file, 16 threads", lambda: list(ThreadPoolExecutor(16).map(
            lambda s: mm.__setitem__(s, host[s]), [slice(i, i + CHUNK) for i in range(0, N, CHUNK)])))
    probe_nvimgcodec(datas, ref)
    from masktk.data.gpu_decode import gpu_jpeg_decoder
    name = gpu_jpeg_decoder("cuda")[0]
    rate(f"decode_many on the GPU ({name}), into arrays", lambda: decode_many(paths, [KEY], workers=16, device="cuda"))
    from masktk.data.cache import cached_images
    for dev in ("cuda", "cpu"):
        rate(f"cached_images on {dev}, a fresh cache file each time",
             lambda: cached_images(paths, [KEY], tempfile.mkdtemp(dir="/tmp"), device=dev))
    probe_writes(out.cpu().numpy())
    probe_gpu_resident(datas)
    probe_reading_pipeline()
    probe_warm_readers()
    profile_main_thread(lambda: cached_images(paths, [KEY], tempfile.mkdtemp(dir="/tmp"), device="cuda"))


def probe_gpu_resident(datas):
    """The bound of a first run whose images never leave the GPU: JPEGs decoded (nvImageCodec where
    installed), resized and normalised there and predicted by efficientnet_lite0 (bf16, channels_last, batches
    of 128), against the model alone; with the bytes in memory, with the files read a chunk ahead by 16
    threads, and with each chunk also copied to a pinned buffer and written to a cache file by the pool."""
    from masktk.data.cache import FileRows, _read_ahead
    from masktk.data.gpu_decode import gpu_jpeg_decoder
    model = lite0()
    mean = torch.tensor([0.5, 0.5, 0.5], device="cuda").view(1, 3, 1, 1) * 255
    name, decode = gpu_jpeg_decoder("cuda")
    sizes = [min(128, N - i) for i in range(0, N, 128)]
    rnd = {b: torch.randn(b, 3, SIZE, SIZE, device="cuda").contiguous(memory_format=torch.channels_last) for b in set(sizes)}

    def predict(x):  # (n, H, W, 3) uint8 on the GPU -> probabilities, left on the GPU
        x = ((x.permute(0, 3, 1, 2).float() - mean) / 64).contiguous(memory_format=torch.channels_last)
        return [torch.softmax(model(x[b:b + 128]).float(), 1) for b in range(0, len(x), 128)]

    def ceiling():
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
            return [torch.softmax(model(rnd[b]).float(), 1) for b in sizes]

    def from_chunks(chunks_, write=None):
        outs = []
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
            for start, ds in chunks_:
                x = prepare_gpu(decode(ds), (SIZE, SIZE), "center")
                outs += predict(x)
                if write:
                    write(start, x)
        return torch.cat(outs).cpu()
    rate("model alone (lite0, bf16, channels_last, batches of 128)", ceiling)
    rate(f"GPU-resident: bytes in memory -> {name} -> resize -> model", lambda: from_chunks(
        (i, datas[i:i + CHUNK]) for i in range(0, N, CHUNK)))

    def from_files(write=None):
        with ThreadPoolExecutor(16) as ex:
            return from_chunks(_read_ahead(ex, paths, CHUNK), write)
    rate(f"GPU-resident: files read 16 threads a chunk ahead -> {name} -> resize -> model", from_files)
    with tempfile.NamedTemporaryFile(dir="/tmp") as f:
        f.truncate(N * SIZE * SIZE * 3)
        rows = FileRows(f.fileno(), (N, SIZE, SIZE, 3))
        bufs = [torch.empty((CHUNK, SIZE, SIZE, 3), dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        with ThreadPoolExecutor(2) as wex:
            pending = [None, None]

            def write(start, x):  # the chunk to a pinned buffer (async), then to the file from a pool thread
                k = (start // CHUNK) % 2
                if pending[k]:
                    pending[k].result()
                bufs[k][:len(x)].copy_(x, non_blocking=True)
                ev = torch.cuda.Event()
                ev.record()

                def put():
                    ev.synchronize()
                    rows[range(start, start + len(x))] = bufs[k][:len(x)].numpy()
                pending[k] = wex.submit(put)

            def with_cache():
                out = from_files(write)
                for p in pending:
                    p and p.result()
                return out
            rate("GPU-resident + cache written from pinned copies by 2 pool threads", with_cache)
        # a warm cache's alternative to batches read in turn: the whole file into one pinned buffer by 16
        # threads (preadv), one copy to the GPU, then the model
        from masktk.images import read_at
        whole = torch.empty((N, SIZE, SIZE, 3), dtype=torch.uint8, pin_memory=True)
        row = SIZE * SIZE * 3

        def warm_whole():
            fd = os.open(f.name, os.O_RDONLY)
            try:
                with ThreadPoolExecutor(16) as ex:
                    list(ex.map(lambda i: read_at(fd, whole[i:i + CHUNK].numpy(), i * row), range(0, N, CHUNK)))
            finally:
                os.close(fd)
            with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
                return torch.cat(predict(whole.to("cuda", non_blocking=True))).cpu()
        rate("warm cache: whole file -> pinned (16 threads) -> one copy -> model", warm_whole)


def probe_reading_pipeline():
    """Why files read while the GPU decodes run slower than either alone: decoding (GPU, chunks of 256) after
    every file is read, against the chunk-ahead pipeline, and reading by forked processes into shared memory
    (the main interpreter's lock out of the readers' way), alone and feeding the decoder chunk by chunk."""
    import mmap
    import multiprocessing

    from masktk.data.cache import _read_ahead
    from masktk.data.gpu_decode import gpu_jpeg_decoder
    name, decode = gpu_jpeg_decoder("cuda")

    def dec(ds):
        return prepare_gpu(decode(ds), (SIZE, SIZE), "center")
    datas = read_all()
    rate(f"decode + resize only ({name}), bytes in memory", lambda: [dec(datas[i:i + CHUNK]) for i in range(0, N, CHUNK)])
    rate("all files read (16 threads), then decode + resize", lambda: [
        dec(ds) for ds in chunks(read_all())])

    def piped(threads):
        with ThreadPoolExecutor(threads) as ex:
            return [dec(ds) for _, ds in _read_ahead(ex, paths, CHUNK)]
    for t in (4, 16):
        rate(f"read a chunk ahead ({t} threads) while decoding (the toolkit's way)", lambda: piped(t))
    sizes = np.array([os.stat(p).st_size for p in paths])
    offs = np.concatenate([[0], np.cumsum(sizes)])
    shm = mmap.mmap(-1, int(offs[-1]))
    buf = np.frombuffer(shm, np.uint8)
    global _SHARED
    _SHARED = (paths, offs, buf)
    for procs in (8, 16):
        def forked(feed):
            with multiprocessing.get_context("fork").Pool(procs) as pool:
                if not feed:
                    return pool.map(_read_range, [range(i, min(i + 64, N)) for i in range(0, N, 64)])
                outs = []
                for rng in pool.imap(_read_range, [range(i, min(i + CHUNK, N)) for i in range(0, N, CHUNK)]):
                    outs.append(dec([buf[offs[i]:offs[i + 1]] for i in rng]))
                return outs
        rate(f"{procs} forked processes read into shared memory (pool start included)", lambda: forked(False))
        rate(f"{procs} forked processes read, the main thread decodes each chunk as it arrives", lambda: forked(True))


_SHARED = None


def _read_range(rng):
    from masktk.images import read_at
    paths_, offs, buf = _SHARED
    for i in rng:
        fd = os.open(paths_[i], os.O_RDONLY)
        try:
            read_at(fd, buf[offs[i]:offs[i + 1]], 0)
        finally:
            os.close(fd)
    return rng


def probe_warm_readers():
    """A warm cache's pass (predict_probs on lite0 bf16) against the same loop with 4, 8, 16 reader threads."""
    from masktk.data.augment import BatchTransform
    from masktk.data.cache import cached_images
    from masktk.data.loaders import pinned_batches, to_device
    from masktk.predict.pipeline import predict_probs
    key = ((SIZE, SIZE), "center")
    cache = cached_images(paths, [key], tempfile.mkdtemp(dir="/tmp"))[key]
    model = lite0()
    meta = CheckpointMeta(arch="lite0", tasks=("label",), img_size=(224, 224), mean=(0.5,) * 3, std=(0.25,) * 3)
    rate("warm: predict_probs (the toolkit's pass)", lambda: predict_probs(model, meta, cache, batch_size=128, device="cuda"))
    tf = BatchTransform(meta.mean, meta.std, "none")
    for threads in (4, 8, 16):
        def loop():
            outs = []
            with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
                for (x,) in to_device(pinned_batches(cache, 128, True, threads), "cuda"):
                    x = tf(x.permute(0, 3, 1, 2)).contiguous(memory_format=torch.channels_last)
                    outs.append(torch.softmax(model(x).float(), 1))
            return torch.cat(outs).cpu()
        rate(f"warm: the same loop with {threads} reader threads", loop)


def probe_decoder_setups(datas):
    """nvImageCodec decoders (all backends or the hardware engines first; its CPU pool of 16 or 4 threads)
    decoding chunks of 256, with the bytes in memory and with the files read a chunk ahead by 4 or 16 threads."""
    from masktk.data.cache import _read_ahead
    from masktk.data.gpu_decode import _import_nvimgcodec
    nv = _import_nvimgcodec()
    if nv is None:
        print("nvImageCodec: not installed")
        return
    params = nv.DecodeParams(color_spec=nv.ColorSpec.SRGB, apply_exif_orientation=True)
    kinds = ("HW_GPU_ONLY", "HYBRID_CPU_GPU", "GPU_ONLY", "CPU_ONLY")
    for bname, backends in (("all backends", None), ("hardware first", kinds)):
        for cpu in (0, 4):
            try:
                kw = dict(max_num_cpu_threads=cpu) | (
                    dict(backends=[nv.Backend(getattr(nv.BackendKind, k)) for k in backends]) if backends else {})
                dec = nv.Decoder(device_id=0, **kw)
            except Exception as e:  # noqa: BLE001 - a probe: say why and go on
                print(f"decoder {bname}, {cpu} CPU threads: failed: {type(e).__name__}: {e}", flush=True)
                continue

            def run(ds_chunks):
                return [prepare_gpu([torch.as_tensor(im, device="cuda").permute(2, 0, 1) for im in dec.decode(
                    [nv.CodeStream(d) for d in ds], params=params,
                    cuda_stream=torch.cuda.current_stream().cuda_stream)], (SIZE, SIZE), "center") for ds in ds_chunks]
            tag = f"{bname}, CPU pool {cpu or os.cpu_count()}"
            rate(f"[{tag}] decode + resize, bytes in memory", lambda: run(chunks(datas)))
            for t in (4, 16):
                def piped():
                    with ThreadPoolExecutor(t) as ex:
                        return run(ds for _, ds in _read_ahead(ex, paths, CHUNK))
                rate(f"[{tag}] files read a chunk ahead by {t} threads", piped)


def probe_warm_read_into():
    """A warm pass (predict_probs, lite0 bf16) with the cache's batches read by os.open + preadv (now) and by a
    buffered file's readinto (before 2026-11-28), alternated three times."""
    from masktk.data.cache import ImageCache, cached_images
    from masktk.predict.pipeline import predict_probs
    key = ((SIZE, SIZE), "center")
    cache = cached_images(paths, [key], tempfile.mkdtemp(dir="/tmp"))[key]
    model = lite0()
    meta = CheckpointMeta(arch="lite0", tasks=("label",), img_size=(224, 224), mean=(0.5,) * 3, std=(0.25,) * 3)
    now = ImageCache.read_into

    def before(self, start, out):
        view, off = memoryview(out).cast("B"), start * int(np.prod(self.shape[1:]))
        with open(self.file, "rb", buffering=0) as f:
            f.seek(off)
            done = 0
            while done < len(view):
                n = f.readinto(view[done:])
                done += n
    sizes = [min(128, N - i) for i in range(0, N, 128)]
    rnd = {b: torch.randn(b, 3, SIZE, SIZE, device="cuda").contiguous(memory_format=torch.channels_last) for b in set(sizes)}

    def ceiling():
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
            return [torch.softmax(model(rnd[b]).float(), 1) for b in sizes]
    for _ in range(3):
        rate("warm: model alone", ceiling)
        for name, fn in (("os.open + preadv (now)", now), ("buffered readinto (before)", before)):
            ImageCache.read_into = fn
            rate(f"warm: predict_probs, batches read by {name}",
                 lambda: predict_probs(model, meta, cache, batch_size=128, device="cuda"))
    ImageCache.read_into = now


def profile_main_thread(fn):
    """Where the GPU cache build's main thread spends its time (waiting for the reading threads included)."""
    import cProfile
    import pstats
    prof = cProfile.Profile()
    prof.enable()
    fn()
    sync()
    prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


def probe_writes(arr):
    """Writing a fresh cache file (FileRows, pwrite) from 1 and 16 threads: is one writer the limit?"""
    from masktk.data.cache import FileRows
    for threads in (1, 16):
        def write():
            with tempfile.NamedTemporaryFile(dir="/tmp") as f:
                rows = FileRows(f.fileno(), arr.shape)
                with ThreadPoolExecutor(threads) as ex:
                    list(ex.map(lambda i: rows.__setitem__(range(i, min(i + 16, N)), arr[i:i + 16]), range(0, N, 16)))
        rate(f"FileRows into a fresh file, {threads} threads", write)


def probe_nvimgcodec(datas, ref):
    try:
        from masktk.data.gpu_decode import _import_nvimgcodec
        nv = _import_nvimgcodec()
    except Exception as e:  # noqa: BLE001 - a probe: say why and go on
        print("nvImageCodec: import failed:", e)
        return
    if nv is None:
        print("nvImageCodec: not installed")
        return
    print("nvImageCodec", getattr(nv, "__version__", "?"), flush=True)
    params = nv.DecodeParams(color_spec=nv.ColorSpec.SRGB, apply_exif_orientation=True)
    streams = [nv.CodeStream(d.tobytes()) for d in datas]
    kinds = {"hardware": [nv.Backend(nv.BackendKind.HW_GPU_ONLY)], "all backends": None}
    for name, backends in kinds.items():
        try:
            dec = nv.Decoder(backends=backends) if backends else nv.Decoder()
            for batch in (CHUNK, N):
                got = rate(f"nvImageCodec {name}, batches of {batch}", lambda: [
                    im for i in range(0, N, batch) for im in dec.decode(streams[i:i + batch], params=params)])
            bad = sum(im is None for im in got)
            t = [torch.as_tensor(got[i], device="cuda") for i in range(64) if got[i] is not None]
            diff = max((int((x.cpu().int() - torch.from_numpy(r).int()).abs().max()) for x, r in zip(t, ref)), default=-1)
            print(f"  {bad} not decoded; buffer {got[0].buffer_kind if got[0] is not None else '-'}; "
                  f"shape {tuple(t[0].shape) if t else '-'}; vs cv2 max abs diff {diff}", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"nvImageCodec {name}: failed: {type(e).__name__}: {e}", flush=True)


if __name__ == "__main__":
    focus() if os.environ.get("PROBE") == "focus" else main()
