"""masktk/train/engine.py: the training loop's parts."""
import numpy as np
import pytest
import torch


def test_mixup_and_cutmix_targets_are_distributions_of_the_batch_labels():
    from masktk.train.engine import make_mixer
    from masktk.train.settings import RunSettings
    cfg = RunSettings(cutmix=1.0, mixup=0.0)
    x = torch.rand(8, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    torch.manual_seed(0)
    np.random.seed(0)  # timm draws lambda and the box with numpy
    xm, t = make_mixer(cfg)(x.clone(), y)
    assert torch.allclose(t.sum(1), torch.ones(8)) and (t.max(1).values < 1).any()  # mixed somewhere
    assert ((t > 0).sum(1) <= 2).all() and (t[:, 8:] == 0).all()  # only this batch's labels
    assert not torch.equal(xm, x)


def test_clip_grad_caps_the_global_norm_and_is_off_by_default():
    from masktk.train.engine import ClipGrad, no_clip
    model = torch.nn.Linear(4, 3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def norm_after(clip):
        opt.zero_grad()
        (model(torch.full((2, 4), 100.0)) ** 2).sum().backward()
        clip(scaler, opt, model.parameters())
        return float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    assert norm_after(no_clip) > 10 and norm_after(ClipGrad(1.0)) == pytest.approx(1.0, rel=1e-4)
