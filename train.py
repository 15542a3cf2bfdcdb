"""Train mask/gender/age classifiers: single split, stratified k-fold CV, multi-task; one loop for all.

    SM_CHANNEL_TRAIN=demo_data/train SM_MODEL_DIR=model python train.py            # holdout split
    python train.py --cv True                  # 5-fold CV by person, oof.csv + CV macro F1
    python train.py --cv True --fold 2 --run_dir model/cv1   # one fold (run folds in parallel)
    python train.py --merge model/cv1          # merge the folds' out-of-fold predictions
    python train.py --multi=True               # three models: mask, gender, age
    python train.py --heads                    # one backbone, three heads
    python train.py --resume model/exp3        # continue an interrupted run
    torchrun --standalone --nproc_per_node=2 train.py ...   # DistributedDataParallel

Env vars (also read from .env): SM_CHANNEL_TRAIN (training dir with train.csv and images/ or
faces/), SM_MODEL_DIR (where run folders go). Flags override them. Each run writes
<model_dir>/<name>[N]/ with config.json, best.pth, last.pth, metrics.json, valid_preds.csv and
TensorBoard logs in tb/ (CV: fold<i>/ each, plus oof.csv and cv.json; multi: mask/ gender/ age/).
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace

from masktk import distributed
from masktk.cli import cli, load_dotenv_once
from masktk.data.sources import load_data, resolve_data_dir
from masktk.data.splits import plan_units
from masktk.distributed import log_main
from masktk.errors import Log, UserError
from masktk.files import writable_dir, write_json_atomic
from masktk.labels import MULTI_TASKS
from masktk.models import choose_precision
from masktk.runs import check_same_people, create_run_dir, given_run_dir, interrupted_hint, removed_if_it_fails_empty
from masktk.train.oof import fit_run_decision, merge_cv, unit_preds
from masktk.train.settings import build_parser, check_same_run, run_config, settings
from masktk.train.trainer import run_units


@cli
def main(argv):
    load_dotenv_once()
    args = build_parser(__doc__).parse_args(argv)
    if args.merge:
        merge_cv(args.merge)
        return
    cfg = settings(args, argv, __doc__)
    if cfg.multi and cfg.heads:
        raise UserError("--multi (three models) and --heads (one model, three heads) exclude each other")
    if cfg.fold is not None and not cfg.cv:
        raise UserError("--fold needs --cv True")
    dist = distributed.setup(cfg.device, cfg.cudnn_benchmark)
    try:
        cfg = replace(resolve_data_dir(cfg), world_size=dist.world)  # resolved: from here on it stays as it is
        if cfg.cache_dir:  # the default, <model_dir>/.cache, is checked with --model_dir
            writable_dir(cfg.cache_dir, "--cache_dir")
        run_dir = given_run_dir(cfg)
        check_same_run(run_dir, cfg)
        log = Log(quiet=not dist.is_main)
        log_main(f"device {dist.device} x {dist.world} process(es), {choose_precision(dist.device, cfg.amp).name}"
                 f"{', channels_last' if cfg.channels_last else ''}")
        table, images = load_data(cfg, log, str(dist.device) if cfg.gpu_decode else "cpu")
        units = plan_units(cfg, table)
        named_here = run_dir is None
        run_dir = create_run_dir(run_dir, cfg, lambda d: run_config(cfg, d), dist)
        t0 = time.time()
        try:
            with removed_if_it_fails_empty(run_dir, named_here, dist):
                check_same_people(run_dir, table)
                results, trained = run_units(units, cfg, table, images, run_dir, dist)
        except KeyboardInterrupt:
            if dist.is_main:
                print(interrupted_hint(run_dir), file=sys.stderr)
            raise
        if not trained:  # its results stand as they were written
            log_main(f"nothing to train: {run_dir} is finished")
            return
        summary = {u or "run": {"best_f1": r["best_f1"], "best_epoch": r["best_epoch"]} for u, r in results.items()}
        if cfg.cv and dist.is_main:
            cv = merge_cv(run_dir, cfg.k_folds, quiet_missing=True)
            if cv:
                summary["cv"] = cv
        elif dist.is_main:
            summary["decided"] = fit_run_decision(run_dir, unit_preds(run_dir, [t for t in MULTI_TASKS] if cfg.multi
                                                                      else [""]), "the validation split (valid_preds.csv)")
        if dist.is_main:
            summary["wall_time_s"] = round(time.time() - t0, 1)
            write_json_atomic(run_dir / "summary.json", summary)
            log_main(f"done in {summary['wall_time_s']:.0f}s -> {run_dir}")
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    main()
