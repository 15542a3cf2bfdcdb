"""Writing a dataset in the competition layout (train/images/<person>/..., train.csv, eval/images, info.csv,
gt.csv), replacing only a folder the toolkit made itself.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from masktk.data.table import MASK_STEMS
from masktk.errors import UserError
from masktk.files import temp_dir_beside
from masktk.labels import age_class, encode
from masktk.outputs import foreign_files, read_manifest, record_written


def check_replaceable(out):
    """--output_dir is replaced whole, so it must be new, empty, or made by this script and hold only files
    the toolkit wrote (its manifest lists them): real data or a user's file in it would otherwise be deleted."""
    out = Path(out)
    if out.resolve() == Path.cwd().resolve() or out.resolve() in Path.cwd().resolve().parents:
        raise UserError(f"{out} is the current folder or holds it, and would be replaced whole: choose another "
                        "--output_dir")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir() or read_manifest(out)[0] != "synthetic.py":
        raise UserError(f"{out} exists and was not made by synthetic.py (no list of its files in it), so it is "
                        "not replaced: choose another --output_dir, or delete it yourself")
    foreign = foreign_files(out)
    if foreign:
        raise UserError(f"{out} holds {len(foreign)} file(s) synthetic.py did not write ({foreign[0]}), so it is "
                        "not replaced: move them, choose another --output_dir, or delete it yourself")


def write_dataset(people, out, eval_ratio, seed):
    """Writes train/ and eval/ splits by person from (person, photos) pairs. Returns counts."""
    out = Path(out).resolve()  # "." has no name to put a temporary sibling beside
    out.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own: a sibling .tmp-<name> folder may be someone else's (or another run's)
    tmp = temp_dir_beside(out)
    train_rows, eval_rows, boxes = [], [], []
    for p, photos in people:
        is_eval = np.random.default_rng([seed, int(p["id"][:6]), 7]).random() < eval_ratio
        gname = "female" if p["gender"] else "male"
        folder = f"{p['id']}_{gname}_{p.get('race', 'Asian')}_{p['age']}"
        for stem, data in photos.items():
            label = int(encode(MASK_STEMS[stem], p["gender"], age_class(p["age"])))
            if is_eval:
                name = hashlib.sha1(f"{seed}-{folder}-{stem}".encode()).hexdigest()[:24] + ".jpg"
                dst = tmp / "eval" / "images" / name
                eval_rows.append((name, label))
            else:
                dst = tmp / "train" / "images" / folder / f"{stem}.jpg"
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(data)
            if "boxes" in p:  # the builder placed this face itself: detection can be scored against it
                split = "eval" if is_eval else "train"
                boxes.append(dict(split=split, path=dst.relative_to(tmp / split / "images").as_posix(),
                                  mask=MASK_STEMS[stem], **dict(zip(("x1", "y1", "x2", "y2"), p["boxes"][stem]))))
        if not is_eval:
            train_rows.append(dict(id=p["id"], gender=gname, race=p.get("race", "Asian"), age=p["age"], path=folder))
    if not train_rows or not eval_rows:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError("too few people for a train and an eval split; raise --people")
    pd.DataFrame(train_rows).to_csv(tmp / "train" / "train.csv", index=False)
    ev = pd.DataFrame(eval_rows, columns=["ImageID", "ans"])
    ev = ev.iloc[np.random.default_rng(seed).permutation(len(ev))]
    ev.assign(ans=0).to_csv(tmp / "eval" / "info.csv", index=False)
    ev.to_csv(tmp / "eval" / "gt.csv", index=False)
    if boxes:
        pd.DataFrame(boxes).to_csv(tmp / "faces_gt.csv", index=False)
    move_into_place(tmp, out)
    return len(train_rows), len(ev) // 7


def move_into_place(tmp, out):
    """The folder written at `tmp` becomes `out`, listed as synthetic.py's and replacing whole what was there
    (never a mix of two generations), checked again: `out` may have appeared while the photos were drawn."""
    record_written(tmp, [f.relative_to(tmp).as_posix() for f in tmp.rglob("*") if f.is_file()], "synthetic.py")
    try:
        check_replaceable(out)
    except UserError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
