"""The CUDA paths, on a machine with a GPU; skipped with a reason elsewhere (CI has none).

The rest of the suite hides the GPU (conftest.py); these tests give it back to the processes they
start, so each check runs in a real process on the real device.
"""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import GPU_ENV, REPO, TINY, run


def _probe():
    code = ("import torch; print(json.dumps(torch.cuda.is_available() and "
            "[torch.cuda.device_count(), *torch.cuda.get_device_capability(0)]))")
    p = run("-c", "import json; " + code, env=GPU_ENV, check=False)
    return json.loads(p.stdout.strip() or "false") if p.returncode == 0 else False


GPU = _probe()
pytestmark = pytest.mark.skipif(not GPU, reason="no CUDA device visible: the CUDA paths are checked on a GPU machine")


def py(code, tmp_path, *args):
    """Run a snippet in a fresh process that sees the GPU; -> its stdout."""
    script = tmp_path / "snippet.py"
    script.write_text(f"import sys; sys.path.insert(0, {str(REPO)!r})\n" + code)
    return run(script, *args, env=GPU_ENV).stdout


@pytest.mark.e2e
def test_one_tiny_epoch_with_amp_and_channels_last(tiny_root, tmp_path):
    p = run("train.py", "--data_dir", tiny_root / "train", "--model_dir", tmp_path, *TINY, "--epochs", "1",
            "--device", "cuda", "--amp", "True", "--channels_last", "True", "--run_dir", tmp_path / "r", env=GPU_ENV)
    expected = "bf16" if GPU[1] >= 8 else "fp16"  # native bf16 from compute capability 8.0 (A100, H100)
    assert f"device cuda:0 x 1 process(es), {expected}, channels_last" in p.stdout
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert math.isfinite(metrics["history"][0]["train_loss"]) and metrics["best_epoch"] == 1


SYNCS = """
import warnings, numpy as np, torch
from masktk import distributed
from masktk.train import engine as T
from masktk.train.settings import RunSettings
from masktk.data.loaders import BatchDataset, make_loader
from masktk.labels import AGE_MIN, loss_targets
steps, bs = 12, 16
cfg = RunSettings(model="test_efficientnet", pretrained=False, img_size=(32, 32), progress=False, batch_size=bs)
labels = np.arange(steps * bs) % 18
images = np.random.default_rng(0).integers(0, 255, (steps * bs, 32, 32, 3), dtype=np.uint8)
dev = torch.device("cuda")
model, raw, loop = T.build_training(cfg, ("label",), labels, steps, distributed.Dist(device=dev), valid_labels=labels)
for gpu in (None, dev):  # the DataLoader with pinned memory, and the GPU-resident loader (the default)
    targets = loss_targets(labels, np.full(len(labels), AGE_MIN))
    loader = make_loader(BatchDataset(images, np.arange(len(labels)), targets), bs, True, 0, pin=True, gpu=gpu)
    T.train_one_epoch(model, loader, loop, 0)  # warm-up: first copies of constants, autotuning
    T.evaluate(model, loader, loop)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    for name, fn in (("train", lambda: T.train_one_epoch(model, loader, loop, 1)),
                     ("eval", lambda: T.evaluate(model, loader, loop))):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            fn()
        print(f"{name}-{type(loader).__name__}", sum("synchroniz" in str(x.message) for x in w), len(loader))
    torch.cuda.set_sync_debug_mode(0)
"""


@pytest.mark.e2e
def test_training_and_validation_do_not_wait_for_the_gpu_each_step(tmp_path):
    """A step that reads a value back (loss.item(), logits.cpu(), a blocking copy) stalls the host once
    per step; the loop may read back only a few times per epoch, whatever its length."""
    out = py(SYNCS, tmp_path)
    counts = {line.split()[0]: (int(line.split()[1]), int(line.split()[2])) for line in out.splitlines()}
    assert len(counts) == 4, out
    for name, (syncs, steps) in counts.items():
        assert steps >= 12 and syncs <= 6, (name, syncs, steps)


