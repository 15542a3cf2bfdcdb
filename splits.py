"""Splits by person: a stratified holdout or k folds, so that no person is trained and validated on.

Not a script; imported by train.py.
"""
from __future__ import annotations

import math

import numpy as np

from utils import UserError


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
