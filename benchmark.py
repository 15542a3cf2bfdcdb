"""Measure the toolkit's speed against its ceilings and against the original's plain pipeline.

    python benchmark.py                                   # demo data, demo model and size, CPU
    python benchmark.py --device cuda --amp True --channels_last True --batch_size 128
    python benchmark.py --face_dir realface_data/eval/images --out bench/real.json

Measures in one run, side by side (images per second, or seconds):
  train_model_only    training steps on random tensors already in memory (the ceiling)
  train_toolkit       train.py's own train_one_epoch: memory-mapped uint8 cache + batched augmentation
  train_plain         the original's pipeline: PIL open/resize/ColorJitter/flip/ToTensor/Normalize per
                      item in DataLoader workers, same model and step
  infer_model_only    forward passes on random tensors (the ceiling)
  infer_toolkit       inference.py's path: decode each eval image once (cold cache), predict; on CUDA
                      timed with CPU and with GPU decoding (infer_toolkit_{cpu,gpu}_decode; gpu_decoder names it)
  infer_toolkit_warm  the same with the eval-image cache left by an earlier run
  cv5_tta_toolkit     5 models x flip TTA, images decoded once
  cv5_tta_redecode    5 separate passes that each decode the images again (the original's way)
  face_retinaface     face_image.py's default detector (RetinaFace, ONNX, each photo at up to 1024 px),
                      batched and decoded as face_batched
  face_batched        face_image.py --detector mtcnn: MTCNN on batches of downscaled copies, threaded decoding
  face_plain          one image at a time at full resolution; box IoU of the two reported
  face_ssd_mtcnn      face_image.py --detector ssd_mtcnn (OpenCV's SSD, then MTCNN), batched as face_batched
  infer_cpu_torch     CPU inference through the one prediction path, torch (same batches and size as below)
  infer_cpu_onnxruntime  the same network exported to ONNX (export.py's exporter), run by onnxruntime
  peak_rss_mib        peak resident memory of the process
Ratios, not absolute times, are the targets: shared machines are noisy. Writes the figures as JSON.
"""
from __future__ import annotations

import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from masktk.cli import add_bool, cli, make_parser, positive
from masktk.errors import UserError
from masktk.files import writable_dir, write_json_atomic


def _timeit(fn, n_items, repeat=1):
    best = None
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    return n_items / best, best


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _profile(args, name, fn):
    """--profile: where one call of fn spends its time (host and device), top operators printed."""
    if not args.profile:
        return
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        fn()
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    print(f"--- profile: {name} (by self CPU time, then by {key})")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    print(prof.key_averages().table(sort_by=key, row_limit=15))


