"""The one checkpoint save/load pair and what a checkpoint says about itself (CheckpointMeta): enough to
build the model and feed it photos without any flag.
"""
from __future__ import annotations

import argparse
import math
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from masktk.errors import UserError
from masktk.faces.crop import CropRecipe
from masktk.files import atomic_path
from masktk.labels import OFFICIAL_AGE_BOUNDS, TASKS
from masktk.models import INPUT_SIDE, create_model
from masktk.tta import DEFAULT_TTA, TTA_VIEWS
from masktk.weights import clean_state_dict, nonfinite_tensor, safe_load


@dataclass(frozen=True)
class CheckpointMeta:
    """Stored in every checkpoint as a plain dict (so it loads with weights_only=True); written by
    trainer.run_fold, read by model_from_checkpoint."""
    arch: str
    tasks: tuple
    img_size: tuple
    mean: tuple
    std: tuple
    crop: str = "center"  # how the photos were cut: "none" for faces/ crops, "center" for whole photos
    age_bounds: tuple = OFFICIAL_AGE_BOUNDS  # the training labels' bounds
    config: dict = field(default_factory=dict)  # the run's settings (config.json)
    valid_people: int = 0
    train_people: int = 0
    face_crop: dict | None = None  # the CropRecipe faces/ was cut with (None: whole photos, or unknown)
    epoch: int = 0
    metrics: dict = field(default_factory=dict)

    def to_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d):
        """Older checkpoints lack some fields (they take the defaults); unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})

    def check(self):
        """The meta held to the rules train.py wrote it by -> self, or ValueError naming the field: a damaged or
        hand-made checkpoint must not size an input at -5 px or 3 TB, or normalise by nan."""
        if not isinstance(self.arch, str) or not self.arch:
            raise ValueError(f"arch {self.arch!r}: a model name expected")
        if not self.tasks or not all(isinstance(t, str) and t in TASKS for t in self.tasks):
            raise ValueError(f"tasks {list(self.tasks)}: each one of {', '.join(TASKS)}")
        if len(self.img_size) != 2:
            raise ValueError(f"img_size {list(self.img_size)}: height and width expected")
        try:
            [INPUT_SIDE(v) for v in self.img_size]
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"img_size {list(self.img_size)}: {e}") from None
        for name, v in (("mean", self.mean), ("std", self.std)):
            if len(v) != 3 or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v):
                raise ValueError(f"{name} {list(v)}: three finite numbers expected")
        if min(self.std) <= 0:
            raise ValueError(f"std {list(self.std)}: above 0 expected")
        if self.crop not in ("center", "none"):
            raise ValueError(f"crop {self.crop!r}: center or none expected")
        if self.face_crop is not None:
            CropRecipe.from_dict(self.face_crop)
        if not isinstance(self.config, dict) or self.config.get("tta", DEFAULT_TTA) not in TTA_VIEWS:
            raise ValueError(f"config's tta {self.config.get('tta') if isinstance(self.config, dict) else '?'!r}: "
                             f"one of {', '.join(TTA_VIEWS)}")
        return self

    @property
    def tta(self):
        """The views the run validated with (checkpoints from before the setting: DEFAULT_TTA)."""
        return self.config.get("tta", DEFAULT_TTA)

    @property
    def input_key(self):
        """(size, crop): the decoded-image cache entry this model reads."""
        return tuple(self.img_size), self.crop


def save_checkpoint(path, model, meta, **state):
    """Self-describing checkpoint: weights + meta (a CheckpointMeta) + any training state (optimizer,
    scheduler, scaler, ema, epoch, history). Atomic."""
    raw = getattr(model, "module", model)
    raw = getattr(raw, "_orig_mod", raw)
    bad = nonfinite_tensor(raw)
    if bad:  # a checkpoint is a promise of usable weights
        raise UserError(f"{path}: not saved: {bad} holds nan or inf; lower --lr or enable --clip_grad")
    obj = {"model": raw.state_dict(), "meta": meta.to_dict()}
    for k, v in state.items():
        obj[k] = v.state_dict() if hasattr(v, "state_dict") else v
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except RuntimeError:  # torch's zip writer reports a full disk as RuntimeErrors, not OSError
        need, free = _nbytes(obj), shutil.disk_usage(Path(path).parent).free
        if free >= need:
            raise
        raise UserError(f"{Path(path).parent}: no space left to save {Path(path).name} (it needs about "
                        f"{need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free): free space, or choose another "
                        "--run_dir") from None


def _nbytes(obj):
    if torch.is_tensor(obj):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    return sum(_nbytes(v) for v in obj) if isinstance(obj, (list, tuple)) else 0


def load_checkpoint(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "meta" not in ckpt:
        raise UserError(f"{path}: not a checkpoint written by this toolkit (no model/meta)")
    ckpt["model"] = clean_state_dict(ckpt["model"])
    return ckpt


def model_from_checkpoint(path, device="cpu"):
    """-> (eval-mode model, CheckpointMeta). Needs no flags: the checkpoint says what it is."""
    ckpt = load_checkpoint(path)
    meta = read_meta(ckpt, path)
    model = create_model(meta.arch, meta.tasks, pretrained=False)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit {meta.arch} with tasks {list(meta.tasks)} "
                        f"({str(e).splitlines()[1].strip()[:120] if len(str(e).splitlines()) > 1 else e})")
    return model.to(device).eval(), meta


def read_meta(ckpt, path):
    """A loaded checkpoint's CheckpointMeta, checked; one UserError naming the checkpoint and the field."""
    try:
        return CheckpointMeta.from_dict(ckpt["meta"]).check()
    except TypeError as e:
        raise UserError(f"{path}: its meta is incomplete ({e}); train it again with train.py")
    except ValueError as e:
        raise UserError(f"{path}: its meta does not hold ({e}); it was not written by train.py or was damaged: "
                        "train it again") from None
