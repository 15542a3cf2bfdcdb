"""The 18 classes and their three tasks: names, encoding, age bands. numpy only, so that scoring a
submission (evaluation.py) needs neither torch nor OpenCV.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

OFFICIAL_AGE_BOUNDS = (30, 60)


AGE_MIN, AGE_MAX = 18, 60  # the competition's ages: 18 to 60, 60 standing for 60 and over


YEARS = AGE_MAX - AGE_MIN + 1


# "years": a distribution over each year of age, an auxiliary head that teaches age as an ordered
# quantity (see model.fuse_years); the other tasks are the scored ones
TASKS = {"label": 18, "mask": 3, "gender": 2, "age": 3, "years": YEARS}


MASK_NAMES = ("wear", "incorrect", "not wear")


GENDER_NAMES = ("male", "female")


AGE_NAMES = ("<30", "30-59", ">=60")


def encode(mask, gender, age):
    return np.asarray(mask) * 6 + np.asarray(gender) * 3 + np.asarray(age)


def decode(label):
    label = np.asarray(label)
    return label // 6, (label // 3) % 2, label % 3


def age_class(age_years, bounds=OFFICIAL_AGE_BOUNDS):
    """0: < bounds[0], 1: < bounds[1], 2: the rest."""
    a = np.asarray(age_years)
    return (a >= bounds[0]).astype(int) + (a >= bounds[1]).astype(int)


def near_bound(age_years, bounds=OFFICIAL_AGE_BOUNDS, years=0):
    """True for ages at most `years` below a band's first age (years 2, bounds 30 60: 28, 29, 58, 59)."""
    a = np.asarray(age_years)
    return np.any([(a >= b - years) & (a < b) for b in bounds], axis=0) if years > 0 else np.zeros(a.shape, bool)


def year_index(age_years):
    """Age in years -> index of the years head (ages outside 18-60 clipped)."""
    return np.clip(np.asarray(age_years).astype(int), AGE_MIN, AGE_MAX) - AGE_MIN


def band_spread(sigma, bounds=OFFICIAL_AGE_BOUNDS):
    """(YEARS, 3): for each year of age (18..60), the share of a Gaussian of `sigma` years around it that
    falls in each age band (band edges half-way between whole years). Soft age targets: a person of 29
    is nearly as likely to look 30-59 as under 30, one of 24 is not. 60 stands for "60 and over", an open
    interval, so it keeps its band whole; sigma 0: the hard bands."""
    out = np.zeros((YEARS, 3))
    for i, y in enumerate(range(AGE_MIN, AGE_MAX + 1)):
        if sigma <= 0 or y >= AGE_MAX:
            out[i, age_class(y, bounds)] = 1.0
            continue
        below = [0.5 * (1 + math.erf((b - 0.5 - y) / (sigma * math.sqrt(2)))) for b in bounds]
        out[i] = below[0], below[1] - below[0], 1 - below[1]
    return out


def joint_targets(labels, age_years):
    """(N,) 18-class labels and ages -> (N,) index into label x year (18 * YEARS classes): one-hot (or
    mixed by CutMix/MixUp) over this joint, a batch's target carries both the class and the year."""
    return np.asarray(labels).astype(np.int64) * YEARS + year_index(age_years)


def loss_targets(labels, age_years, full=None):
    """-> (N, 3) the columns every training batch carries: the 18-class label (metrics, sampler), the
    label x year index (the loss) and 1 where all three tasks are labelled (0: a mask-only photo)."""
    labels = np.asarray(labels).astype(np.int64)
    full = np.ones(len(labels), np.int64) if full is None else np.asarray(full).astype(np.int64)
    return np.stack([labels, joint_targets(labels, age_years), full], axis=1)


def task_targets(labels, tasks):
    """(N,) 18-class labels -> (N, len(tasks)) integer targets for the given tasks."""
    mask, gender, age = decode(labels)
    parts = {"label": np.asarray(labels), "mask": mask, "gender": gender, "age": age}
    return np.stack([parts[t] for t in tasks], axis=1).astype(np.int64)


