"""The label table of a training set (one row per photo: path, age, gender, mask, label, person) read from
the competition layout with the published label fixes, and the eval set's reader.
"""
from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from masktk.errors import Log, UserError
from masktk.files import check_ids, inside
from masktk.images import IMG_EXTS, header_size, read_bytes, too_large, truncated_jpeg, why_unreadable
from masktk.labels import OFFICIAL_AGE_BOUNDS, age_class, encode

MASK_STEMS = {"mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0, "incorrect_mask": 1, "normal": 2}


GENDERS = {"male": 0, "female": 1}


TABLE_COLUMNS = ["path", "age", "gender", "mask", "label", "people_path", "sub_label"]


DEFAULT_FIXES = Path(__file__).resolve().with_name("label_fixes.csv")  # shipped with the package


# Crop of the face region used when training on images/ instead of faces/: the competition
# photos are head-and-shoulders shots with the face in the upper middle.
CENTER_REGION = (0.18, 0.12, 0.82, 0.72)  # x1, y1, x2, y2 as fractions of width/height


PLAUSIBLE_AGES = (1, 120)  # years; anything else is a typo or a code, never a person's age


def read_fixes(path):
    """The label fixes file (id, field, value). A file named on the command line must exist; the repo's
    default is optional."""
    if path is None or (not Path(path).exists() and Path(path) == DEFAULT_FIXES):
        return pd.DataFrame(columns=["id", "field", "value"])
    if not Path(path).is_file():
        raise UserError(f"{path}: label fixes file not found (--fixes); give an existing CSV of id,field,value")
    fixes = pd.read_csv(path, dtype=str)
    missing = {"id", "field", "value"} - set(fixes.columns)
    if missing:
        raise UserError(f"{path}: missing columns {sorted(missing)}; expected id,field,value")
    return fixes


def _age(value, where, log):
    """A train.csv age in years, or None (warned) when it is not a number or not a plausible age."""
    try:
        age = int(float(str(value).strip()))
    except (ValueError, OverflowError):
        log.warn("bad age", f"{where}: age {value!r} is not a number, person skipped")
        return None
    if not PLAUSIBLE_AGES[0] <= age <= PLAUSIBLE_AGES[1]:
        log.warn("bad age", f"{where}: age {value!r} is not a plausible age in years, person skipped")
        return None
    return age


def read_people(data_dir, fixes_path=DEFAULT_FIXES, log=None):
    """One row per valid person: id, gender (0/1), race, age_years, people_path, mask_swap."""
    data_dir = Path(data_dir)
    log = log or Log()
    csv = data_dir / "train.csv"
    if not csv.is_file():
        raise UserError(f"{csv} not found: the training dir must hold train.csv and images/ "
                        "(set SM_CHANNEL_TRAIN or --train_dir)")
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except Exception as e:
        raise UserError(f"{csv}: cannot be read as CSV ({e})")
    need = {"id", "gender", "age", "path"}
    if need - set(df.columns):
        raise UserError(f"{csv}: missing columns {sorted(need - set(df.columns))}; "
                        "expected id,gender,race,age,path")
    img_root = data_dir / "images"
    if not img_root.is_dir():
        raise UserError(f"{img_root} not found: the training dir must hold images/<person folders>")
    folders = {p.name for p in img_root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    rows, seen = [], set()
    for r in df.itertuples(index=False):
        pid, folder = str(r.id).strip(), str(r.path).strip()
        where = f"{csv.name} row id={pid!r}"
        if pid in seen:
            log.warn("duplicate id", f"{where}: duplicate id, keeping the first row")
            continue
        seen.add(pid)
        gender = GENDERS.get(str(r.gender).strip().lower())
        if gender is None:
            log.warn("bad gender", f"{where}: gender {r.gender!r} is not male/female, person skipped")
            continue
        age = _age(r.age, where, log)
        if age is None:
            continue
        inside(img_root, folder)  # refuses '../' escapes
        if folder not in folders:
            log.warn("row without folder", f"{where}: no folder images/{folder}, person skipped")
            continue
        rows.append(dict(id=pid, gender=gender, race=getattr(r, "race", ""), age_years=age,
                         people_path=folder, mask_swap=False))
    for folder in sorted(folders - {r["people_path"] for r in rows} - set(df["path"].astype(str))):
        log.warn("folder without row", f"images/{folder}: folder has no row in train.csv, skipped")
    people = pd.DataFrame(rows, columns=["id", "gender", "race", "age_years", "people_path", "mask_swap"])
    for f in read_fixes(fixes_path).itertuples(index=False):
        hit = people["id"] == str(f.id)
        if not hit.any():
            continue
        if f.field == "gender" and f.value in GENDERS:
            people.loc[hit, "gender"] = GENDERS[f.value]
        elif f.field == "mask" and f.value == "swap_incorrect_normal":
            people.loc[hit, "mask_swap"] = True
        else:
            raise UserError(f"{fixes_path}: unknown fix {f.field}={f.value} (known: gender=male|female, "
                            "mask=swap_incorrect_normal)")
    return people


def image_ok(path, log=None) -> bool:
    """Cheap check (header, and a JPEG's end); full decoding happens once, in the cache. A tiny image is
    kept with a warning: it will be enlarged to the model's input size."""
    try:
        data = read_bytes(path)
        if data.size == 0 or truncated_jpeg(data):
            return False
        w, h = header_size(io.BytesIO(data))  # the bytes already read: no second open
        if too_large((w, h)):
            return False
        if min(w, h) < 32 and log:
            log.warn("tiny image", f"{path}: only {w}x{h} pixels; it will be enlarged to the input size")
        return True
    except Exception:
        return False


def build_table(data_dir, age_bounds=OFFICIAL_AGE_BOUNDS, fixes_path=DEFAULT_FIXES, max_bad=0.01,
                log=None, check_images=True):
    """Per-image label table (TABLE_COLUMNS + age_years, id) of a training dir."""
    data_dir = Path(data_dir)
    log = log or Log()
    people = read_people(data_dir, fixes_path, log)
    rows, bad, total = [], 0, 0
    for p in people.itertuples(index=False):
        folder = data_dir / "images" / p.people_path
        stems = {}
        for f in sorted(folder.iterdir()):
            if f.name.startswith("."):
                log.warn("hidden file", f"{f}: hidden file skipped")
                continue
            if f.suffix.lower() not in IMG_EXTS or f.stem not in MASK_STEMS:
                log.warn("unknown file", f"{f}: not one of {'/'.join(MASK_STEMS)}.jpg|jpeg|png, skipped")
                continue
            if f.stem in stems:
                log.warn("extra photo", f"{f}: second file for {f.stem}, skipped")
                continue
            total += 1
            if check_images and not image_ok(f, log):
                bad += 1
                log.warn("unreadable image", f"{f}: {why_unreadable(f)}, skipped")
                continue
            stems[f.stem] = f
        if len(stems) != len(MASK_STEMS):
            miss = sorted(set(MASK_STEMS) - set(stems))
            log.warn("incomplete person", f"{folder}: missing {','.join(miss)}; using the {len(stems)} present")
        for stem, f in stems.items():
            mask = MASK_STEMS[stem]
            if p.mask_swap and mask in (1, 2):
                mask = 3 - mask
            rows.append(dict(path=f.relative_to(data_dir).as_posix(), age_years=p.age_years,
                             gender=p.gender, mask=mask, people_path=p.people_path, id=p.id))
    if total and bad / total > max_bad:
        raise UserError(f"{data_dir}: {bad} of {total} images are unreadable ({bad / total:.1%} > "
                        f"--max_bad {max_bad:.1%}); fix or remove them, or raise --max_bad")
    if not rows:
        raise UserError(f"{data_dir}: no usable images found (see warnings above)")
    t = pd.DataFrame(rows)
    t["age"] = age_class(t["age_years"], age_bounds)
    t["label"] = encode(t["mask"], t["gender"], t["age"])
    t["sub_label"] = t["gender"] * 3 + t["age"]
    return t[TABLE_COLUMNS + ["age_years", "id"]].reset_index(drop=True)


def has_faces(split_dir):
    """Whether face_image.py has cropped this split: its faces/boxes.csv is written last, so a folder
    left by an interrupted run does not count. Training and inference both ask this."""
    return (Path(split_dir) / "faces" / "boxes.csv").is_file()


def read_eval(eval_dir, source="images"):
    """info.csv rows with absolute image paths; every ImageID must exist (a submission covers all)."""
    eval_dir = Path(eval_dir)
    info_path = eval_dir / "info.csv"
    if not info_path.is_file():
        raise UserError(f"{info_path} not found: the eval dir must hold info.csv and images/ "
                        "(set SM_CHANNEL_EVAL or --eval_dir)")
    try:
        info = pd.read_csv(info_path, dtype={"ImageID": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{info_path}: cannot be read as CSV ({str(e).splitlines()[0]}); it must hold ImageID,ans rows")
    if "ImageID" not in info.columns:
        raise UserError(f"{info_path}: no ImageID column")
    if info.empty:
        raise UserError(f"{info_path}: no rows")
    check_ids(info["ImageID"], info_path)
    root = eval_dir / source
    paths = []
    for iid in info["ImageID"]:
        p = inside(root, iid)
        if not p.is_file():
            raise UserError(f"{p}: image listed in {info_path.name} is missing; a submission must "
                            "cover every ImageID")
        paths.append(p)
    return info, paths