def bench_train(args, dev, table_paths, labels):
    """model-only, toolkit and plain pipeline training throughput with the same model, step, precision
    and memory layout. Only the end of each timed pass waits for the device, as in training."""
    from masktk import distributed
    from masktk.data.cache import cached_images
    from masktk.data.loaders import BatchDataset, make_loader
    from masktk.labels import AGE_MIN, YEARS, loss_targets
    from masktk.train import engine as T
    from masktk.train.settings import RunSettings
    cfg = RunSettings(model=args.model, img_size=tuple(args.img_size), batch_size=args.batch_size,
                                                      pretrained=False, progress=False, amp=args.amp,
                                                      channels_last=args.channels_last, epochs=1000)
    n = min(len(table_paths), args.train_images)
    paths, labels = table_paths[:n], labels[:n]
    d = distributed.Dist(device=dev)
    steps = max(1, n // args.batch_size)
    model, raw, loop = T.build_training(cfg, ("label",), labels, steps, d)
    key = (tuple(args.img_size), "center")
    cache = cached_images(paths, [key], Path(args.cache_dir), device=dev if args.gpu_decode else "cpu")[key]
    workers = args.workers if dev.type == "cuda" else 0  # train.py's defaults: 0 on CPU, workers on CUDA
    targets = loss_targets(labels, np.full(n, AGE_MIN))
    loader = make_loader(BatchDataset(cache, np.arange(n), targets), args.batch_size, True, 0,
                         workers=workers, pin=dev.type == "cuda", gpu=dev if args.gpu_data else None)

    def toolkit():
        T.train_one_epoch(model, loader, loop, 1)
        _sync(dev)
    t0 = time.perf_counter()
    T.train_one_epoch(model, loader, loop, 0)  # warm-up: allocator, page cache, autotuning, workers
    _sync(dev)
    res = {"train_first_epoch_s": time.perf_counter() - t0, "train_loader": type(loader).__name__}
    res["train_toolkit"] = _timeit(toolkit, steps * args.batch_size, args.repeat)[0]
    _profile(args, "train_one_epoch", toolkit)
    x = torch.randn(args.batch_size, 3, *args.img_size, device=dev).contiguous(memory_format=loop.memory_format)
    y = torch.randint(0, 18, (args.batch_size,), device=dev)

    def step(xb, yb):
        with loop.precision.autocast():
            loss = T.heads_loss(model(xb), torch.nn.functional.one_hot(yb * YEARS, 18 * YEARS).float(), ("label",), loop.loss_fns,
                                loop.head_weights)
        loop.optimizer.zero_grad(set_to_none=True)
        loop.scaler.scale(loss).backward()
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()

    def model_only():
        for _ in range(steps):
            step(x, y)
        _sync(dev)
    model.train()
    model_only()  # warm-up
    res["train_model_only"], _ = _timeit(model_only, steps * args.batch_size, args.repeat)

    if "plain" not in args.skip:
        res["train_plain"] = bench_plain(args, dev, paths, labels, loop, step, steps)
    res["cache_mib"] = cache.nbytes / 2**20
    return res, raw, loop


def bench_plain(args, dev, paths, labels, loop, step, steps):
    """The original competition code's per-item pipeline feeding the same step: img/s."""
    n = len(paths)
    from PIL import Image
    from torchvision import transforms as tv

    class Plain(torch.utils.data.Dataset):  # the original competition code's per-item pipeline
        tf = tv.Compose([tv.Resize(tuple(args.img_size)), tv.ColorJitter(0.1, 0.1, 0.1, 0.1),
                         tv.RandomHorizontalFlip(), tv.ToTensor(), tv.Normalize(loop.mean, loop.std)])

        def __len__(self):
            return n

        def __getitem__(self, i):
            return self.tf(Image.open(paths[i]).convert("RGB")), int(labels[i])

    pl = torch.utils.data.DataLoader(Plain(), batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                     drop_last=True, persistent_workers=args.workers > 0)

    def plain():
        for xb, yb in pl:
            step(xb.to(dev).contiguous(memory_format=loop.memory_format), yb.to(dev))
        _sync(dev)
    plain()  # warm-up (workers start, page cache)
    return _timeit(plain, steps * args.batch_size, args.repeat)[0]


def bench_infer(args, dev, eval_dir, raw, loop):
    from masktk.checkpoint import CheckpointMeta
    from masktk.data.cache import cached_images
    from masktk.data.table import read_eval
    from masktk.predict.pipeline import predict_probs
    info, paths = read_eval(eval_dir)
    paths = paths[:args.eval_images]
    n = len(paths)
    meta = CheckpointMeta(arch=args.model, tasks=("label",), img_size=tuple(args.img_size), mean=loop.mean, std=loop.std)
    opts = dict(batch_size=args.batch_size, device=dev, channels_last=args.channels_last, amp=args.amp)
    raw.eval()
    key = (tuple(args.img_size), "center")
    x = np.random.default_rng(0).integers(0, 255, (n,) + tuple(args.img_size) + (3,), dtype=np.uint8)
    predict_probs(raw, meta, x, **opts)  # warm-up
    res = {}
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    raw.to(memory_format=fmt)
    # the ceiling's batches: the toolkit's batch sizes, each its own tensor already on the device
    sizes = [min(args.batch_size, n - i) for i in range(0, n, args.batch_size)]
    batches = {b: torch.randn(b, 3, *args.img_size, device=dev).contiguous(memory_format=fmt) for b in set(sizes)}

    @torch.no_grad()
    def fwd():  # the ceiling: the same model, batches, precision and layout on images already on the device
        with loop.precision.autocast():
            for b in sizes:
                torch.softmax(raw(batches[b]).float(), 1)
        _sync(dev)
    fwd()
    res["infer_model_only"], _ = _timeit(fwd, n, args.repeat)
    import tempfile
    fresh = lambda: tempfile.mkdtemp(dir=args.cache_dir)  # noqa: E731 - a cold cache for each timing
    warm_dir = fresh()
    cached_images(paths, [key], warm_dir)

    def infer(cache_dir, decode_on):
        predict_probs(raw, meta, cached_images(paths, [key], cache_dir, device=decode_on)[key], **opts)
    decoders = {"cpu": "cpu"} | ({"gpu": dev} if dev.type == "cuda" else {})
    if dev.type == "cuda":
        from masktk.data.gpu_decode import gpu_jpeg_decoder
        res["gpu_decoder"] = gpu_jpeg_decoder(str(dev))[0]
    for name, decode_on in decoders.items():  # first run: decode every eval image, then predict
        infer(fresh(), decode_on)  # warm-up (the GPU decoder's handle, the thread pool)
        res[f"infer_toolkit_{name}_decode"], _ = _timeit(lambda: infer(fresh(), decode_on), n, args.repeat)
        res[f"decode_only_{name}"], _ = _timeit(lambda: cached_images(paths, [key], fresh(), device=decode_on), n,
                                                args.repeat)
    res["infer_toolkit"] = res[f"infer_toolkit_{'gpu' if dev.type == 'cuda' and args.gpu_decode else 'cpu'}_decode"]
    res["infer_toolkit_warm"], _ = _timeit(lambda: infer(warm_dir, "cpu"), n, args.repeat)
    _profile(args, "inference, eval cache warm", lambda: infer(warm_dir, "cpu"))
    _profile(args, "inference, first run", lambda: infer(fresh(), decoders[list(decoders)[-1]]))

    if "cv5" not in args.skip:
        res.update(bench_cv5(args, dev, paths[:args.cv5_images], raw, loop, meta, opts, fresh))
    if "onnx" not in args.skip:
        res.update(bench_onnx(args, raw, meta, n))
    res["eval_images"] = n
    return res


def bench_cv5(args, dev, paths, raw, loop, meta, opts, fresh):
    """CV-5 + flip TTA: decode once then 10 passes, against 5 passes that each decode again (seconds)."""
    from masktk.data.cache import cached_images
    from masktk.predict.pipeline import predict_probs
    n, key = len(paths), (tuple(args.img_size), "center")
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    res = {"cv5_images": n}
    def cv5_toolkit():  # decode once (cold cache), 5 models x 2 views
        imgs = cached_images(paths, [key], fresh(), device=dev if args.gpu_decode else "cpu")[key]
        for _ in range(5):
            predict_probs(raw, meta, imgs, "flip", **opts)

    def cv5_redecode():  # the original: each model's pass opens, decodes and transforms every image again
        from PIL import Image
        from torchvision import transforms as tv
        tf = tv.Compose([tv.Resize(tuple(args.img_size)), tv.ToTensor(), tv.Normalize(loop.mean, loop.std)])
        with torch.no_grad(), loop.precision.autocast():
            for _ in range(5):
                for i in range(0, n, args.batch_size):
                    xb = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths[i:i + args.batch_size]]).to(dev)
                    xb = xb.contiguous(memory_format=fmt)
                    (torch.softmax(raw(xb).float(), 1) + torch.softmax(raw(xb.flip(-1)).float(), 1)).cpu()
    _, res["cv5_tta_toolkit_s"] = _timeit(cv5_toolkit, n, args.repeat)
    _, res["cv5_tta_redecode_s"] = _timeit(cv5_redecode, n, args.repeat)
    return res


