"""A run's settings: every train.py flag declared once (default, type, help) on the frozen RunSettings,
the parser built from those declarations, config.json written from it and read back (older files
upgraded in one place) on --resume.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from masktk.cli import Rising, demo_note, env_default, fraction, make_parser, positive, refuse, str2bool
from masktk.data.augment import AUG_PRESETS
from masktk.errors import UserError
from masktk.labels import OFFICIAL_AGE_BOUNDS
from masktk.models import INPUT_SIDE
from masktk.runs import has_progress
from masktk.train.losses import LOSSES
from masktk.train.optimizers import OPTIMIZERS, SCHEDULERS
from masktk.tta import DEFAULT_TTA, TTA_VIEWS

DEMO_TRAIN = "demo_data/train"


# the original scripts' names for what these flags take
LOSS_ALIASES = {"symmetric": "symmetric_ce"}  # the other original names are ours too


AUGMENT_ALIASES = {"baseaugmentation": "none", "customaugmentation": "basic"}


POS, COUNT, AT_LEAST_0 = positive(float), positive(int, 1, inclusive=True), positive(float, 0, inclusive=True)


INT_0, SIZE = positive(int, 0, inclusive=True), INPUT_SIDE


def loss_name(v):
    return LOSS_ALIASES.get(v.lower(), v.lower())


def augment_name(v):
    return AUGMENT_ALIASES.get(v.lower(), v.lower())


def multi_mode(v):
    """--multi True|False, or the original's 0|1|2 (2: three models with CV)."""
    return "cv" if str(v).strip() == "2" else str2bool(v)


def opt(default, group, help, *aliases, env=None, **argparse_kw):
    """A setting with its flag: its default (declared here only), its group in --help, its help, the
    original spellings it also answers to, the SM_* variable that overrides the default."""
    return field(default=default, metadata=dict(group=group, help=help, aliases=aliases, env=env, kw=argparse_kw))


def flag(default, group, help, *aliases):
    """A boolean setting: `--name`, `--name True|False`, `--name=False`."""
    return opt(default, group, help, *aliases, type=str2bool, nargs="?", const=True)


