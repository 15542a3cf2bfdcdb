"""The training loop and its parts: model, optimizer, schedule, EMA, mixing, clipping, progress, losses
over the heads, one epoch of training, one pass of validation.
"""
from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from masktk import distributed
from masktk.data.augment import BatchTransform
from masktk.data.loaders import to_device
from masktk.errors import UserError
from masktk.labels import MULTI_TASKS, TASKS, YEARS, band_spread, task_targets
from masktk.metrics.classification import macro_f1, score
from masktk.models import Precision, choose_precision, create_model
from masktk.probs import combine_probs, joint_marginal, soft_age_marginal, split_heads, task_probs
from masktk.train.losses import create_loss, mask_marginal_loss, years_loss
from masktk.train.optimizers import create_optimizer, create_scheduler, top_lr
from masktk.tta import TTA_VIEWS, view_average
from masktk.weights import nonfinite_tensor


# --- helpers that are objects, so the loop has no branches for features that are off ----------
class NoEma:
    def __init__(self, model):
        self.module = model

    def update(self, model, step=None):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, sd):
        pass


class OneHot:
    """Stands in for timm's Mixup when CutMix and MixUp are off: hard labels as probabilities (over
    class x year of age, labels.joint_targets)."""

    def __call__(self, x, y):
        return x, torch.nn.functional.one_hot(y, 18 * YEARS).float()


def make_marginal(cfg):
    """How a batch's class x year target becomes each head's target: hard age bands, or soft ones."""
    if cfg.age_sigma <= 0:
        return joint_marginal
    return soft_age_marginal(band_spread(cfg.age_sigma, tuple(cfg.age_bounds)))


def make_mixer(cfg):
    p = cfg.cutmix + cfg.mixup
    if p <= 0:
        return OneHot()
    from timm.data import Mixup
    mix = Mixup(mixup_alpha=0.2 if cfg.mixup else 0.0, cutmix_alpha=1.0 if cfg.cutmix else 0.0,
                prob=min(1.0, p), switch_prob=cfg.cutmix / p if cfg.mixup and cfg.cutmix else 0.5,
                label_smoothing=0.0, num_classes=18 * YEARS)
    one_hot = OneHot()
    return lambda x, y: mix(x, y) if len(x) % 2 == 0 else one_hot(x, y)  # timm needs an even batch


class ClipGrad:
    """--clip_grad N: unscale (fp16) and clip the gradients' global norm before the step."""

    def __init__(self, max_norm):
        self.max_norm = max_norm

    def __call__(self, scaler, optimizer, params):
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, self.max_norm, foreach=True)


def no_clip(scaler, optimizer, params):
    """Clipping off: no norm is computed at all."""


class Bar:
    """tqdm over a loop, with running figures every `every` steps (each costs one host sync)."""

    def __init__(self, every=20):
        self.every = every

    def wrap(self, it, desc, total):
        from tqdm import tqdm
        self.bar = tqdm(it, desc=desc, total=total, leave=False, file=sys.stderr, disable=None)
        return self.bar

    def report(self, step, figures):
        if step % self.every == 0:
            self.bar.set_postfix(**figures())


class NoBar:
    """--progress False, and every rank but 0: the loop runs with no bar and no running figures."""

    def wrap(self, it, desc, total):
        return it

    def report(self, step, figures):
        pass


class NullWriter:
    def __getattr__(self, name):
        return lambda *a, **k: None


@dataclass
class Loop:
    """What train_one_epoch and evaluate share for one unit; built by build_training."""
    device: torch.device
    tasks: tuple
    seed: int
    rank: int
    transform: BatchTransform
    eval_transform: BatchTransform
    mixer: object
    memory_format: torch.memory_format
    precision: Precision
    loss_fns: dict
    head_weights: dict
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: object
    ema: object
    raw_model: torch.nn.Module
    clip: object
    bar: object
    mean: list
    std: list
    out: Path = Path(".")
    valid_labels: np.ndarray | None = None
    mask_only_weight: float = 1.0
    marginal: object = joint_marginal  # batch target over class x year -> a task's target
    views: tuple = ("id",)  # test-time views averaged in validation


def unit_metrics(tasks, probs, labels_official):
    """Pure: metrics of one unit from its per-task probabilities. Units that cover the 18 classes
    are scored as the competition is; a single-task unit by that task's macro F1 (a years head, a
    training aid, is not scored)."""
    tasks = tuple(t for t in tasks if t != "years")
    if "label" in tasks or set(tasks) == set(MULTI_TASKS):
        return score(labels_official, combine_probs(probs).argmax(1).numpy())
    (t,) = tasks
    y = task_targets(labels_official, [t])[:, 0]
    pred = probs[t].argmax(1).numpy()
    f1 = macro_f1(y, pred, list(range(TASKS[t])))
    return {"f1": f1, "accuracy": float((y == pred).mean()), f"f1_{t}": f1}