def bench_faces(args, dev, face_dir):
    from PIL import Image

    from masktk.faces.boxes import box_iou
    from masktk.faces.crop import best_boxes
    from masktk.faces.detectors import FaceDetector, create_detector
    from masktk.images import list_images, read_rgb
    rels = list_images(Path(face_dir))[:args.face_images]
    if not rels:
        raise UserError(f"{face_dir}: no images for the face-cropping benchmark")
    paths = [Path(face_dir) / r for r in rels]
    batched, plain = FaceDetector(str(dev), detect_size=256), FaceDetector(str(dev), detect_size=None)
    ssd, retina = create_detector("ssd_mtcnn", str(dev)), create_detector("retinaface", str(dev))
    from concurrent.futures import ThreadPoolExecutor
    out_b, out_p = [], []

    def run_batched(detector=batched):
        out_b.clear()
        with ThreadPoolExecutor() as ex:
            imgs = list(ex.map(read_rgb, paths))
        for i in range(0, len(imgs), 32):
            out_b.extend(best_boxes(detector, imgs[i:i + 32]))

    def run_plain():
        out_p.clear()
        for p in paths:
            out_p.extend(best_boxes(plain, [np.asarray(Image.open(p).convert("RGB"))]))
    best_boxes(batched, [read_rgb(paths[0])])  # warm-up
    best_boxes(ssd, [read_rgb(paths[0])])
    best_boxes(retina, [read_rgb(paths[0])])
    res = {}
    res["face_retinaface"], _ = _timeit(lambda: run_batched(retina), len(paths), args.repeat)
    found_retina = int(sum(a[2] for a in out_b))
    res["face_ssd_mtcnn"], _ = _timeit(lambda: run_batched(ssd), len(paths), args.repeat)
    found_ssd = int(sum(a[2] for a in out_b))
    res["face_batched"], _ = _timeit(run_batched, len(paths), args.repeat)
    res["face_plain"], _ = _timeit(run_plain, len(paths), args.repeat)
    both = [(a[0], b[0]) for a, b in zip(out_b, out_p) if a[2] and b[2]]
    ious = np.diag(box_iou([a for a, _ in both], [b for _, b in both])) if both else np.zeros(0)
    res.update(face_images=len(paths), faces_found_retinaface=found_retina, faces_found_ssd_mtcnn=found_ssd,
               faces_found_batched=int(sum(a[2] for a in out_b)), faces_found_plain=int(sum(b[2] for b in out_p)),
               face_iou_median=float(np.median(ious)) if len(ious) else None,
               face_iou_ge_0_9=float((ious >= 0.9).mean()) if len(ious) else None)
    return res


