"""masktk/train/optimizers.py and optimizer.py: schedules, layer decay, names refused with the valid ones."""
import numpy as np
import pytest
import torch


def test_onecycle_warmup_means_what_it_says():
    from masktk.train.optimizers import create_scheduler

    def lrs(name, epochs, steps, warmup, n):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=1.0)
        sched, out = create_scheduler(name, opt, 1.0, epochs, steps, warmup), []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return np.array(out)
    no_warmup = lrs("onecycle", 10, 10, 0, 12)
    assert no_warmup[1] == pytest.approx(1.0, abs=1e-3)  # at the peak after one step, not after 25 of 100
    one = lrs("onecycle", 10, 10, 1, 12)
    assert one.argmax() == 10 and one[5] < 0.7  # one epoch of 10 steps
    half = lrs("cosine", 4, 10, 0.5, 12)
    assert half[:5].max() < 0.9 and half[5] > 0.9  # a fractional warm-up is not truncated to none
    tiny = lrs("onecycle", 1, 1, 1, 1)  # one step in all: no division by zero
    assert np.isfinite(tiny).all()


@pytest.mark.parametrize("schedule", ["onecycle", "cyclic", "cosine"])
def test_layer_decay_lowers_the_lr_towards_the_input_under_every_schedule(schedule):
    import timm

    from masktk.train.optimizers import create_optimizer, create_scheduler, top_lr
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=18)
    opt = create_optimizer("adamw", model, 1e-3, 0.01, layer_decay=0.9)
    sched = create_scheduler(schedule, opt, 1e-3, 4, 10, 1)
    for _ in range(10):  # to the peak of each schedule's warm-up
        opt.step()
        sched.step()
    by_name = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    stem, head = by_name[id(model.conv_stem.weight)], by_name[id(model.classifier.weight)]
    assert head == pytest.approx(top_lr(opt)) and stem < 0.25 * head  # 0.9 per block, about 17 blocks down
    plain = create_optimizer("adamw", model, 1e-3, 0.01)
    assert len({g["lr"] for g in plain.param_groups}) == 1


def test_unknown_names_are_refused_by_the_factories_themselves():
    from masktk.errors import UserError
    from masktk.train.losses import create_loss
    from masktk.train.optimizers import create_optimizer, create_scheduler
    with pytest.raises(UserError, match="label_smoothing"):
        create_loss("nope")
    with pytest.raises(UserError, match="adamw"):
        create_optimizer("nope", torch.nn.Linear(2, 2), 1e-3)
    with pytest.raises(UserError, match="onecycle"):
        create_scheduler("nope", torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0), 1.0, 1, 1)


@pytest.mark.e2e
def test_optimizer_py_lists_every_optimizer_and_schedule_with_what_it_does():
    from conftest import run

    from masktk.train.optimizers import ABOUT, OPTIMIZERS, SCHEDULE_ABOUT, SCHEDULERS
    assert set(ABOUT) == set(OPTIMIZERS) and set(SCHEDULE_ABOUT) == set(SCHEDULERS)
    out = run("optimizer.py").stdout
    for about in (ABOUT, SCHEDULE_ABOUT):
        for name, text in about.items():
            assert f"  {name} " in out and text in out, name
    assert [line.split()[0] for line in out.splitlines() if line.endswith("(default)")] == ["adamw", "onecycle"]
