"""masktk/data/gpu_decode.py: which JPEGs go to the GPU, its resize, the decoder's fallback, the staging buffers
(on CPU; tests/test_cuda.py runs them on a GPU)."""
import os

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, run


def test_only_plain_jpegs_go_to_the_gpu_decoder(tmp_path):
    """nvJPEG ignores EXIF orientation and cannot read PNGs: those, and truncated JPEGs, stay on the CPU."""
    from PIL import Image

    from masktk.data.gpu_decode import gpu_decodable
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


def test_batched_gpu_resize_matches_cv2_in_order(tiny_root):
    """prepare_gpu (the GPU decoding path's resize, run here on CPU tensors): photos of two shapes in one
    batch come back in their order, within a few levels of cv2's prepare."""
    from masktk.data.gpu_decode import prepare_gpu
    from masktk.images import decode_bytes, prepare
    paths = sorted((tiny_root / "eval" / "images").glob("*"))[:4]
    imgs = [decode_bytes(np.fromfile(p, np.uint8), p) for p in paths]
    imgs[1] = cv2.resize(imgs[1], (300, 400))  # a second shape between the others
    imgs[3] = cv2.resize(imgs[3], (300, 400))
    for size, crop in (((224, 224), "center"), ((48, 40), "none")):
        got = prepare_gpu([torch.from_numpy(im).permute(2, 0, 1) for im in imgs], size, crop).numpy()
        want = np.stack([prepare(im, size, crop) for im in imgs])
        d = np.abs(got.astype(int) - want)
        assert got.shape == want.shape and d.mean() < 2.0 and np.percentile(d, 99) <= 16, (size, d.mean())


@pytest.mark.e2e
def test_a_broken_nvimgcodec_install_falls_back_to_nvjpeg_with_a_warning(tmp_path):
    """nvImageCodec installed but unable to start (here: its package raises on import, as a wheel built for
    another CUDA does): GPU decoding names the problem once and uses torchvision's nvJPEG."""
    pkg = tmp_path / "nvidia" / "nvimgcodec"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('libcudart.so.12: cannot open shared object file')\n")
    code = ("from masktk.data.gpu_decode import gpu_jpeg_decoder\n"
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

    from masktk.data.gpu_decode import _HostStaging
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