def bench_onnx(args, raw, meta, n):
    """CPU inference of the same network, batches and input size: torch against onnxruntime (export.py's file)."""
    import tempfile

    from masktk.predict.backends import OnnxModel, export_onnx
    from masktk.predict.pipeline import predict_probs
    x = np.random.default_rng(1).integers(0, 255, (n,) + tuple(args.img_size) + (3,), dtype=np.uint8)
    model = raw.to("cpu").eval()
    out = Path(tempfile.mkdtemp(dir=args.cache_dir)) / "model.onnx"
    with torch.no_grad():
        diff, _ = export_onnx(model.to(memory_format=torch.contiguous_format), args.img_size, out)
    res = {"onnx_max_abs_diff": diff}
    for name, net in (("torch", model), ("onnxruntime", OnnxModel(out, "cpu"))):
        run = lambda: predict_probs(net, meta, x, batch_size=args.batch_size, device="cpu", amp=False)  # noqa: E731
        run()  # warm-up
        res[f"infer_cpu_{name}"], _ = _timeit(run, n, args.repeat)
    return res


def live_frames(face_dir, n_faces, n_frames=50, size=(640, 480)):
    """JPEG frames of a 640 x 480 scene with n_faces drawn people side by side, panning a little each frame (what a
    camera sends: each is decoded in the loop)."""
    import cv2

    from masktk.images import list_images
    photos = [cv2.imread(str(Path(face_dir) / r)) for r in list_images(Path(face_dir))[:n_faces]]
    w = min(size[0] // n_faces, 200)  # a person a few metres from the camera
    tiles = [cv2.resize(p, (w, int(w * p.shape[0] / p.shape[1]))) for p in photos]
    out = []
    for k in range(n_frames):
        f = np.full((size[1], size[0], 3), 100, np.uint8)
        for i, t in enumerate(tiles):
            h = min(t.shape[0], size[1] - 110)
            f[100 + k % 10:100 + k % 10 + h, i * w:(i + 1) * w] = t[:h]
        out.append(cv2.imencode(".jpg", f)[1])
    return out


def bench_live(args, face_dir):
    """Frames per second of the whole live loop (decode, detect, classify, track, draw, write) on 640 x 480 frames
    with 1 and 5 faces, beside the detector alone and the classifier alone on the same frames."""
    import tempfile

    import cv2

    from masktk.predict.predictor import Predictor
    from masktk.predict.tracking import FaceTracks
    from masktk.predict.video import draw
    pred = Predictor.from_run(args.live_run, "cpu", tta="none")
    res = {}
    for n in (1, 5):
        jpegs = live_frames(face_dir, n, args.live_frames)
        rgb = [cv2.cvtColor(cv2.imdecode(j, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for j in jpegs]
        found = [(None, im, pred.faces_in(im)) for im in rgb[:1]]
        pred.classify(found)  # warm-up

        def loop():
            tracks = FaceTracks(25, pred.answer, pred.offsets)
            path = Path(tempfile.mkdtemp(dir=args.cache_dir)) / "live.mp4"
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (640, 480))
            for k, j in enumerate(jpegs):
                frame = cv2.imdecode(j, cv2.IMREAD_COLOR)
                rows = tracks.update(pred.predict(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)), k / 25, frame)
                writer.write(draw(frame, rows))
            writer.release()
        res[f"live_{n}_faces_fps"], _ = _timeit(loop, len(jpegs), args.repeat)
        res[f"live_{n}_detector_fps"], _ = _timeit(lambda: [pred.faces_in(im) for im in rgb], len(rgb), args.repeat)
        found = [(None, im, pred.faces_in(im)) for im in rgb]
        res[f"live_{n}_classifier_fps"], _ = _timeit(lambda: [pred.classify([f]) for f in found], len(rgb),
                                                     args.repeat)
        res[f"live_{n}_faces_found"] = float(np.mean([len(f[2]) for f in found]))
    return res


def report(r):
    rows = [("train: model only (ceiling)", r.get("train_model_only"), "img/s"),
            ("train: toolkit end to end", r.get("train_toolkit"), "img/s"),
            ("train: plain PIL pipeline", r.get("train_plain"), "img/s"),
            ("train: first epoch (warm-up) of the toolkit", r.get("train_first_epoch_s"), "s"),
            ("infer: model only (ceiling)", r.get("infer_model_only"), "img/s"),
            ("infer: toolkit end to end, first run", r.get("infer_toolkit"), "img/s"),
            ("infer: first run, CPU decoding", r.get("infer_toolkit_cpu_decode"), "img/s"),
            (f"infer: first run, GPU decoding ({r.get('gpu_decoder')})", r.get("infer_toolkit_gpu_decode"), "img/s"),
            ("decode into the cache alone: CPU threads", r.get("decode_only_cpu"), "img/s"),
            ("decode into the cache alone: GPU", r.get("decode_only_gpu"), "img/s"),
            ("infer: toolkit, eval cache warm", r.get("infer_toolkit_warm"), "img/s"),
            ("CV-5 + flip TTA: toolkit", r.get("cv5_tta_toolkit_s"), "s"),
            ("CV-5 + flip TTA: re-decode per model", r.get("cv5_tta_redecode_s"), "s"),
            ("infer on CPU: torch", r.get("infer_cpu_torch"), "img/s"),
            ("infer on CPU: onnxruntime", r.get("infer_cpu_onnxruntime"), "img/s"),
            ("faces: RetinaFace (the default)", r.get("face_retinaface"), "img/s"),
            ("faces: MTCNN batched, downscaled", r.get("face_batched"), "img/s"),
            ("faces: one at a time, full res", r.get("face_plain"), "img/s"),
            ("faces: --detector ssd_mtcnn, batched", r.get("face_ssd_mtcnn"), "img/s"),
            ("live 640x480, 1 face: whole loop", r.get("live_1_faces_fps"), "fps"),
            ("live 640x480, 1 face: detector alone", r.get("live_1_detector_fps"), "fps"),
            ("live 640x480, 1 face: classifier alone", r.get("live_1_classifier_fps"), "fps"),
            ("live 640x480, 5 faces: whole loop", r.get("live_5_faces_fps"), "fps"),
            ("live 640x480, 5 faces: detector alone", r.get("live_5_detector_fps"), "fps"),
            ("live 640x480, 5 faces: classifier alone", r.get("live_5_classifier_fps"), "fps"),
            ("peak resident memory", r.get("peak_rss_mib"), "MiB")]
    lines = [f"| {'measure':<38} | {'value':>9} | unit  |", f"|{'-' * 40}|{'-' * 11}|-------|"]
    lines += [f"| {k:<38} | {v:>9.1f} | {u:<5} |" for k, v, u in rows if v is not None]
    lines.append("")
    lines += [f"- {k}: {v:.2f}" for k, v in r["ratios"].items()]
    return "\n".join(lines)


def ratios(r):
    pairs = [("train toolkit / model only (target >= 0.90)", "train_toolkit", "train_model_only"),
             ("train toolkit / plain (target >= 1.5)", "train_toolkit", "train_plain"),
             ("infer toolkit / model only, first run (target >= 0.50 on GPU)", "infer_toolkit", "infer_model_only"),
             ("infer toolkit / model only, cache warm (target >= 0.90)", "infer_toolkit_warm", "infer_model_only"),
             ("CV-5+TTA re-decode / toolkit (target >= 2)", "cv5_tta_redecode_s", "cv5_tta_toolkit_s"),
             ("faces batched / plain (target >= 3)", "face_batched", "face_plain"),
             ("onnxruntime / torch, CPU inference", "infer_cpu_onnxruntime", "infer_cpu_torch"),
             ("faces: share of boxes at IoU >= 0.9 with plain", "face_iou_ge_0_9", None)]
    return {name: r[a] / (r[b] if b else 1.0) for name, a, b in pairs if r.get(a) is not None and (b is None or b in r)}


def build_parser():
    ap = make_parser(__doc__)
    count, count0 = positive(int, 1, inclusive=True), positive(int, 0, inclusive=True)
    ap.add_argument("--data_root", "--data_dir", dest="data_root", default="demo_data",
                    help="root with train/ and eval/ (python synthetic.py)")
    ap.add_argument("--face_dir", default=None, help="photos for the face benchmark (unset: <data_root>/eval/images)")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--img_size", type=positive(int, 16, inclusive=True), nargs=2, default=[112, 96],
                    metavar=("H", "W"))
    ap.add_argument("--batch_size", type=count, default=32)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add_bool(ap, "--amp", False, "mixed precision (CUDA only)")
    add_bool(ap, "--channels_last", True, "channels_last memory format (the toolkit's default)")
    add_bool(ap, "--gpu_decode", False, "on CUDA, the toolkit decodes JPEGs on the GPU (both are timed for first runs)")
    add_bool(ap, "--gpu_data", True, "on CUDA, training holds the images on the GPU (train.py's default)")
    add_bool(ap, "--cudnn_benchmark", True, "let cuDNN time its kernels for each new shape (train.py's default)")
    ap.add_argument("--workers", type=count0, default=2, help="DataLoader workers of the plain pipeline (and of the "
                    "toolkit's loader on CUDA; on CPU it reads in the main process, as train.py does)")
    ap.add_argument("--train_images", type=count, default=320)
    ap.add_argument("--eval_images", type=count, default=200)
    ap.add_argument("--face_images", type=count, default=64)
    ap.add_argument("--repeat", type=count, default=1, help="repeat each timing, keep the best")
    add_bool(ap, "--profile", False, "print where the toolkit's training epoch and inference spend their time")
    ap.add_argument("--cv5_images", type=count, default=200, help="eval images for the CV-5 + TTA comparison")
    ap.add_argument("--skip", nargs="*", default=[], choices=("train", "plain", "infer", "cv5", "faces", "onnx"))
    ap.add_argument("--cache_dir", default="bench/.cache", help="where the run's temporary image caches go")
    ap.add_argument("--output", "--out", dest="output", default="bench/benchmark.json", help="where the figures go (JSON)")
    ap.add_argument("--live_run", default=None, metavar="RUN_DIR", help="a trained run: adds the live rows (a "
                    "640x480 stream with 1 and 5 faces: the whole loop, the detector alone, the classifier alone)")
    ap.add_argument("--live_frames", type=count, default=50, help="frames of each live stream")
    return ap


