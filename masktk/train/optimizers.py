"""Optimizers and learning-rate schedules by name, through timm's and torch's factories.

Used by train.py (`--optimizer NAME --scheduler NAME`); `python optimizer.py` lists them. Schedules step once per
optimizer update, so a resumed run continues the curve where it stopped.
"""
from __future__ import annotations

import torch

from masktk.errors import UserError

# our name -> timm's optimizer name (timm.optim.create_optimizer_v2)
OPTIMIZERS = {"adam": "adam", "adamw": "adamw", "sgd": "momentum", "madgrad": "madgrad", "radam": "radam",
              "nadam": "nadam", "rmsprop": "rmsproptf", "lamb": "lamb", "adabelief": "adabelief", "lion": "lion"}


SCHEDULERS = ("onecycle", "cosine", "step", "cyclic", "constant")
# what each does, in one line (optimizer.py lists them)
ABOUT = {
    "adam": "Adam",
    "adamw": "AdamW: Adam with decoupled weight decay (--weight_decay)",
    "sgd": "SGD with momentum (--momentum)",
    "madgrad": "MADGRAD: dual averaging with momentum (timm)",
    "radam": "RAdam: Adam with its early variance rectified",
    "nadam": "NAdam: Adam with Nesterov momentum",
    "rmsprop": "RMSprop as TensorFlow has it (timm's rmsproptf)",
    "lamb": "LAMB: Adam with a trust ratio per layer, for large batches",
    "adabelief": "AdaBelief: steps scaled by the belief in the gradient's direction",
    "lion": "Lion: sign of a momentum blend, one moment kept (Chen et al. 2023)",
}
SCHEDULE_ABOUT = {
    "onecycle": "warm up to the peak lr (--warmup_epochs), then anneal to near zero (torch's OneCycleLR)",
    "cosine": "cosine decay to 1/1000 of the peak after an optional warm-up (timm)",
    "step": "the lr divided by 10 every third of the run, after an optional warm-up (timm)",
    "cyclic": "triangular cycles between 1/10 of the peak and the peak, 2 epochs up, 2 down (the original's)",
    "constant": "the lr stays at --lr throughout",
}


def create_optimizer(name, model, lr, weight_decay=0.0, momentum=0.9, layer_decay=0.0):
    """layer_decay (0: off): each block's lr is this fraction of the next one's, down from the head
    (timm's layer-wise decay: the ImageNet features near the input change least)."""
    from timm.optim import create_optimizer_v2
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    kw = {"momentum": momentum} if name == "sgd" else {}
    return create_optimizer_v2(model, opt=OPTIMIZERS[name], lr=lr, weight_decay=weight_decay,
                               layer_decay=layer_decay or None, **kw)


def top_lr(optimizer):
    """The head's lr (with layer decay the groups differ; the first is the stem's)."""
    return max(g["lr"] for g in optimizer.param_groups)


class Schedule:
    """Uniform per-update interface over timm schedulers (cosine, step with warmup) and torch's
    OneCycleLR/CyclicLR: call .step() after each optimizer step."""

    def __init__(self, impl, timm_style):
        self.impl, self.timm_style, self.updates = impl, timm_style, 0

    def step(self):
        self.updates += 1
        if self.impl is None:
            return
        if self.timm_style:
            self.impl.step_update(self.updates)
        else:
            self.impl.step()

    def state_dict(self):
        return {"updates": self.updates, "impl": self.impl.state_dict() if self.impl is not None else None}

    def load_state_dict(self, sd):
        self.updates = sd["updates"]
        if self.impl is not None:
            self.impl.load_state_dict(sd["impl"])


def create_scheduler(name, optimizer, lr, epochs, steps_per_epoch, warmup_epochs=0.0):
    total = max(1, epochs * steps_per_epoch)
    # torch's schedules take one peak per parameter group; timm's layer decay scales each group's
    # (timm's own schedules apply lr_scale themselves)
    peaks = [lr * g.get("lr_scale", 1.0) for g in optimizer.param_groups]
    if name == "onecycle":
        # OneCycleLR needs at least a step in each phase: two spare steps, and a warm-up of at least
        # one step (--warmup_epochs 0: just that), at most half the run
        steps = total + 2
        pct = min(0.5, max(warmup_epochs / max(epochs, 1), 1.01 / steps))
        impl = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=steps, pct_start=pct)
        return Schedule(impl, False)
    if name == "cyclic":  # the original recipe's triangular cycle, 2 epochs up, 2 down
        impl = torch.optim.lr_scheduler.CyclicLR(optimizer, base_lr=[p / 10 for p in peaks], max_lr=peaks,
                                                 step_size_up=max(1, 2 * steps_per_epoch), cycle_momentum=False)
        return Schedule(impl, False)
    if name in ("cosine", "step"):
        from timm.scheduler import create_scheduler_v2
        impl, _ = create_scheduler_v2(optimizer, sched=name, num_epochs=epochs, warmup_epochs=warmup_epochs,  # fractions too: timm scales by updates
                                      decay_epochs=max(1, epochs // 3), min_lr=lr * 1e-3, warmup_lr=lr * 1e-2,
                                      step_on_epochs=False, updates_per_epoch=steps_per_epoch)
        return Schedule(impl, True)
    if name == "constant":
        return Schedule(None, False)
    raise UserError(f"unknown scheduler {name!r}; valid: {', '.join(SCHEDULERS)}")
