"""Splits by person: a stratified holdout or k folds, so that no person is trained and validated on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from masktk.errors import UserError
from masktk.labels import MULTI_TASKS


def people_of(table):
    """One row per person with its sub_label, for splitting."""
    return table.groupby("people_path", sort=True)["sub_label"].first().reset_index()


def _can_stratify(y, n_splits):
    return len(y) >= 2 and np.bincount(y).max() >= 2 and np.bincount(y)[np.bincount(y) > 0].min() >= n_splits


def holdout_split(people, val_ratio=0.2, seed=42):
    """-> (train_people, valid_people): lists of people_path, stratified on sub_label."""
    from sklearn.model_selection import train_test_split
    y = people["sub_label"].to_numpy()
    n_valid = math.ceil(len(y) * val_ratio)
    # stratify when every class can give a person to each side; tiny datasets fall back to random
    fits = n_valid >= len(set(y)) and len(y) - n_valid >= len(set(y))
    strat = y if fits and _can_stratify(y, 2) else None
    if n_valid < 1 or n_valid >= len(y):
        raise UserError(f"{len(y)} people cannot be split with --val_ratio {val_ratio}")
    tr, va = train_test_split(people["people_path"].to_numpy(), test_size=val_ratio, random_state=seed,
                              stratify=strat)
    return sorted(tr), sorted(va)


def kfold_split(people, k=5, seed=42):
    """-> list of k (train_people, valid_people); each person is validated exactly once."""
    from sklearn.model_selection import KFold, StratifiedKFold
    if len(people) < k:
        raise UserError(f"{len(people)} people cannot be split into {k} folds; lower --k_folds")
    y = people["sub_label"].to_numpy()
    paths = people["people_path"].to_numpy()
    splitter = (StratifiedKFold(k, shuffle=True, random_state=seed) if _can_stratify(y, k)
                else KFold(k, shuffle=True, random_state=seed))
    return [(sorted(paths[a]), sorted(paths[b])) for a, b in splitter.split(paths, y)]


# --- plan: which (fold, task) units this invocation trains ---------------------------------------
# a photo of a mask set is stratified by the rarest mask state among its faces: incorrect, then none, then worn
RAREST_FIRST = (1, 2, 0)


def split_people(table):
    """The people a run's splits are drawn from (with the seed): the main dataset's, with the labels that
    stratify them (gender and age; for a mask set's photos, their rarest mask state)."""
    main = table[~table["extra"]]
    if not main["full"].all():
        rank = main["mask"].map({m: k for k, m in enumerate(RAREST_FIRST)})
        rarest = rank.groupby(main["people_path"]).transform("min").map(dict(enumerate(RAREST_FIRST)))
        return people_of(main.assign(sub_label=rarest))
    return people_of(main.assign(sub_label=lambda t: t["label_official"] % 6))


@dataclass(frozen=True)
class TrainingUnit:
    """One model a run trains: its folder inside the run ('' for the run itself, fold2, fold2/age, ...),
    the tasks its heads learn and the people it trains and validates on."""
    subdir: str
    tasks: tuple
    train: list
    valid: list

    @property
    def name(self):
        return self.subdir or "run"


def plan_units(cfg, table):
    """The units this invocation trains: every fold (or the one --fold names) x every task model."""
    main_people = split_people(table)
    extra_people = sorted(table.loc[table["extra"], "people_path"].unique())
    if cfg.cv:
        splits = kfold_split(main_people, cfg.k_folds, cfg.seed)
        folds = range(cfg.k_folds) if cfg.fold is None else [cfg.fold]
        if cfg.fold is not None and not 0 <= cfg.fold < cfg.k_folds:
            raise UserError(f"--fold {cfg.fold} is outside 0..{cfg.k_folds - 1}")
        splits = [(f"fold{i}", splits[i]) for i in folds]
    else:
        splits = [("", holdout_split(main_people, cfg.val_ratio, cfg.seed))]
    years = ("years",) if cfg.years_weight > 0 else ()
    if not table.loc[~table["extra"], "full"].all():  # a mask set: the mask state is all its photos teach
        if cfg.multi or cfg.heads or cfg.years_weight > 0:
            raise UserError(f"{cfg.train_dir} is a mask set (mask state only): --multi, --heads and --years_weight "
                            "need gender and age labels; leave them out")
        task_sets = [(("mask",), "")]
    elif cfg.multi:
        task_sets = [((t,) + (years if t == "age" else ()), t) for t in MULTI_TASKS]
    elif cfg.heads:
        task_sets = [(MULTI_TASKS + years, "")]
    else:
        task_sets = [(("label",) + years, "")]
    return [TrainingUnit(str(Path(s, sub)) if s or sub else "", tasks, list(tr) + extra_people, list(va))
            for s, (tr, va) in splits for tasks, sub in task_sets]