def heads_loss(logits, target, tasks, loss_fns, weights, full=None, mask_only_weight=1.0, marginal=joint_marginal):
    """target: (B, 18 * YEARS) over class x year of age; each head learns its task's marginal (as
    `marginal` forms it: hard or soft age bands).
    full: (B,) 1 for photos with every label, 0 for those labelled with mask status only (None: all
    full). Mask-only rows teach the mask head, or the 18-class output through its mask marginal, and
    nothing else (weighted by mask_only_weight)."""
    heads = split_heads(logits, tasks)
    part = None if full is None else mask_only_weight * (1 - full)
    rows = {"mask": None if full is None else full + part}  # every row carries its mask state
    loss = sum(weights[t] * loss_fns[t](heads[t], marginal(target, t), rows.get(t, full)) for t in tasks)
    if part is not None and "label" in tasks:
        loss = loss + weights["label"] * mask_marginal_loss(heads["label"], joint_marginal(target, "mask"), part)
    return loss


def epoch_seed(seed, epoch, rank):
    """Augmentation, dropout and MixUp draws: the same after a resume, different on each rank."""
    return seed * 1000 + epoch + 1_000_003 * rank


# --- the loop ------------------------------------------------------------------------------------
def train_one_epoch(model, loader, loop, epoch):
    """One pass over the training loader; -> metrics dict over all of the epoch's predictions.
    Nothing is read back from the device until the epoch ends (the progress bar, when shown, every
    few steps), so the host queues work ahead of the GPU."""
    model.train()
    loader.sampler.set_epoch(epoch)
    seed = epoch_seed(loop.seed, epoch, loop.rank)
    gen = torch.Generator().manual_seed(seed)
    seed_everything(seed)
    total = torch.zeros((), device=loop.device)
    finite = torch.ones((), dtype=torch.bool, device=loop.device)
    logits_all, ys = [], []
    for step, (x, y, _) in enumerate(loop.bar.wrap(to_device(loader, loop.device), f"epoch {epoch + 1} train",
                                                   len(loader))):
        y, joint, full = y[:, 0], y[:, 1], y[:, 2].float()
        x = loop.transform(x, train=True, generator=gen).contiguous(memory_format=loop.memory_format)
        x, target = loop.mixer(x, joint)
        with loop.precision.autocast():
            logits = model(x)
            loss = heads_loss(logits, target, loop.tasks, loop.loss_fns, loop.head_weights, full, loop.mask_only_weight,
                              loop.marginal)
        loop.optimizer.zero_grad(set_to_none=True)
        loop.scaler.scale(loss).backward()
        loop.clip(loop.scaler, loop.optimizer, model.parameters())
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
        loop.schedule.step()
        loop.ema.update(loop.raw_model, step=epoch * len(loader) + step)
        loss = loss.detach()
        finite &= torch.isfinite(loss)
        total += loss * len(y)
        logits_all.append(logits.detach())
        # -1: mask status only, left out of the epoch's F1 (unless the mask state is all the model learns)
        ys.append(torch.where((full > 0) | (loop.tasks == ("mask",)), y, -1))
        loop.bar.report(step, lambda: _running_figures(loop, total, logits_all, ys))
    distributed.sync_state(loop.raw_model)
    distributed.sync_state(loop.ema.module)
    bad = nonfinite_tensor(loop.raw_model) or nonfinite_tensor(loop.ema.module)  # BatchNorm can overflow alone
    if not finite.item() or bad:
        last = loop.out / "last.pth"  # saved only from finite epochs, so it is good
        where = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was saved yet"
        what = "loss" if not finite.item() else f"weights ({bad})"
        raise UserError(f"{what} became nan or inf in epoch {epoch + 1}; {where}; lower --lr or enable --clip_grad")
    logits, y = _fully_labelled(logits_all, ys)
    m = unit_metrics(loop.tasks, task_probs(logits, loop.tasks), y.numpy())
    return {"loss": float(total) / max(sum(len(v) for v in ys), 1), "f1": m["f1"], "accuracy": m["accuracy"],
            "lr": top_lr(loop.optimizer)}


def _running_figures(loop, total, logits_all, ys):
    """The bar's figures over the epoch so far (reads the device: only called every few steps)."""
    logits, y = _fully_labelled(logits_all, ys)
    f1 = unit_metrics(loop.tasks, task_probs(logits, loop.tasks), y.numpy())["f1"]
    return dict(loss=f"{float(total) / max(sum(len(v) for v in ys), 1):.4f}", f1=f"{f1:.3f}", lr=f"{top_lr(loop.optimizer):.2e}")


def _fully_labelled(logits_all, ys):
    """The epoch's logits and labels on the host, without the mask-only rows (label -1)."""
    logits, y = torch.cat(logits_all).float().cpu(), torch.cat(ys).cpu()
    return logits[y >= 0], y[y >= 0]


