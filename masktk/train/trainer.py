"""One training unit (a model of a run, a fold or a task) from start to its metrics.json: loaders, epochs,
checkpoints, resume, TensorBoard logs and validation predictions.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from masktk import distributed
from masktk.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from masktk.data.cache import ImageCache
from masktk.data.loaders import BatchDataset, make_loader
from masktk.data.sources import training_crop_recipe
from masktk.distributed import log_main
from masktk.errors import UserError
from masktk.files import write_csv_atomic, write_json_atomic
from masktk.labels import MULTI_TASKS, loss_targets, near_bound
from masktk.metrics.classification import confusion_figure
from masktk.probs import combine_probs
from masktk.runs import read_json_object
from masktk.train.engine import NullWriter, build_training, evaluate, train_one_epoch
from masktk.train.oof import prob_columns
from masktk.train.settings import run_config


def make_loaders(cfg, table, images, tr_rows, va_rows, dist):
    cache_rows = table["cache_row"].to_numpy()
    train_labels = table["label"].to_numpy()[tr_rows]
    # targets: the 18-class label (metrics, sampler) and the class x year index (the loss)
    # --boundary_years: ages just under a band edge are the noisiest age labels; they still teach the mask
    full = table["full"].to_numpy() & ~near_bound(table["age_years"], tuple(cfg.age_bounds), cfg.boundary_years)
    targets = loss_targets(table["label"], table["age_years"], full)
    ds_tr = BatchDataset(images, cache_rows[tr_rows], targets[tr_rows])
    ds_va = BatchDataset(images, cache_rows[va_rows], targets[va_rows])
    cuda = dist.device.type == "cuda"
    workers = cfg.workers if cfg.workers is not None else (4 if cuda else 0)
    weights = None
    if cfg.sampler == "weighted":
        weights = 1.0 / np.bincount(train_labels, minlength=18)[train_labels]
    gpu = dist.device if cfg.gpu_data else None
    loader_tr = make_loader(ds_tr, cfg.batch_size, True, cfg.seed, weights, workers, dist.rank, dist.world, cuda,
                            gpu)
    loader_va = make_loader(ds_va, cfg.valid_batch_size, False, cfg.seed, None, workers, dist.rank, dist.world,
                            cuda, gpu)
    return loader_tr, loader_va, train_labels


def resume_state(out, loop, unit, resume, run_dir):
    """-> (start epoch, best F1, bad epochs, history), from last.pth when rank 0 finds one and the run
    was asked to resume; a stale last.pth in a reused folder is refused, not silently continued."""
    if not distributed.broadcast_object((out / "last.pth").is_file()):
        return 0, -1.0, 0, []
    if not resume:
        raise UserError(f"{out} holds an unfinished run (last.pth): continue it with --resume {run_dir}, or choose "
                        "another --run_dir")
    ck = load_checkpoint(out / "last.pth")
    loop.raw_model.load_state_dict(ck["model"])
    loop.optimizer.load_state_dict(ck["optimizer"])
    loop.schedule.load_state_dict(ck["schedule"])
    loop.scaler.load_state_dict(ck["scaler"])
    loop.ema.load_state_dict(ck["ema"])
    log_main(f"[{unit.name}] resuming after epoch {ck['epoch'] + 1} (best F1 {ck['best_f1']:.4f})")
    return ck["epoch"] + 1, ck["best_f1"], ck["bad_epochs"], ck["history"]


def run_fold(unit, cfg, table, images, run_dir, dist):
    """Trains one unit's model on its training people, validates on its validation people, in
    run_dir/unit.subdir; -> best metrics. Every mode calls this."""
    tasks, train_people, valid_people, out = tuple(unit.tasks), unit.train, unit.valid, Path(run_dir) / unit.subdir
    # a gender or age model learns nothing from photos labelled with mask status only
    learns_mask = bool({"mask", "label"} & set(tasks))
    tr_rows = np.flatnonzero(table["people_path"].isin(set(train_people)) & (table["full"] | learns_mask))
    va_rows = np.flatnonzero(table["people_path"].isin(set(valid_people)))
    if len(tr_rows) == 0 or len(va_rows) == 0:
        raise UserError("a split has no images; use more people or a smaller --k_folds / --val_ratio")
    loader_tr, loader_va, train_labels = make_loaders(cfg, table, images, tr_rows, va_rows, dist)
    model, raw_model, loop = build_training(cfg, tasks, train_labels, len(loader_tr), dist, out,
                                            table["label_official"].to_numpy()[va_rows])
    meta = CheckpointMeta(arch=cfg.model, tasks=tasks, img_size=cfg.img_size, mean=loop.mean, std=loop.std,
                          crop=table["crop"].iloc[va_rows[0]], age_bounds=cfg.age_bounds, config=run_config(cfg, run_dir),
                          valid_people=len(valid_people), train_people=len(train_people),
                          face_crop=training_crop_recipe(cfg))
    writer = NullWriter()
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tb"))
    start, best, bad_epochs, history = resume_state(out, loop, unit, bool(cfg.resume), run_dir)
    for epoch in range(start, cfg.epochs):
        t0 = time.time()
        tr = train_one_epoch(model, loader_tr, loop, epoch)
        va = evaluate(loop.ema.module, loader_va, loop)
        probs = va.pop("probs")
        improved = va["f1"] > best
        bad_epochs = 0 if improved else bad_epochs + 1
        best = max(best, va["f1"])
        rec = {"epoch": epoch + 1, "time": round(time.time() - t0, 2),
               **{f"train_{k}": v for k, v in tr.items()}, **{f"valid_{k}": v for k, v in va.items()},
               "best": improved}
        history.append(rec)
        if dist.is_main:
            _log_epoch(writer, unit, cfg, rec, tr, va)
            m = replace(meta, epoch=epoch + 1, metrics=rec)
            if improved:
                save_checkpoint(out / "best.pth", loop.ema.module, m)
                _write_valid_preds(out / "valid_preds.csv", table.iloc[va_rows], probs, tasks)
                _log_figures(writer, epoch + 1, tasks, probs, loop.valid_labels, images,
                             table["cache_row"].to_numpy()[va_rows])
            # no RNG state: every epoch reseeds from (seed, epoch, rank), which is what makes a resume exact
            save_checkpoint(out / "last.pth", raw_model, m, optimizer=loop.optimizer, schedule=loop.schedule,
                            scaler=loop.scaler, ema=loop.ema, epoch=epoch, best_f1=best, bad_epochs=bad_epochs,
                            history=history)
        distributed.barrier()
        if cfg.patience and bad_epochs >= cfg.patience:
            log_main(f"[{unit.name}] early stop: no better F1 for {bad_epochs} epochs")
            break
    best_metrics = best_epoch_of(history)
    result = {"best_epoch": best_metrics["epoch"] if best_metrics else None, "best_f1": best,
              "best": best_metrics, "history": history, "tasks": list(tasks)}
    if dist.is_main:
        write_json_atomic(out / "metrics.json", result)  # its presence marks the unit as done
        writer.close()
    distributed.barrier()
    return result


def best_epoch_of(history):
    """The record of the best epoch: the last one that improved (a resumed run's history holds every
    improvement since epoch 1, and each later one beat the earlier)."""
    return next((h for h in reversed(history) if h.get("best")), None)


def _log_epoch(writer, unit, cfg, rec, tr, va):
    log_main(f"[{unit.name}] epoch {rec['epoch']}/{cfg.epochs} train loss {tr['loss']:.4f} "
             f"f1 {tr['f1']:.4f} | valid loss {va['loss']:.4f} f1 {va['f1']:.4f} acc {va['accuracy']:.4f}"
             + "".join(f" {t} {va[f'f1_{t}']:.3f}" for t in MULTI_TASKS if f"f1_{t}" in va)
             + f" | {rec['time']:.1f}s" + (" *" if rec["best"] else ""))
    for k, v in tr.items():
        writer.add_scalar(f"train/{k}", v, rec["epoch"])
    for k, v in va.items():
        writer.add_scalar(f"valid/{k}", v, rec["epoch"])


def _write_valid_preds(path, rows, probs, tasks):
    cols = {c: p[:, k].numpy() for t, p in probs.items() for k, c in enumerate(prob_columns(t))}
    df = pd.DataFrame({"path": rows["path"].to_numpy(), "people_path": rows["people_path"].to_numpy(),
                       "label": rows["label_official"].to_numpy(), **cols})
    write_csv_atomic(df, path, float_format="%.6f")


def _log_figures(writer, step, tasks, probs, labels, images, rows):
    if isinstance(writer, NullWriter) or not ("label" in tasks or set(tasks) == set(MULTI_TASKS)):
        return
    pred = combine_probs(probs).argmax(1).numpy()
    writer.add_figure("valid/confusion", confusion_figure(labels, pred, f"epoch {step}"), step)
    wrong = np.flatnonzero(pred != labels)[:16]
    if len(wrong):
        arr = images.array if isinstance(images, ImageCache) else images
        import torchvision
        grid = torchvision.utils.make_grid(torch.from_numpy(np.asarray(arr[np.sort(rows[wrong])])).permute(0, 3, 1, 2),
                                           nrow=8)
        writer.add_image("valid/misclassified", grid, step)


def run_units(units, cfg, table, images, run_dir, dist):
    """-> (results per unit, whether any unit trained)."""
    results, trained = {}, False
    for unit in units:
        out = run_dir / unit.subdir
        done = distributed.broadcast_object(read_json_object(out / "metrics.json", ("history",))
                                            if dist.is_main and (out / "metrics.json").is_file() else None)
        if done:  # decided by rank 0 for every rank
            log_main(f"[{unit.name}] already finished, skipped")
            results[unit.subdir] = done
            continue
        results[unit.subdir], trained = run_fold(unit, cfg, table, images, run_dir, dist), True
    return results, trained
