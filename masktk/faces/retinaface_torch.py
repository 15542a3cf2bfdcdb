"""RetinaFace in torch, for fine-tuning: the shipped ONNX weights brought in by onnx2torch (same boxes as
onnxruntime's), its anchors, RetinaFace's multibox loss (anchors matched to faces by IoU, box offsets, hard
negative mining) and the way back to ONNX for onnxruntime.
"""
from __future__ import annotations

import copy
import functools
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from masktk.files import atomic_path

POSITIVE_IOU = 0.35  # an anchor overlapping a face this much learns it (RetinaFace's own rule)


NEGATIVES_PER_POSITIVE = 3  # hard negative mining: the background anchors scored most face-like, 3 per face anchor


LOC_WEIGHT = 2.0  # RetinaFace's weight of the box loss against the face/background loss


def onnx_model(weights):
    """ONNX bytes or path -> onnx.ModelProto, its initialisers passed through Identity nodes made initialisers
    themselves (onnx2torch reads a convolution's weights from the initialisers alone)."""
    import onnx
    model = onnx.load_from_string(weights) if isinstance(weights, bytes) else onnx.load(str(weights))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    for node in [n for n in graph.node if n.op_type == "Identity" and n.input[0] in inits]:
        t = copy.deepcopy(inits[node.input[0]])
        t.name = node.output[0]
        graph.initializer.append(t)
        graph.node.remove(node)
    return model


def to_torch(weights):
    """A RetinaFace ONNX (bytes or path) -> trainable torch module: input (B, 3, H, W) BGR minus the mean, outputs
    loc (B, N, 4) offsets, conf (B, N, 2) probabilities, landmarks (B, N, 10) offsets."""
    from onnx2torch import convert
    # onnx2torch's Slice indexes with a list, which torch warns about on every forward; the result is the same
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
    return convert(onnx_model(weights))


def export_onnx(net, start, path, example):
    """The fine-tuned weights written into the starting ONNX graph (the same graph, so its shapes stay dynamic:
    tracing the module again would fix them to the example's), whole or not at all. start: the ONNX bytes or path
    fine-tuning began from. -> the largest difference of onnxruntime's outputs from torch's on `example`."""
    import onnxruntime as ort
    from onnx import numpy_helper
    model = onnx_model(start)
    inits = {i.name: i for i in model.graph.initializer}
    params = dict(net.named_parameters())
    written = 0
    for node in (n for n in model.graph.node if n.op_type == "Conv"):
        module = node.name.lstrip("/").replace(".", "/")  # onnx2torch's name for the node's module
        for kind, name in zip(("weight", "bias"), node.input[1:3]):
            value = params[f"{module}.{kind}"].detach().cpu().numpy()
            inits[name].CopyFrom(numpy_helper.from_array(value, name))
            written += 1
    if written != len(params):
        raise RuntimeError(f"{written} of the network's {len(params)} weights found in the ONNX graph")
    used = {i for n in model.graph.node for i in n.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:  # the Identity nodes' old sources
        model.graph.initializer.remove(init)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(model.SerializeToString())
        got = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]).run(None, {"input": example.numpy()})
    with torch.no_grad():
        want = net.eval()(example.to(next(net.parameters()).device))
    return max(float(np.abs(g - w.float().cpu().numpy()).max()) for g, w in zip(got, want))


@functools.lru_cache(maxsize=16)
def priors(height, width):
    """(N, 4) anchors (cx, cy, w, h as fractions of the input) in the order of the network's outputs."""
    from retinaface.postprocess import ANCHOR_SIZES, ANCHOR_STRIDES, generate_anchors
    return torch.as_tensor(np.concatenate([generate_anchors(s, tuple(z), width, height, 1)[0]
                                           for s, z in zip(ANCHOR_STRIDES, ANCHOR_SIZES)]), dtype=torch.float32)


def _corners(p):
    return torch.cat([p[:, :2] - p[:, 2:] / 2, p[:, :2] + p[:, 2:] / 2], 1)


def match(anchors, faces):
    """anchors (N, 4) cx cy w h; faces (K, 4) x1 y1 x2 y2, both fractions of the input -> (N,) which face each anchor
    learns (-1: background), (N, 4) its encoded box target. Each face keeps at least its best anchor."""
    from retinaface.postprocess import V_C, V_S
    n = len(anchors)
    if not len(faces):
        return torch.full((n,), -1, dtype=torch.long), torch.zeros(n, 4)
    from torchvision.ops import box_iou
    iou = box_iou(faces, _corners(anchors))  # (K, N)
    best_iou, best_face = iou.max(0)
    best_iou[iou.argmax(1)] = 2.0  # every face's best anchor, however small the overlap
    best_face[iou.argmax(1)] = torch.arange(len(faces))
    which = torch.where(best_iou >= POSITIVE_IOU, best_face, torch.full_like(best_face, -1))
    f = faces[best_face]
    centre, size = (f[:, :2] + f[:, 2:]) / 2, (f[:, 2:] - f[:, :2]).clamp(min=1e-6)
    target = torch.cat([(centre - anchors[:, :2]) / (V_C * anchors[:, 2:]), torch.log(size / anchors[:, 2:]) / V_S], 1)
    return which, target


def multibox_loss(loc, conf, which, target):
    """loc (B, N, 4), conf (B, N, 2) probabilities; which (B, N) face index or -1, target (B, N, 4) -> (loss,
    {box, face}): smooth L1 of the face anchors' offsets, and the face/background cross entropy of the face anchors
    and the NEGATIVES_PER_POSITIVE x as many background anchors scored most face-like in each photo."""
    pos = which >= 0
    n_pos = pos.sum().clamp(min=1).float()
    box = F.smooth_l1_loss(loc[pos], target[pos], reduction="sum") / n_pos
    logp = torch.log(conf.clamp(min=1e-7))
    face_nll, back_nll = -logp[..., 1], -logp[..., 0]
    hard = back_nll.masked_fill(pos, 0).detach()  # background anchors the network finds most face-like
    rank = hard.argsort(1, descending=True).argsort(1)
    negatives = (rank < (NEGATIVES_PER_POSITIVE * pos.sum(1, keepdim=True)).clamp(min=1)) & ~pos
    face = (face_nll[pos].sum() + back_nll[negatives].sum()) / n_pos
    return LOC_WEIGHT * box + face, {"box": box.item(), "face": face.item()}
