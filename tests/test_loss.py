"""masktk/train/losses.py and loss.py: every loss against a hand computation."""
import pytest
import torch


def test_each_loss_against_a_hand_computation():
    from masktk.train.losses import create_loss
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    p = torch.softmax(logits, 1)
    ce = -(target * p.log()).sum(1).mean()
    assert create_loss("cross_entropy")(logits, target) == pytest.approx(float(ce), rel=1e-6)
    smooth = target * 0.9 + 0.1 / 3
    assert create_loss("label_smoothing")(logits, target) == pytest.approx(float(-(smooth * p.log()).sum(1).mean()), rel=1e-6)
    focal = -(target * (1 - p) ** 2 * p.log()).sum(1).mean()
    assert create_loss("focal")(logits, target) == pytest.approx(float(focal), rel=1e-6)
    tp = (p * target).sum(0)
    prec, rec = tp / (p.sum(0) + 1e-7), tp / (target.sum(0) + 1e-7)
    f1 = 1 - (2 * prec * rec / (prec + rec + 1e-7)).mean()
    assert create_loss("f1")(logits, target) == pytest.approx(float(f1), rel=1e-5)
    rce = -(p.clamp(min=1e-7) * target.clamp(min=1e-4).log()).sum(1).mean()
    assert create_loss("symmetric_ce")(logits, target) == pytest.approx(float(0.1 * ce + rce), rel=1e-5)
    counts = [6, 3, 2]  # inverse frequency, scaled to mean 1; probability targets: mean over the batch
    inv = torch.tensor([1 / 6, 1 / 3, 1 / 2])
    inv = inv / inv.mean()
    weighted = -(target * p.log() * inv).sum(1).mean()
    assert create_loss("weighted_ce", counts)(logits, target) == pytest.approx(float(weighted), rel=1e-5)


@pytest.mark.e2e
def test_loss_py_lists_every_loss_with_what_it_does():
    from conftest import run

    from masktk.train.losses import ABOUT, LOSSES
    assert set(ABOUT) == set(LOSSES)  # a loss added without its line would be missing from the list
    lines = run("loss.py").stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(ABOUT)
    assert all(ABOUT[line.split()[0]] in line for line in lines)
    assert [line.split()[0] for line in lines if line.endswith("(default)")] == ["label_smoothing"]