@pytest.mark.e2e
def test_inference_on_the_gpu_agrees_with_the_cpu(tiny_root, tiny_runs, tmp_path):
    def infer(name, *flags):
        run("inference.py", "--data_dir", tiny_root / "eval", "--model_dir", tiny_runs["single"], "--output_dir",
            tmp_path, "--output_name", name, *flags, env=GPU_ENV)
        return np.load(tmp_path / f"{name}_probs.npy")
    cpu = infer("cpu", "--device", "cpu")
    amp = infer("amp", "--device", "cuda", "--amp", "True")
    fp32 = infer("fp32", "--device", "cuda", "--amp", "False")
    same = {k: float((p.argmax(1) == cpu.argmax(1)).mean()) for k, p in (("fp32", fp32), ("amp", amp))}
    print("max |p - p_cpu|: fp32", np.abs(fp32 - cpu).max(), "amp", np.abs(amp - cpu).max(), "same argmax", same)
    assert np.abs(fp32 - cpu).max() < 2e-3  # fp32 (TF32 convolutions): the CPU's numbers
    assert np.abs(amp - cpu).max() < 2e-2   # bf16/fp16 autocast: close
    # The tiny model's probabilities are nearly uniform (median top-2 gap 5e-4), so only fp32 is held to
    # the CPU's decisions; autocast is held to the probabilities above.
    assert same["fp32"] >= 0.95


DECODE = """
import numpy as np, shutil, sys
from pathlib import Path
from PIL import Image
from masktk.data.cache import decode_many
src = sorted(Path(sys.argv[1]).glob("*.jpg"))[:40]
tmp = Path(sys.argv[2])
Image.open(src[0]).save(tmp / "as.png")                       # PNG: the CPU path
im = Image.open(src[1]); exif = im.getexif(); exif[0x0112] = 6  # EXIF-rotated: the CPU path (cv2 turns it)
im.save(tmp / "rotated.jpg", exif=exif.tobytes())
paths = src + [tmp / "as.png", tmp / "rotated.jpg"]
keys = [((224, 224), "center"), ((48, 40), "none")]
gpu, ok_g = decode_many(paths, keys, device="cuda", chunk=16)
cpu, ok_c = decode_many(paths, keys, device="cpu")
assert ok_g.all() and ok_c.all()
import importlib.util
from masktk.data.gpu_decode import gpu_jpeg_decoder
try:
    installed = importlib.util.find_spec("nvidia.nvimgcodec") is not None
except ModuleNotFoundError:
    installed = False
print(gpu_jpeg_decoder("cuda")[0].replace(" ", "_"), installed)
for k in keys:
    d = np.abs(gpu[k].astype(int) - cpu[k].astype(int))
    assert (d[-2:] == 0).all(), "fallback files must match the CPU exactly"
    print(k[0][0], float(d[:-2].mean()), float(np.percentile(d[:-2], 99)), int(d[:-2].max()))
"""


@pytest.mark.e2e
def test_gpu_jpeg_decoding_matches_the_cpu(tiny_root, tmp_path):
    """GPU decoding (nvImageCodec or nvJPEG) + GPU resizing against libjpeg + cv2 on the same files: a few
    levels apart at most; PNG and EXIF-rotated JPEGs take the CPU path and match it exactly."""
    out = py(DECODE, tmp_path, tiny_root / "eval" / "images", tmp_path).splitlines()
    decoder, installed = out[0].split()
    assert (decoder == "nvImageCodec") == (installed == "True"), out[0]  # installed: used, not passed over
    for line in out[1:]:
        size, mean, p99, worst = line.split()
        assert float(mean) < 2.0 and float(p99) <= 16, line


@pytest.mark.e2e
def test_more_processes_than_gpus_fail_clearly(tiny_root, tmp_path):
    n = GPU[0] + 1
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "train.py",
           "--data_dir", str(tiny_root / "train"), "--model_dir", str(tmp_path), *TINY, "--device", "cuda"]
    env = {k: v for k, v in {**__import__("os").environ, **GPU_ENV}.items() if v is not None}
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "error: process" in p.stderr and "has no GPU of its own" in p.stderr, p.stderr[-2000:]


@pytest.mark.e2e
def test_ssd_face_detector_on_the_gpu_agrees_with_the_cpu(tmp_path):
    """face_ssd.py on CUDA (batched, channels_last) finds the faces the CPU finds, at the same boxes."""
    out = py("import json, numpy as np, skimage.data\n"
             "from masktk.faces.ssd import SSDFaceDetector\n"
             "imgs = [skimage.data.astronaut(), np.ascontiguousarray(skimage.data.astronaut()[:, ::-1])]\n"
             "a, b = SSDFaceDetector('cpu').detect(imgs), SSDFaceDetector('cuda').detect(imgs)\n"
             "print(json.dumps([[x[0].tolist(), y[0].tolist(), x[1].tolist(), y[1].tolist()] for x, y in zip(a, b)]))\n",
             tmp_path)
    for cpu_boxes, gpu_boxes, cpu_scores, gpu_scores in json.loads(out.strip().splitlines()[-1]):
        assert len(cpu_boxes) == len(gpu_boxes) >= 1
        assert np.allclose(cpu_boxes, gpu_boxes, atol=1.0) and np.allclose(cpu_scores, gpu_scores, atol=1e-3)
