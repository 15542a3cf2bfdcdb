"""Run settings and flags: each default declared once, one meaning per flag with the old spellings as
aliases, help for every flag, config.json upgraded in one place, the newest run found."""
import argparse
import dataclasses
import json
import os
import re

import pytest

import evaluation
import inference
import predict
import train
from masktk.errors import UserError
from masktk.runs import chosen_run
from masktk.train.settings import (
    REFUSED,
    RunSettings,
    build_parser,
    from_values,
    read_run_config,
    settings_fields,
    upgrade_config,
)

SM = ("SM_CHANNEL_TRAIN", "SM_CHANNEL_EVAL", "SM_CHANNEL_MODEL", "SM_MODEL_DIR", "SM_OUTPUT_DATA_DIR",
      "SM_GROUND_TRUTH_DIR")


@pytest.fixture(autouse=True)
def no_sm_env(monkeypatch):
    for k in SM:
        monkeypatch.delenv(k, raising=False)


def test_the_parser_defaults_are_the_dataclass_defaults():
    parsed = from_values(vars(build_parser(train.__doc__).parse_args([])))
    assert parsed == RunSettings()
    dests = {a.dest for a in build_parser("").__dict__["_actions"] if a.option_strings and a.help != argparse.SUPPRESS}
    assert {f.name for f in settings_fields()} <= dests


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunSettings().lr = 1.0


def test_an_env_variable_sets_the_default_and_a_flag_wins(monkeypatch):
    monkeypatch.setenv("SM_CHANNEL_TRAIN", "/data/train")
    assert build_parser("").parse_args([]).train_dir == "/data/train"
    assert build_parser("").parse_args(["--train_dir", "x"]).train_dir == "x"


@pytest.mark.parametrize("parser, old, new", [
    (lambda: build_parser(""), ["--data_dir", "d"], ["--train_dir", "d"]),
    (lambda: build_parser(""), ["--resize", "64", "48"], ["--img_size", "64", "48"]),
    (lambda: build_parser(""), ["--criterion", "focal"], ["--loss", "focal"]),
    (inference.build_parser, ["--data_dir", "e"], ["--eval_dir", "e"]),
    (inference.build_parser, ["--ensemble_model_dir", "a", "b"], ["--ensemble_runs", "a", "b"]),
    (evaluation.build_parser, ["--gt_dir", "e"], ["--eval_dir", "e"]),
    (evaluation.build_parser, ["--pred_dir", "p"], ["--output_dir", "p"]),
    (predict.build_parser, ["x.jpg", "--out", "p"], ["x.jpg", "--output_dir", "p"]),
])
def test_an_old_spelling_is_an_alias_of_todays_flag(parser, old, new):
    assert vars(parser().parse_args(old)) == vars(parser().parse_args(new))


@pytest.mark.parametrize("parser", [lambda: build_parser(train.__doc__), inference.build_parser,
                                    predict.build_parser, evaluation.build_parser])
def test_every_flag_has_help_and_its_default_once(parser):
    ap = parser()
    shown = [a for a in ap._actions if a.help != argparse.SUPPRESS and a.dest != "help"]
    assert all(a.help for a in shown), [a.dest for a in shown if not a.help]
    text = ap.format_help()
    assert not re.search(r"\d\.\d+x|img/s|H100|H200|A100|20\d\d-\d\d", text), "figures belong in docs/"
    for a in shown:
        h = ap.formatter_class("x")._get_help_string(a)
        said = h.replace("%(default)s", "")
        assert len(re.findall(r"\bdefault\b|\bunset\b", said)) <= 1, h


def test_refused_original_flags_are_hidden_from_help_but_still_explained():
    ap = build_parser("")
    text = ap.format_help()
    for flag in REFUSED:
        assert flag not in text
    with pytest.raises(UserError, match="--lr_decay_step .*not supported: the schedule is --scheduler"):
        ap.parse_args(["--lr_decay_step", "3"])


def test_an_older_config_json_is_upgraded_in_one_place(tmp_path):
    old = {"data_dir": "/d/train", "lr": 0.01, "img_size": [64, 48], "merge": None, "resume": None}
    up = upgrade_config(old)
    assert up["train_dir"] == "/d/train" and up["tta"] == "none" and "data_dir" not in up
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = read_run_config(tmp_path)
    assert cfg.train_dir == "/d/train" and cfg.tta == "none" and cfg.img_size == (64, 48) and cfg.lr == 0.01
    assert cfg.age_sigma == 0.0 and RunSettings().age_sigma > 0  # trained with hard bands, whatever today's default
    assert cfg.epochs == RunSettings().epochs  # a setting the file lacks: today's default
    assert upgrade_config({"tta": "flip"})["tta"] == "flip"


def _run(path, started):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    os.utime(path / "config.json", (started, started))
    return path


def test_prediction_uses_the_newest_run_and_says_which(tmp_path, capsys):
    _run(tmp_path / "exp", 1_000_000)
    newest = _run(tmp_path / "exp2", 3_000_000)
    _run(tmp_path / "exp10", 2_000_000)
    (tmp_path / ".cache").mkdir()
    assert chosen_run(tmp_path) == newest
    assert f"using the newest run in {tmp_path}: {newest}" in capsys.readouterr().err
    assert chosen_run(tmp_path / "exp") == tmp_path / "exp"  # a run folder given as --model_dir: that run
    assert chosen_run(tmp_path, tmp_path / "exp10") == tmp_path / "exp10"
    with pytest.raises(UserError, match="no run in it"):
        chosen_run(tmp_path / ".cache")


def _float_flags(parser):
    """(flag, nargs) of every option whose type turns '0.5' into a float."""
    flags = []
    for a in parser._actions:
        if a.option_strings and callable(a.type) and a.help != argparse.SUPPRESS:
            try:
                is_float = isinstance(a.type("0.5"), float)
            except (argparse.ArgumentTypeError, ValueError, TypeError):
                is_float = False
            if is_float:
                flags.append((a.option_strings[0], a.nargs))
    return flags


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
@pytest.mark.parametrize("make", [lambda: build_parser(train.__doc__), inference.build_parser, predict.build_parser,
                                  evaluation.build_parser], ids=["train", "inference", "predict", "evaluation"])
def test_every_float_flag_refuses_nan_and_inf_at_parse_time(make, value):
    """nan passed every range check (--max_bad nan trained on broken images), inf every lower bound."""
    parser = make()
    flags = _float_flags(parser)
    assert flags or make is evaluation.build_parser
    for flag, nargs in flags:
        pre = ["x.jpg"] if make is predict.build_parser else []
        given = [f"{flag}={value}"] if nargs is None else [flag, *[value] * (nargs if isinstance(nargs, int) else 1)]
        if value.startswith("-") and nargs is not None:
            continue  # argparse reads a lone -inf as a flag
        with pytest.raises(UserError, match=f"argument {flag}.*finite"):  # one error line, exit 2
            parser.parse_args([*pre, *given])
