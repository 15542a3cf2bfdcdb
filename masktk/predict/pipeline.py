"""The one prediction path, shared by inference.py, predict.py, export.py, serve.py and benchmark.py: which
checkpoints a run holds, how each predicts a batch of photos (with TTA), how a run's models combine, and
how its faces are to be cut.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch

from masktk.data.augment import BatchTransform
from masktk.data.loaders import pinned_batches, to_device
from masktk.errors import UserError
from masktk.faces.crop import LEGACY_RECIPE, CropRecipe
from masktk.labels import FULL, MASK_ONLY
from masktk.models import choose_precision
from masktk.probs import combine_probs
from masktk.tta import TTA_VIEWS, view_average

TASK_DIRS = ("mask", "gender", "age")


@torch.no_grad()
def predict_probs(model, meta, images, tta="none", batch_size=32, device="cpu", channels_last=True, amp=True):
    """The one prediction path: (model, uint8 images (N, H, W, 3)) -> {task: (N, K) probabilities},
    averaged over the TTA views. Batches are read once into pinned memory by helper threads and
    sent ahead on a side stream; results stay on the device until the end (one read back), and one
    autocast region covers the whole pass (its cast weights are reused, not re-cast per batch)."""
    dev = torch.device(device)
    transform = BatchTransform(meta.mean, meta.std, "none")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    views = TTA_VIEWS[tta]
    out = {}
    with choose_precision(dev, amp).autocast():
        for (x,) in to_device(pinned_batches(images, batch_size, dev.type == "cuda"), dev):
            x = transform(x.permute(0, 3, 1, 2)).contiguous(memory_format=fmt)
            probs, _ = view_average(model, x, views, meta.tasks)
            for t, p in probs.items():
                out.setdefault(t, []).append(p)
    return {t: torch.cat(v).cpu() for t, v in out.items()}


# --- choosing checkpoints -------------------------------------------------------------------------
def find_groups(run_dir, pth_name="best.pth", cv=None, multi=None):
    """Checkpoint groups of one run: each group's tasks together give the 18 classes; groups are
    averaged (CV folds). cv/multi: None to detect, True/False to insist."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory: set SM_CHANNEL_MODEL / --model_dir (a folder of runs) or "
                        "--run_dir to a folder written by train.py")
    folds = sorted((p for p in run_dir.glob("fold*") if p.is_dir() and p.name[4:].isdigit()),
                   key=lambda p: int(p.name[4:]))
    if cv is None:
        cv = bool(folds) and not (run_dir / pth_name).is_file()
    if cv and not folds:
        raise UserError(f"{run_dir}: --cv True but no fold*/ folders; train with python train.py --cv True")
    groups = [_group(d, pth_name, multi) for d in (folds if cv else [run_dir])]
    if cv:
        unfinished = [f"fold{i}" for i in range(_planned_folds(run_dir)) if not (run_dir / f"fold{i}").is_dir()]
        # a fold still training already has a best.pth (its best epoch so far); metrics.json marks it done
        unfinished += [d.name for d, g in zip(folds, groups) if not g or not _finished(g)]
        if unfinished:
            raise UserError(f"{run_dir}: {', '.join(sorted(set(unfinished)))} not finished (no {pth_name} or no "
                            f"metrics.json); finish them (python train.py --cv True --fold i --run_dir {run_dir}) "
                            "rather than average fewer folds than the run has")
    if not groups or not groups[0]:
        hint = " (it holds fold*/ folders: pass --cv True)" if folds else ""
        raise UserError(f"{run_dir}: no {pth_name} found{hint}")
    if not cv and (run_dir / "config.json").is_file() and not _finished(groups[0]):
        # still training, or stopped (killed, out of memory, a reboot): its best epoch so far, no fitted decision
        print(f"warning: {run_dir} has not finished training (no metrics.json): predicting with its best epoch "
              f"so far; finish it with python train.py --resume {run_dir}", file=sys.stderr)
    return groups


def _finished(group):
    return all((Path(p).parent / "metrics.json").is_file() for p in group)


def _planned_folds(run_dir):
    """How many folds the CV run was planned with (its config.json, checked), 0 where that is not known."""
    from masktk.train.settings import read_run_config
    return read_run_config(run_dir).k_folds if (run_dir / "config.json").is_file() else 0


def _group(d, pth_name, multi):
    task_ckpts = [d / t / pth_name for t in TASK_DIRS]
    if multi is None:
        multi = all(p.is_file() for p in task_ckpts) and not (d / pth_name).is_file()
    if multi:
        if not all(p.is_file() for p in task_ckpts):
            raise UserError(f"{d}: --multi True needs {', '.join(t + '/' + pth_name for t in TASK_DIRS)}")
        return task_ckpts
    return [d / pth_name] if (d / pth_name).is_file() else []


def trained_crop_recipe(metas):
    """-> the CropRecipe the models' training crops were cut with (their checkpoints record it), or None
    (models trained on whole photos, or on crops cut before recipes were recorded)."""
    found = {CropRecipe.from_dict(m.face_crop) for m in metas if m.crop == "none" and m.face_crop}
    if len(found) > 1:
        raise UserError("the models were trained on face crops cut in different ways (" + "; ".join(
            sorted(r.describe() for r in found)) + "): ensemble runs trained on the same crops")
    return found.pop() if found else None


def eval_crop_recipe(metas, detector=None):
    """How eval photos are cut on the fly: as the models' training crops were (trained_crop_recipe; today's
    MTCNN's when not recorded: LEGACY_RECIPE), with --detector's detector when given."""
    recipe = trained_crop_recipe(metas) or LEGACY_RECIPE
    return replace(recipe, detector=detector) if detector else recipe


def run_tta(groups, models):
    """The views a run validated with (its config's tta), so that the decisions fitted on its validation
    predictions see at prediction time what they were fitted on; DEFAULT_TTA for checkpoints older
    than train.py's --tta."""
    return models[groups[0][0]][1].tta


def run_answer(groups, models):
    """What a run's models answer together: the 18 classes, or the mask state alone (a run trained on a mask set)."""
    tasks = {t for ck in groups[0] for t in models[ck][1].tasks} - {"years"}
    return MASK_ONLY if tasks == {"mask"} else FULL


def run_groups(groups, arrays, models, **opts):
    """Mean over groups of the 18-class distribution of each group (the 3 mask states' of a mask-only run). opts:
    predict_probs's (tta, batch_size, device, amp)."""
    acc = None
    for group in groups:
        probs = {}
        for ck in group:
            model, meta = models[ck]
            probs.update(predict_probs(model, meta, arrays[meta.input_key], **opts))
        p18 = combine_probs(probs)
        acc = p18 if acc is None else acc + p18
    return (acc / len(groups)).numpy()