def prob_columns(task):
    """Column names of a task's probabilities in valid_preds.csv and oof.csv: p0..p17, mask0..mask2, ..."""
    return [f"{'p' if task == 'label' else task}{k}" for k in range(TASKS[task])]


def class_names():
    return [f"{MASK_NAMES[m]}/{GENDER_NAMES[g]}/{AGE_NAMES[a]}" for m, g, a in zip(*decode(np.arange(18)))]


MULTI_TASKS = ("mask", "gender", "age")


@dataclass(frozen=True)
class Answer:
    """What a run answers: the 18 classes (mask, gender and age), or the mask state alone (a run trained on a public
    mask set, whose photos carry no gender or age). Its class ids are 18-class labels, or mask states."""
    name: str  # "label" or "mask": the task whose classes it decides
    tasks: tuple  # the tasks it answers; the others are absent from its outputs, never invented

    @property
    def classes(self):
        return TASKS[self.name]

    def of_labels(self, labels):
        """18-class labels -> this answer's class ids."""
        return np.asarray(labels) if self.name == "label" else decode(labels)[0]

    def of_probs(self, p18):
        """(N, 18) class probabilities -> (N, classes): the mask state's sum over gender and age for a mask answer."""
        p = np.asarray(p18)
        return p if self.name == "label" else p.reshape(len(p), 3, 6).sum(2)

    def names(self):
        """Its classes' names: 'wear/male/<30', ... or the mask states'."""
        return class_names() if self.name == "label" else list(MASK_NAMES)

    def fields(self, k):
        """A class id -> {label, mask, gender, age, and their names}: None where the run does not answer it."""
        if self.name == "label":
            m, g, a = (int(v) for v in decode(int(k)))
            return dict(label=int(k), mask=m, gender=g, age=a, mask_name=MASK_NAMES[m], gender_name=GENDER_NAMES[g],
                        age_name=AGE_NAMES[a])
        return dict(label=None, mask=int(k), gender=None, age=None, mask_name=MASK_NAMES[int(k)], gender_name=None,
                    age_name=None)


FULL = Answer("label", MULTI_TASKS)


MASK_ONLY = Answer("mask", ("mask",))


ANSWERS = {a.classes: a for a in (FULL, MASK_ONLY)}


def answer_of(width):
    """A probability width (18 or 3) -> its Answer."""
    if width not in ANSWERS:
        raise ValueError(f"{width} probabilities per face: {' or '.join(map(str, ANSWERS))} expected")
    return ANSWERS[width]


def face_text(row, sep=" | "):
    """A face row's answered labels in words: 'wear | female | <30', or 'wear' for a mask-only run."""
    return sep.join(row[k] for k in ("mask_name", "gender_name", "age_name") if row.get(k) is not None)


# the class names public mask datasets use (VOC object names, YOLO class names, folder names) -> mask id; the
# Spanish names are those of the MaskON repository's copy of the Kaggle set
MASK_SET_NAMES = {
    "with_mask": 0, "mask": 0, "masked": 0, "face_mask": 0, "mask_on": 0, "con_mascarilla": 0,
    "mask_weared_incorrect": 1, "mask_worn_incorrectly": 1, "mask_worn_incorrect": 1, "incorrect_mask": 1,
    "incorrectly_worn_mask": 1, "mask_incorrect": 1, "improperly_worn_mask": 1, "mascarilla_mal_puesta": 1,
    "without_mask": 2, "no_mask": 2, "nomask": 2, "no_face_mask": 2, "unmasked": 2, "sin_mascarilla": 2,
}


def mask_of_name(name):
    """A dataset's class name (any case, spaces or hyphens) -> mask id, or None when it names no mask state."""
    return MASK_SET_NAMES.get(str(name).strip().lower().replace(" ", "_").replace("-", "_"))