@dataclass(frozen=True)
class RunSettings:
    """What a run is (and, for MACHINE_SETTINGS, how this machine runs it). Frozen: resolved once in
    train.py's main, then passed around; config.json is asdict() of it."""
    train_dir: str = opt(DEMO_TRAIN, "data", "training dir holding train.csv (its images/ or faces/ folder also "
                         "works)", "--data_dir", env="SM_CHANNEL_TRAIN")
    model_dir: str = opt("model", "data", "folder of runs: each run is a new folder in it", env="SM_MODEL_DIR")
    name: str = opt("exp", "data", "run folder name, numbered when taken: exp, exp2, ...")
    run_dir: str | None = opt(None, "data", "this exact run folder instead (fold jobs of one run share it)")
    source: str = opt("auto", "data", "faces/ (face_image.py crops) or images/ (centre region); auto: faces/ when "
                      "present", choices=("auto", "images", "faces"))
    img_size: tuple = opt((224, 224), "data", "model input height and width", "--resize", type=SIZE, nargs=2,
                          metavar=("H", "W"))
    age_bounds: tuple = opt(OFFICIAL_AGE_BOUNDS, "data", "first ages of the middle and old class for training labels; "
                            "validation always uses the official 30 60", type=COUNT, nargs=2, action=Rising,
                            metavar=("LOW", "HIGH"))
    boundary_years: int = opt(0, "data", "photos of people this many years or less below an age bound (29 for "
                              "30 at 1) teach their mask state only, not gender and age (0: off)", type=INT_0)
    extra_data: tuple = opt((), "data", "other training dirs (competition layout, or mask-only folders): on the "
                            "training side of every split, never validated on", nargs="*")
    extra_min_face: int = opt(32, "data", "mask sets with boxes (--train_dir or --extra_data): smallest face used "
                              "(shorter side, px)", type=COUNT)
    mask_boxes: str = opt("annotated", "data", "mask sets with boxes: crops around the annotated boxes, or around the "
                          "default detector's boxes that overlap them (as prediction cuts faces)",
                          choices=("annotated", "detected"))
    mask_only_weight: float = opt(1.0, "data", "loss weight of photos labelled with mask status only",
                                  type=AT_LEAST_0)
    pseudo: str | None = opt(None, "data", "pseudo-labels: inference.py's <name>_probs.npy for the eval set in "
                             "--pseudo_data; confident photos are added to training", metavar="PROBS_NPY")
    pseudo_data: str = opt("demo_data/eval", "data", "the eval dir those probabilities are for",
                           env="SM_CHANNEL_EVAL")
    pseudo_threshold: float = opt(0.9, "data", "smallest top probability for a pseudo-label", type=fraction)
    fixes: str | None = opt(None, "data", "label fixes CSV (unset: the toolkit's masktk/data/label_fixes.csv)")
    max_bad: float = opt(0.01, "data", "fail when more than this share of images cannot be read", type=fraction)
    cache_dir: str | None = opt(None, "data", "decoded-image cache (unset: <model_dir>/.cache)")

    cv: bool = flag(False, "mode", "stratified k-fold CV by person")
    k_folds: int = opt(5, "mode", "number of CV folds", type=positive(int, 2, inclusive=True, maximum=100))
    fold: int | None = opt(None, "mode", "train only this fold (0-based; fold jobs in parallel)", type=INT_0)
    val_ratio: float = opt(0.2, "mode", "share of people validated on in a holdout run", type=POS)
    multi: bool = opt(False, "mode", "three separate models: mask, gender, age (the original's --multi 2: with CV)",
                      type=multi_mode, nargs="?", const=True)
    heads: bool = flag(False, "mode", "one backbone with mask, gender and age heads")
    head_weights: tuple = opt((1.0, 1.0, 1.0), "mode", "loss weights of the three heads", type=AT_LEAST_0, nargs=3,
                              metavar=("MASK", "GENDER", "AGE"))
    years_weight: float = opt(0.0, "mode", "weight of an auxiliary head over each year of age, a training aid for "
                              "the shared features (0: off)", type=AT_LEAST_0)
    years_sigma: float = opt(3.0, "mode", "the years head's targets: the true age spread by a Gaussian of this "
                             "many years", type=POS)
    tta: str = opt(DEFAULT_TTA, "mode", "views averaged when validating, so the epoch choice and fitted decisions "
                   "see what prediction sees", choices=sorted(TTA_VIEWS))
    age_sigma: float = opt(3.0, "mode", "soft age bands: targets spread each age by a Gaussian of this many years "
                           "before cutting it into bands (0: hard bands)", type=AT_LEAST_0)
    resume: str | None = opt(None, "mode", "continue the interrupted run in this folder", metavar="RUN_DIR")

    model: str = opt("efficientnet_lite1", "model and recipe", "any timm model name (efficientnet_lite0/1/2 load "
                     "their ImageNet weights offline)", "--model_name")
    pretrained: bool = flag(True, "model and recipe", "start from ImageNet weights")
    pretrained_path: str | None = opt(None, "model and recipe", "local ImageNet state dict")
    epochs: int = opt(10, "model and recipe", "training epochs", type=COUNT)
    batch_size: int = opt(16, "model and recipe", "training batch per process", type=COUNT)
    valid_batch_size: int = opt(128, "model and recipe", "validation batch", type=COUNT)
    optimizer: str = opt("adamw", "model and recipe", "optimizer", type=str.lower, choices=sorted(OPTIMIZERS))
    lr: float = opt(2e-3, "model and recipe", "peak learning rate", type=POS)
    weight_decay: float = opt(1e-2, "model and recipe", "weight decay", type=AT_LEAST_0)
    layer_decay: float = opt(0.0, "model and recipe", "layer-wise lr decay: each block's lr this fraction of the "
                             "next one's (0: one lr)", type=fraction)
    scheduler: str = opt("onecycle", "model and recipe", "learning-rate schedule", type=str.lower, choices=SCHEDULERS)
    warmup_epochs: float = opt(1.0, "model and recipe", "epochs of linear warm-up", type=AT_LEAST_0)
    loss: str = opt("label_smoothing", "model and recipe", "loss", "--criterion", type=loss_name,
                    choices=sorted(LOSSES))
    smoothing: float | None = opt(None, "model and recipe", "label smoothing (unset: the loss's own)", type=fraction)
    augment: str = opt("basic", "model and recipe", "augmentation preset (the original's BaseAugmentation is none, "
                       "CustomAugmentation basic)", "--augmentation", type=augment_name, choices=sorted(AUG_PRESETS))
    cutmix: float = opt(0.0, "model and recipe", "probability of CutMix per batch", type=fraction)
    mixup: float = opt(0.0, "model and recipe", "probability of MixUp per batch", type=fraction)
    sampler: str = opt("uniform", "model and recipe", "weighted: draw classes evenly", choices=("uniform", "weighted"))
    drop_rate: float = opt(0.2, "model and recipe", "dropout before the classifier", type=fraction)
    drop_path: float = opt(0.0, "model and recipe", "stochastic depth rate (timm drop_path_rate)", type=fraction)
    clip_grad: float = opt(0.0, "model and recipe", "max gradient norm (0: off)", type=AT_LEAST_0)
    ema: float = opt(0.0, "model and recipe", "EMA decay of weights, e.g. 0.99 (0: off); warmed up", type=fraction)
    patience: int = opt(0, "model and recipe", "stop after N epochs without a better F1 (0: off)", type=INT_0)
    seed: int = opt(42, "model and recipe", "seed of splits, initialisation and augmentation", type=int)

    device: str = opt("auto", "hardware", "where to train", choices=("auto", "cpu", "cuda"))
    amp: bool = flag(True, "hardware", "mixed precision on CUDA (bf16 where supported, else fp16); no-op on CPU")
    channels_last: bool = flag(True, "hardware", "channels_last memory format (faster on CUDA and on CPU)")
    compile: bool = flag(False, "hardware", "torch.compile on CUDA; no-op on CPU")
    workers: int | None = opt(None, "hardware", "loader workers (unset: 0 on CPU, 4 on CUDA)", type=INT_0)
    cudnn_benchmark: bool = flag(True, "hardware", "on CUDA, let cuDNN time its kernels once per input shape")
    gpu_data: bool = flag(True, "hardware", "on CUDA, hold the decoded images on the GPU when they take under a "
                          "quarter of its free memory")
    gpu_decode: bool = flag(False, "hardware", "on CUDA, decode JPEGs for the image cache on the GPU (nvImageCodec "
                            "where installed, else nvJPEG); no-op on CPU")
    progress: bool = flag(True, "hardware", "progress bars")
    world_size: int = field(default=1, metadata=dict(internal=True))  # processes, set by train.py from torchrun


