"""Losses by name. Every loss takes (logits (B, K), target probabilities (B, K), rows) so that one-hot
labels, smoothed labels and CutMix/MixUp targets go through the same code; `rows` ((B,) 0/1 weights)
picks the rows that carry the task's label (photos labelled with mask status only carry no gender or
age).

Used by train.py (`--loss NAME`); `python loss.py` lists them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from masktk.errors import UserError
from masktk.labels import YEARS


def _mean(per_row, rows):
    """The batch mean with each row weighted (rows: (B,) weights, 0 for rows without this task's label;
    None: every row 1). Divided by the batch size, not by the weights' sum: a row weighs the same
    whatever the batch holds, so a few mask-only rows in a batch are not blown up to the weight of
    all the others (measured: that cost 0.09 macro F1 on a real-face holdout)."""
    if rows is None:
        return per_row.mean()
    return (per_row * rows).mean()


def cross_entropy(logits, target, weight=None, smoothing=0.0, rows=None):
    # torch's built-in: probability targets, class weights and label smoothing in one call
    return _mean(F.cross_entropy(logits.float(), target, weight=weight, label_smoothing=smoothing, reduction="none"),
                 rows)


def focal(logits, target, weight=None, smoothing=0.0, rows=None, gamma=2.0):
    logp = F.log_softmax(logits.float(), dim=1)
    target = target * (1 - smoothing) + smoothing / target.shape[1]
    loss = -(target * (1 - logp.exp()) ** gamma * logp)
    if weight is not None:
        loss = loss * weight
    return _mean(loss.sum(1), rows)


def f1(logits, target, weight=None, smoothing=0.0, rows=None, eps=1e-7):
    """1 - soft macro F1 over the batch (differentiable surrogate of the metric)."""
    p = F.softmax(logits.float(), dim=1)
    if rows is not None:
        p, target = p * rows[:, None], target * rows[:, None]
    tp = (p * target).sum(0)
    prec = tp / (p.sum(0) + eps)
    rec = tp / (target.sum(0) + eps)
    return 1 - (2 * prec * rec / (prec + rec + eps)).mean()


def symmetric_ce(logits, target, weight=None, smoothing=0.0, rows=None, alpha=0.1, beta=1.0):
    """Symmetric cross entropy (Wang et al. 2019): CE plus reverse CE, robust to label noise."""
    ce = cross_entropy(logits, target, weight, smoothing, rows)
    p = F.softmax(logits.float(), dim=1).clamp(min=1e-7)
    rce = _mean(-(p * target.clamp(min=1e-4).log()).sum(1), rows)
    return alpha * ce + beta * rce


def mask_marginal_loss(logits18, mask_target, rows):
    """Loss of the 18-class output on photos labelled with mask status only: -log of the probability
    the output gives the labelled mask state (the sum over its 6 gender x age classes), so gender and
    age get no push either way. mask_target: (B, 3) mask distribution; rows: (B,) 0/1 weights."""
    logp = F.log_softmax(logits18.float(), dim=1).view(-1, 3, 6)
    return _mean(-(mask_target * torch.logsumexp(logp, dim=2)).sum(1), rows)


# name -> (function, default label smoothing, uses class weights)
LOSSES = {
    "cross_entropy": (cross_entropy, 0.0, False),
    "label_smoothing": (cross_entropy, 0.1, False),
    "weighted_ce": (cross_entropy, 0.0, True),
    "focal": (focal, 0.0, False),
    "f1": (f1, 0.0, False),
    "symmetric_ce": (symmetric_ce, 0.0, False),
}
# what each does, in one line (loss.py lists them)
ABOUT = {
    "cross_entropy": "cross entropy against the target distribution",
    "label_smoothing": "cross entropy with 0.1 of each target spread evenly over the classes",
    "weighted_ce": "cross entropy with inverse-frequency class weights from the training split",
    "focal": "focal loss (gamma 2): confident, easy photos weigh less",
    "f1": "1 - soft macro F1 over the batch, a differentiable stand-in for the metric",
    "symmetric_ce": "cross entropy plus reverse cross entropy (Wang et al. 2019), robust to label noise",
}


def class_weights(counts):
    """Inverse-frequency weights from the training split's class counts, mean 1."""
    counts = torch.as_tensor(counts, dtype=torch.float).clamp(min=1)
    w = counts.sum() / counts
    return w / w.mean()


def years_loss(sigma):
    """Loss of the years head: cross entropy against the target's age spread over neighbouring years
    by a Gaussian of `sigma` years (label distribution learning: 34 and 36 are near misses for 35, 60
    is not), so the head learns age as an ordered quantity from few people per year."""
    k = torch.arange(YEARS, dtype=torch.float)
    kernel = torch.exp(-((k[:, None] - k[None, :]) ** 2) / (2 * sigma ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)
    on_device = {}

    def loss(logits, p_years, rows=None):
        if logits.device not in on_device:
            on_device[logits.device] = kernel.to(logits.device)
        return cross_entropy(logits, p_years.float() @ on_device[logits.device], rows=rows)

    return loss


def create_loss(name, class_counts=None, smoothing=None):
    """-> loss(logits, target_probs). `class_counts` feeds weighted_ce."""
    if name not in LOSSES:
        raise UserError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    fn, default_smoothing, weighted = LOSSES[name]
    eps = default_smoothing if smoothing is None else smoothing
    w = class_weights(class_counts) if weighted and class_counts is not None else None

    on_device = {}  # the weights sent once per device: a copy per step would stall the GPU

    def loss(logits, target, rows=None):
        if w is not None and logits.device not in on_device:
            on_device[logits.device] = w.to(logits.device)
        return fn(logits, target, weight=on_device.get(logits.device), smoothing=eps, rows=rows)

    return loss
