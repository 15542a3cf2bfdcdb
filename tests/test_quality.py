"""The quality levers: the age-in-years head (targets, loss, fusion) and macro-F1 decision offsets."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run

from masktk.labels import AGE_MIN, YEARS, age_class, band_spread, decode, encode, joint_targets
from masktk.predict.submission import ensemble_offsets
from masktk.probs import combine_probs, joint_marginal, soft_age_marginal
from masktk.train.decisions import cross_fitted, decide, fit_decision, fit_offsets, macro_f1, read_offsets
from masktk.train.engine import make_marginal
from masktk.train.losses import years_loss
from masktk.train.settings import RunSettings


def test_joint_target_carries_class_and_year_and_mixes_linearly():
    j = torch.nn.functional.one_hot(torch.as_tensor(joint_targets([7, 16], [45, 70])), 18 * YEARS).float()
    assert joint_marginal(j, "label").argmax(1).tolist() == [7, 16]
    assert joint_marginal(j, "years").argmax(1).tolist() == [45 - 18, 60 - 18]  # 70 counts as 60
    assert joint_marginal(j, "mask").argmax(1).tolist() == [int(decode(7)[0]), int(decode(16)[0])]
    mixed = 0.3 * j[:1] + 0.7 * j[1:]  # what CutMix/MixUp hand the loss
    assert torch.allclose(joint_marginal(mixed, "label")[0, [7, 16]], torch.tensor([0.3, 0.7]))
    assert torch.allclose(joint_marginal(mixed, "years")[0, [27, 42]], torch.tensor([0.3, 0.7]))


def _one_hot_joint(labels, years):
    return torch.nn.functional.one_hot(torch.as_tensor(joint_targets(labels, years)), 18 * YEARS).float()


def test_soft_age_bands_split_only_ages_near_an_edge():
    spread = band_spread(3.0)
    assert np.allclose(spread.sum(1), 1)
    at = {y: spread[y - AGE_MIN] for y in (18, 29, 30, 45, 59, 60)}
    assert at[18][0] > 0.99 and at[45][1] > 0.99  # far from an edge: one band
    assert 0.5 < at[29][0] < 0.6 and 0.5 < at[30][1] < 0.6  # either side of 30: nearly even
    assert 0.3 < at[59][2] < 0.5 and at[60][2] == 1  # 60 stands for "60 and over": its band whole
    # the 18-class and age targets of a 29-year-old wearing a mask: the mask and gender stay hard
    target = soft_age_marginal(spread)(_one_hot_joint([encode(0, 1, 0)], [29]), "label")[0]
    assert target[encode(0, 1, 0)] == pytest.approx(at[29][0]) and target[encode(0, 1, 1)] == pytest.approx(at[29][1])
    assert target.sum() == pytest.approx(1) and float(target[[encode(0, 1, 0), encode(0, 1, 1)]].sum()) == pytest.approx(1)


@pytest.mark.parametrize("bounds", [(30, 60), (30, 58)])
def test_hard_age_bands_are_todays_targets(bounds):
    rng = np.random.default_rng(0)
    years = rng.integers(18, 61, 300)
    labels = encode(rng.integers(0, 3, 300), rng.integers(0, 2, 300), age_class(years, bounds))
    joint = _one_hot_joint(labels, years)
    hard = soft_age_marginal(band_spread(0, bounds))
    for task in ("label", "mask", "gender", "age", "years"):
        assert torch.equal(hard(joint, task), joint_marginal(joint, task)), task
    assert make_marginal(RunSettings(age_sigma=0.0)) is joint_marginal
    soft = make_marginal(RunSettings(age_sigma=3.0, age_bounds=tuple(bounds)))
    assert not torch.equal(soft(joint, "age"), joint_marginal(joint, "age"))


def test_years_loss_treats_near_ages_as_near_misses():
    loss = years_loss(3.0)
    target = torch.nn.functional.one_hot(torch.tensor([20]), YEARS).float()  # 38 years old
    logits = torch.full((3, YEARS), -5.0)
    for row, idx in enumerate((20, 22, 40)):  # predicts 38, 40, 58
        logits[row, idx] = 5.0
    losses = [float(loss(logits[i:i + 1], target)) for i in range(3)]
    assert losses[0] < losses[1] < losses[2]


def test_the_years_head_takes_no_part_in_the_decision():
    p18 = torch.softmax(torch.randn(4, 18), 1)
    years = torch.softmax(torch.randn(4, YEARS), 1)
    assert torch.equal(combine_probs({"label": p18, "years": years}), p18)


def _skewed(n=3000, seed=0):
    """Predictions whose argmax under-calls the rare classes: what a model trained on a skewed
    prior gives macro F1."""
    rng = np.random.default_rng(seed)
    prior = np.r_[np.full(12, 8.0), np.full(6, 1.0)]
    y = rng.choice(18, n, p=prior / prior.sum())
    logits = rng.normal(0, 1.0, (n, 18)) + np.log(prior)  # the prior pulls the argmax to common classes
    logits[np.arange(n), y] += 2.0
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True), y, np.arange(n) // 7  # 7 photos a person


def test_offsets_raise_macro_f1_on_people_they_were_not_fitted_on():
    p, y, people = _skewed()
    plain = macro_f1(y, decide(p))
    held = macro_f1(y, cross_fitted(p, y, people))
    assert held > plain + 0.03, (plain, held)
    off = fit_offsets(p, y)
    assert off[12:].mean() > off[:12].mean()  # the rare classes are lifted
    record, held_pred = fit_decision(p, y, people, "test")
    assert record["used"] and record["f1_cross_fitted"] == pytest.approx(held)
    assert macro_f1(y, held_pred) == pytest.approx(held)
    assert macro_f1(y, decide(p)) == pytest.approx(macro_f1(y, p.argmax(1)))
    # matches sklearn's macro F1 over all 18 labels
    from masktk.metrics.classification import macro_f1 as sk_macro_f1
    assert macro_f1(y, decide(p, off)) == pytest.approx(sk_macro_f1(y, decide(p, off)))


def test_offsets_that_do_not_pay_are_not_kept():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(18), 20)
    p = np.full((len(y), 18), 0.01)
    p[np.arange(len(y)), y] = 0.9  # already perfect: nothing to gain
    record, pred = fit_decision(p / p.sum(1, keepdims=True), y, rng.permutation(len(y)) // 7, "test")
    assert not record["used"] and not any(record["offsets"]) and (pred == y).all()


def _infer(tiny_root, out, *args):
    return run("inference.py", "--data_dir", tiny_root / "eval", "--output_dir", out, *args)


@pytest.mark.e2e
def test_inference_applies_the_runs_offsets_and_none_is_plain_argmax(tiny_root, tiny_runs, tmp_path):
    rd = tmp_path / "run"
    shutil.copytree(tiny_runs["single"], rd)
    _infer(tiny_root, tmp_path, "--model_dir", rd, "--output_name", "none", "--decision", "none")
    probs = np.load(tmp_path / "none_probs.npy")
    assert (pd.read_csv(tmp_path / "none.csv")["ans"] == probs.argmax(1)).all()
    (rd / "decision.json").unlink()  # a run trained before offsets existed: argmax, as before
    _infer(tiny_root, tmp_path, "--model_dir", rd, "--output_name", "old")
    assert (pd.read_csv(tmp_path / "old.csv")["ans"] == probs.argmax(1)).all()
    off = np.zeros(18)
    off[5] = 50.0  # an offset that must win everywhere shows that the file is read and applied
    (rd / "decision.json").write_text(json.dumps({"offsets": off.tolist()}))
    p = _infer(tiny_root, tmp_path, "--model_dir", rd, "--output_name", "fitted")
    assert (pd.read_csv(tmp_path / "fitted.csv")["ans"] == 5).all() and "decision fitted" in p.stderr
    assert np.array_equal(np.load(tmp_path / "fitted_probs.npy"), probs)  # probabilities stay raw for ensembling


@pytest.mark.e2e
def test_an_ensemble_of_cv_runs_fits_on_their_combined_oof(tiny_runs):
    own = read_offsets(tiny_runs["cv"])
    off, how = ensemble_offsets([tiny_runs["cv"], tiny_runs["cv"]], [1, 1], [own, own])
    rec = json.loads((tiny_runs["cv"] / "decision.json").read_text())
    if rec["used"]:  # the same run twice: the same OOF, so the same offsets
        assert np.allclose(off, own) and "combined OOF" in how
    else:
        assert off is None and "argmax" in how
    off, how = ensemble_offsets([tiny_runs["cv"], tiny_runs["single"]], [1, 1], [own, read_offsets(tiny_runs["single"])])
    assert off is None and "CV run" in how



def test_a_broken_decision_file_is_named(tmp_path):
    from masktk.errors import UserError
    assert read_offsets(tmp_path) is None  # no file: plain argmax
    for text in ("{not json", json.dumps({"offsets": [1.0, 2.0]})):
        (tmp_path / "decision.json").write_text(text)
        with pytest.raises(UserError, match="decision.json"):
            read_offsets(tmp_path)


def test_cv_scores_detected_faces_and_fallbacks_apart(tmp_path):
    """#13: what a detector's misses cost. Found photos predicted right, fallbacks wrong -> 1.0 and 0.0."""
    from masktk.train.oof import prob_columns, score_by_detection
    (tmp_path / "faces").mkdir()
    paths = [f"p{i}/mask1.jpg" for i in range(6)]
    pd.DataFrame({"path": paths, "detected": [1, 1, 1, 1, 0, 0]}).to_csv(tmp_path / "faces" / "boxes.csv", index=False)
    labels = np.array([0, 4, 8, 13, 0, 17])
    pred = labels.copy()
    pred[4:] = [1, 16]  # the two fallbacks are wrong
    probs = np.eye(18)[pred]
    oof = pd.concat([pd.DataFrame({"path": [f"faces/{p}" for p in paths], "label": labels}),
                     pd.DataFrame(probs, columns=prob_columns("label"))], axis=1)
    r = score_by_detection(tmp_path, oof)
    assert (r["found"]["n"], r["fallback"]["n"]) == (4, 2)
    assert r["found"]["accuracy"] == 1.0 and r["fallback"]["accuracy"] == 0.0
    assert score_by_detection(tmp_path, oof.assign(path=[f"images/{p}" for p in paths])) is None  # whole photos