@cli
def main(argv):
    args = build_parser().parse_args(argv)
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    root = Path(args.data_root)
    import shutil
    import tempfile
    writable_dir(args.cache_dir, "--cache_dir").mkdir(parents=True, exist_ok=True)
    own = tempfile.mkdtemp(prefix="bench-", dir=args.cache_dir)  # cold caches live here; removed at the end
    args.cache_dir = own
    if not (root / "train" / "train.csv").is_file():
        raise UserError(f"{root}/train/train.csv not found: run python synthetic.py --output_dir {root} first")
    from masktk.data.table import build_table
    from masktk.errors import Log
    table = build_table(root / "train", log=Log(quiet=True))
    r = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.processor() or 'x86_64'}, "
         f"{torch.get_num_threads()} threads)", "model": args.model, "img_size": args.img_size,
         "batch_size": args.batch_size, "amp": args.amp, "channels_last": args.channels_last}
    raw = loop = None
    if "train" not in args.skip or "infer" not in args.skip:
        tr, raw, loop = bench_train(args, dev, [str(root / "train" / p) for p in table["path"]], table["label"].to_numpy())
        if "train" not in args.skip:
            r.update(tr)
    if "infer" not in args.skip:
        r.update(bench_infer(args, dev, root / "eval", raw, loop))
    if "faces" not in args.skip:
        r.update(bench_faces(args, dev, args.face_dir or root / "eval" / "images"))
    if args.live_run:
        r.update(bench_live(args, args.face_dir or root / "eval" / "images"))
    shutil.rmtree(own, ignore_errors=True)
    r["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r["ratios"] = ratios(r)
    write_json_atomic(args.output, r)
    print(f"benchmark on {r['device']}, {args.model} at {args.img_size[0]}x{args.img_size[1]}, batch {args.batch_size}")
    print(report(r))
    print(f"-> {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