# settings that say how this machine runs a run, not what the run is: free to change on --resume
MACHINE_SETTINGS = ("resume", "progress", "device", "workers", "gpu_decode", "gpu_data", "cudnn_benchmark")


# original flags this toolkit does not take, and what to use instead
REFUSED = {
    "--lr_decay_step": "the schedule is --scheduler onecycle|cosine|step|cyclic|constant (step decays every epochs/3)",
    "--log_interval": "every epoch prints one line, and --progress shows running loss and F1",
    "--features": "use --multi True for one model per task (mask, gender, age)",
}


# what a config.json written before a setting existed meant by its absence, where that is not today's default
OLD_MEANINGS = {"tta": "none", "age_sigma": 0.0}


RENAMED = {"data_dir": "train_dir"}  # config.json keys of older runs -> today's


def settings_fields():
    return [f for f in fields(RunSettings) if not f.metadata.get("internal")]


def build_parser(doc):
    ap = make_parser(doc)
    groups = {}
    for f in settings_fields():
        m = f.metadata
        g = groups.get(m["group"]) or groups.setdefault(m["group"], ap.add_argument_group(m["group"]))
        default = env_default(m["env"], f.default) if m["env"] else f.default
        help = m["help"] + (f" (env {m['env']})" if m["env"] else "")
        g.add_argument(f"--{f.name}", *m["aliases"], dest=f.name, default=_listed(default), help=help, **m["kw"])
    ap.add_argument("--merge", default=None, metavar="RUN_DIR", help="merge the folds of a CV run and exit")
    for name, instead in REFUSED.items():
        refuse(ap, name, instead)
    return ap


def _listed(v):
    """argparse gives nargs values as lists: the defaults too, so a value compares the same either way."""
    return list(v) if isinstance(v, tuple) else v


def from_values(values):
    """A RunSettings from a dict of setting names (a parsed command line, a config.json): lists become
    tuples (frozen), names that are not settings are left out."""
    names = {f.name for f in fields(RunSettings)}
    return RunSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names})


def upgrade_config(saved):
    """A config.json of any version -> today's keys: renamed keys under their new name, and settings the
    run predates given the meaning their absence had then (OLD_MEANINGS) or today's default."""
    saved = {RENAMED.get(k, k): v for k, v in saved.items()}
    return {**{k: v for k, v in OLD_MEANINGS.items() if k not in saved}, **saved}


