"""Reading and writing photos: bytes in few system calls, any JPEG/PNG decoded to RGB, the centre face region,
resizing, a folder's images listed, a crop written atomically.
"""
from __future__ import annotations

import contextlib
import os

import cv2
import numpy as np

from masktk.errors import UserError
from masktk.files import atomic_path

# the competition's photo formats
IMG_EXTS = (".jpg", ".jpeg", ".png")


# Crop of the face region used when training on images/ instead of faces/: the competition
# photos are head-and-shoulders shots with the face in the upper middle.
CENTER_REGION = (0.18, 0.12, 0.82, 0.72)  # x1, y1, x2, y2 as fractions of width/height


# the one size limit of every decode path (training's checks, the cache, prediction): 1.2 GB as RGB
MAX_MEGAPIXELS = 400


LARGE_FILE = 8 << 20  # bytes: a file this big may hold a photo over the limit, so its header is read first


def read_bytes(path):
    """A file's bytes as a uint8 array in four system calls (open, stat, read, close), far fewer than
    np.fromfile makes: each call is dear in sandboxes (docs/performance.md). Raises OSError like open()."""
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = np.empty(os.fstat(fd).st_size, np.uint8)
        return buf[:read_at(fd, buf, 0)]  # shorter if the file shrank meanwhile
    finally:
        os.close(fd)


def read_at(fd, out, at):
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


def too_large(size):
    """(width, height) over the decode limit, MAX_MEGAPIXELS."""
    return size[0] * size[1] > MAX_MEGAPIXELS * 1_000_000


def header_size(source):
    """(width, height) from a photo's header (a path or a file object), without decoding it."""
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = None  # Pillow's own bomb limit would refuse what MAX_MEGAPIXELS allows
    with Image.open(source) as im:
        return im.size


def why_unreadable(path):
    """Why a photo did not decode, for the message naming it."""
    try:
        w, h = header_size(path)
    except Exception:
        w = h = 0
    if too_large((w, h)):
        return f"too large ({w}x{h}, {w * h / 1e6:.0f} megapixels; the limit is {MAX_MEGAPIXELS}): downscale it"
    return "unreadable or empty image"


def decode_bytes(data, path):
    if data.size == 0 or truncated_jpeg(data):
        return None
    if data.size > LARGE_FILE and _too_large_bytes(data):  # refused before a decoder allocates it
        return None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)  # applies EXIF orientation, drops alpha, 16->8 bit
    if img is None:
        try:  # CMYK and a few exotic JPEGs: PIL converts them
            from PIL import Image, ImageOps
            with Image.open(path) as im:
                return None if too_large(im.size) else np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        except Exception:
            return None
    return None if too_large(img.shape[1::-1]) else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _too_large_bytes(data):
    import io
    try:
        return too_large(header_size(io.BytesIO(data)))
    except Exception:
        return False  # the decoder decides


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


def center_region(w, h):
    x1, y1, x2, y2 = CENTER_REGION
    return (round(x1 * w), round(y1 * h), round(x2 * w), round(y2 * h))


def center_crop(img):
    """The face region of a full head-and-shoulders photo (used when no face box is known)."""
    x1, y1, x2, y2 = center_region(img.shape[1], img.shape[0])
    return img[y1:y2, x1:x2]


def side_size(w, h, side):
    """(width, height) scaled so that the longest side is `side`, each side at least 1 px (a very thin photo's
    short side would otherwise round to 0 and fail the resize)."""
    s = side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def prepare(img, size, crop):
    """RGB image -> uint8 (H, W, 3) at the model's size. crop: 'center' (face region of a
    full photo), or 'none' (a faces/ crop)."""
    if crop == "center":
        img = center_crop(img)
    h, w = size
    interp = cv2.INTER_AREA if img.shape[0] >= h else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


@contextlib.contextmanager
def one_cv2_thread():
    """Parallel over images, not inside each resize: no oversubscription."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def write_image(path, rgb, quality=95):
    ext = path.suffix.lower()
    ok, buf = cv2.imencode(".png" if ext == ".png" else ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [] if ext == ".png" else [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise UserError(f"{path}: could not encode the crop")
    with atomic_path(path) as tmp:
        buf.tofile(str(tmp))


def list_images(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMG_EXTS and not p.name.startswith("."))


def upscaled(img, side):
    """-> (the image with its longest side raised to `side` where it is shorter, [x, y] factors); (img, [1, 1])
    else."""
    h, w = img.shape[:2]
    if not side or max(h, w) >= side:
        return img, np.ones(2)
    size = side_size(w, h, side)
    return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR), np.array([size[0] / w, size[1] / h])
