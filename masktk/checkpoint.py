"""The one checkpoint save/load pair and what a checkpoint says about itself (CheckpointMeta): enough to
build the model and feed it photos without any flag.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from masktk.errors import UserError
from masktk.files import atomic_path
from masktk.labels import OFFICIAL_AGE_BOUNDS
from masktk.models import create_model
from masktk.tta import DEFAULT_TTA
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
    try:
        meta = CheckpointMeta.from_dict(ckpt["meta"])
    except TypeError as e:
        raise UserError(f"{path}: its meta is incomplete ({e}); train it again with train.py")
    model = create_model(meta.arch, meta.tasks, pretrained=False)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit {meta.arch} with tasks {list(meta.tasks)} "
                        f"({str(e).splitlines()[1].strip()[:120] if len(str(e).splitlines()) > 1 else e})")
    return model.to(device).eval(), meta
