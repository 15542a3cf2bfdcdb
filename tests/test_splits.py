"""masktk/data/splits.py: splits by person."""
import numpy as np
import pandas as pd

from masktk.data.splits import holdout_split, kfold_split, people_of
from masktk.data.table import build_table
from masktk.errors import Log


def _people(n_per=6):
    return pd.DataFrame({"people_path": [f"p{i:03d}" for i in range(6 * n_per)],
                         "sub_label": np.repeat(np.arange(6), n_per)})


def test_splits_are_by_person_and_stratified(tiny_root):
    people = _people()
    tr, va = holdout_split(people, 0.2, seed=1)
    assert not set(tr) & set(va) and set(tr) | set(va) == set(people["people_path"])
    folds = kfold_split(people, k=5, seed=1)
    seen = []
    lab = dict(zip(people["people_path"], people["sub_label"]))
    for tr, va in folds:
        assert not set(tr) & set(va)
        assert {lab[p] for p in va} == set(range(6)) and {lab[p] for p in tr} == set(range(6))
        seen += va
    assert sorted(seen) == sorted(people["people_path"])
    # on a real table: no person (by id, not by a path that already holds it) on both sides
    t = build_table(tiny_root / "train", log=Log(quiet=True))
    tr, va = holdout_split(people_of(t), 0.25, seed=0)
    assert not set(t.loc[t["people_path"].isin(tr), "id"]) & set(t.loc[t["people_path"].isin(va), "id"])
    assert set(t.loc[t["people_path"].isin(tr), "id"]) | set(t.loc[t["people_path"].isin(va), "id"]) == set(t["id"])
