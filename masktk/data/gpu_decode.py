"""JPEG decoding and resizing on the GPU (nvImageCodec where installed, else torchvision's nvJPEG) for the
decoded-image cache; whatever the GPU cannot take goes to the CPU path (masktk/images.py).
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from masktk.images import center_region, exif_rotated, truncated_jpeg


def gpu_decodable(data):
    """Plain baseline/progressive JPEG that nvJPEG decodes to the same picture as the CPU path."""
    return data.size > 0 and data[:2].tobytes() == b"\xff\xd8" and not truncated_jpeg(data) and not exif_rotated(data)


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
    hardware JPEG engines and stays closer to libjpeg's pixels; docs/performance.md), else torchvision's
    nvJPEG. One that is installed but cannot start (a wheel for another CUDA, no nvJPEG library) is named
    in a warning and the other is used."""
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


class _HostStaging:
    """Two sets of host buffers of one chunk each (pinned on CUDA), used in turn: a chunk comes off the GPU
    into one set while the other set's rows are still being written out (_put_rows); a new host array per
    chunk would cost a page fault per 4 KiB (docs/performance.md)."""

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