@torch.no_grad()
def evaluate(model, loader, loop):
    """Validation over every sample exactly once (gathered from all ranks); -> metrics dict plus
    'probs' {task: (N, K)} in dataset order. Read back from the device once, at the end."""
    model.eval()
    idx_all, probs_all = [], []
    loss_sum = torch.zeros((), device=loop.device)
    for x, y, idx in loop.bar.wrap(to_device(loader, loop.device), "valid", len(loader)):
        x = loop.eval_transform(x).contiguous(memory_format=loop.memory_format)
        with loop.precision.autocast():
            probs, logits = view_average(model, x, loop.views, loop.tasks)
        target = torch.nn.functional.one_hot(y[:, 1], 18 * YEARS).float()
        loss_sum += heads_loss(logits, target, loop.tasks, loop.loss_fns, loop.head_weights, marginal=loop.marginal) * len(idx)
        idx_all.append(idx)
        probs_all.append(torch.cat([probs[t] for t in loop.tasks], 1))
    width = sum(TASKS[t] for t in loop.tasks)
    mine = (torch.cat(idx_all).cpu() if idx_all else torch.zeros(0, dtype=torch.long),
            torch.cat(probs_all).cpu() if probs_all else torch.zeros(0, width), float(loss_sum))
    parts = distributed.gather_objects(mine)
    idx = torch.cat([p[0] for p in parts])
    probs = split_heads(torch.cat([p[1] for p in parts])[idx.argsort()], loop.tasks)
    m = unit_metrics(loop.tasks, probs, loop.valid_labels)
    return {**m, "loss": sum(p[2] for p in parts) / max(len(idx), 1), "n": len(idx), "probs": probs}


def build_training(cfg, tasks, train_labels, steps_per_epoch, dist, out=Path("."), valid_labels=None):
    """Model, optimizer, schedule, scaler, EMA, losses and the loop's state for one unit (out: its folder;
    valid_labels: official labels of its validation rows).
    -> (model as trained: DDP-wrapped and/or compiled, raw model, Loop). Also used by benchmark.py."""
    dev = dist.device
    seed_everything(cfg.seed)
    model = create_model(cfg.model, tasks, cfg.pretrained, cfg.pretrained_path, cfg.drop_rate,
                         drop_path_rate=cfg.drop_path)
    pcfg = model.pretrained_cfg
    mean, std = list(pcfg.get("mean", (0.485, 0.456, 0.406))), list(pcfg.get("std", (0.229, 0.224, 0.225)))
    # channels_last also pays on CPU (docs/performance.md)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    raw_model = model = model.to(dev, memory_format=memory_format)
    ema = NoEma(raw_model)
    if cfg.ema > 0:
        from timm.utils import ModelEmaV3

        # Warm-up: a run of a few hundred steps would otherwise average in the ImageNet start.
        ema = ModelEmaV3(raw_model, decay=cfg.ema, use_warmup=True)
    optimizer = create_optimizer(cfg.optimizer, raw_model, cfg.lr, cfg.weight_decay,
                                 layer_decay=cfg.layer_decay)
    schedule = create_scheduler(cfg.scheduler, optimizer, cfg.lr, cfg.epochs, steps_per_epoch,
                                cfg.warmup_epochs)
    precision = choose_precision(dev, cfg.amp)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision.needs_scaler)
    if dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if cfg.compile and dev.type == "cuda":
        model = torch.compile(model)  # after DDP, as PyTorch documents: DDP's buckets guide the graph breaks
    counts = {t: np.bincount(task_targets(train_labels, [t])[:, 0], minlength=TASKS[t]) for t in tasks if t != "years"}
    loss_fns = {t: create_loss(cfg.loss, counts[t], cfg.smoothing) for t in counts}
    loss_fns["years"] = years_loss(cfg.years_sigma)
    loop = Loop(device=dev, tasks=tasks, seed=cfg.seed, rank=dist.rank, transform=BatchTransform(mean, std, cfg.augment),
                eval_transform=BatchTransform(mean, std, "none"), mixer=make_mixer(cfg), memory_format=memory_format,
                precision=precision, loss_fns=loss_fns,
                head_weights=dict(zip(MULTI_TASKS, cfg.head_weights), label=1.0, years=cfg.years_weight),
                optimizer=optimizer,
                scaler=scaler, schedule=schedule, ema=ema, raw_model=raw_model,
                clip=ClipGrad(cfg.clip_grad) if cfg.clip_grad > 0 else no_clip,
                bar=Bar() if cfg.progress and dist.is_main else NoBar(), mean=mean, std=std,
                out=Path(out), valid_labels=valid_labels, mask_only_weight=cfg.mask_only_weight,
                marginal=make_marginal(cfg), views=TTA_VIEWS[cfg.tta])
    return model, raw_model, loop


def seed_everything(seed: int):
    import torch
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