def run_config(cfg, run_dir):
    """What config.json records: every setting but --resume, with the run folder actually used."""
    return {k: v for k, v in asdict(replace(cfg, run_dir=str(run_dir))).items() if k != "resume"}


def read_run_config(run_dir):
    """A run's config.json, upgraded and checked (check_config), as RunSettings."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{path} not found: give a run folder written by train.py")
    try:
        saved = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not JSON ({type(e).__name__}); it was not written by train.py or was damaged")
    return check_config(saved, path)


def check_config(saved, path):
    """A config.json's values through the very parser rules of the flags that wrote them (types, ranges,
    choices, finiteness) -> RunSettings, or one UserError naming the file and the setting."""
    if not isinstance(saved, dict):
        raise UserError(f"{path}: not a run's settings (a JSON object expected)")
    values, argv = upgrade_config(saved), []
    for f in settings_fields():
        v = values.get(f.name)
        if isinstance(v, list):
            argv += [f"--{f.name}", *map(str, v)]
        elif v is not None:
            argv.append(f"--{f.name}={v}")
    try:
        parsed = vars(build_parser("").parse_args(argv))
    except UserError as e:
        raise UserError(f"{path}: {str(e).split(' (see ')[0]}; it was not written by train.py or was edited: fix "
                        "that setting or train the run again") from None
    internal = {f.name: values[f.name] for f in fields(RunSettings) if f.metadata.get("internal") and f.name in values}
    return from_values({k: v for k, v in parsed.items() if k in values} | internal)


def given_flags(argv, doc=""):
    """The settings this command line names explicitly (aliases included)."""
    ap = build_parser(doc)
    for action in ap._actions:
        action.default = argparse.SUPPRESS
    return vars(ap.parse_args(argv))


# what may differ between the jobs that share one run folder (fold jobs), besides the machine settings
PER_JOB = ("fold", "run_dir", "world_size")


def _differing(saved, now, names):
    """The settings among `names` (machine settings aside) whose saved value is not today's."""
    return [k for k in names if k not in MACHINE_SETTINGS and k in saved and saved[k] != now[k]]


def check_same_run(run_dir, cfg):
    """A --run_dir reused without --resume holds a run of the same settings (fold jobs, a finished run
    asked again), or it is an error naming what differs: the folder would mix two runs."""
    if run_dir is None or cfg.resume or not (Path(run_dir) / "config.json").is_file():
        return
    saved, now = asdict(read_run_config(run_dir)), asdict(cfg)
    changed = _differing(saved, now, [k for k in now if k not in PER_JOB])
    if changed:
        diff = ", ".join(f"--{k} {saved[k]} there, {now[k]} here" for k in changed[:4])
        raise UserError(f"{run_dir} holds a run with other settings ({diff}{', ...' if len(changed) > 4 else ''}): "
                        "choose another --run_dir for a new run, or --resume it with its own settings")


def settings(args, argv, doc=""):
    """The run's settings: this command line's, or with --resume the run's own config.json (upgraded)
    with this command line's machine settings."""
    values = vars(args)
    if values["multi"] == "cv":  # the original's --multi 2
        values = {**values, "multi": True, "cv": True}
    cfg = from_values(values)
    if not cfg.resume:
        demo_note(cfg.train_dir, DEMO_TRAIN, "SM_CHANNEL_TRAIN", ("--train_dir", "--data_dir"), argv)
        return cfg
    if not (Path(cfg.resume) / "config.json").is_file():
        raise UserError(f"{Path(cfg.resume) / 'config.json'} not found: --resume takes a run folder written by train.py")
    saved = asdict(read_run_config(cfg.resume))
    now = asdict(cfg)
    changed = sorted(_differing(saved, now, given_flags(argv, doc)))
    if changed:
        raise UserError(f"--resume continues {cfg.resume} with its own settings, and "
                        f"{', '.join('--' + k for k in changed)} differ from its config.json: start a new run for "
                        "other settings")
    if not has_progress(cfg.resume):
        raise UserError(f"{cfg.resume}: nothing to resume (no last.pth: the run stopped before its first epoch "
                        "ended); start it again without --resume")
    return replace(from_values(saved), **{k: now[k] for k in MACHINE_SETTINGS})
