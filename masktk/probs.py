"""From network outputs to probabilities: the heads split, softmax per task, the 18 classes folded into a task
(marginals) and the three tasks combined back into 18 classes.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from masktk.errors import UserError
from masktk.labels import TASKS, YEARS, decode


# --- turning head logits into probabilities ------------------------------------------------------
def split_heads(logits, tasks):
    sizes = [TASKS[t] for t in tasks]
    return dict(zip(tasks, torch.split(logits, sizes, dim=1)))


def task_probs(logits, tasks):
    """-> {task: softmax probabilities} for each head."""
    return {t: torch.softmax(v.float(), dim=1) for t, v in split_heads(logits, tasks).items()}


def combine_probs(probs):
    """{task: (N, K) probabilities} -> (N, 18): the 18-class distribution as given ('label'), or
    the product of the mask, gender and age distributions (tasks taken as independent); (N, 3) the mask
    state's alone for a mask-only model. A 'years' head is a training aid and takes no part: folding its age
    bands in (a product of experts) cost macro F1 (docs/results.md), as its distribution over 43 years rarely
    gives the one year that stands for '60 and over' enough weight."""
    if "label" in probs:
        return probs["label"]
    if set(probs) - {"years"} == {"mask"}:  # a run trained on a mask set: it answers the mask state alone
        return probs["mask"]
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
