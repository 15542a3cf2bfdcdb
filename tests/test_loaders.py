"""masktk/data/loaders.py: the batch dataset, the sampler, the loaders and the transfer to the device."""
import numpy as np
import torch

from masktk.data.loaders import BatchDataset
from masktk.labels import task_targets


def test_weighted_sampler_draws_classes_evenly():
    from masktk.data.loaders import BatchSampler
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    weights = 1.0 / np.bincount(labels)[labels]
    s = BatchSampler(len(labels), 100, shuffle=True, seed=0, weights=weights)
    drawn = labels[np.concatenate(list(s))]
    share = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.all(np.abs(share - 1 / 3) < 0.06), share


def test_one_dataset_class_serves_label_and_tasks():
    images = np.random.default_rng(0).integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    labels = np.array([0, 7, 11, 17, 3])
    ds = BatchDataset(images, np.arange(5), task_targets(labels, ["label"]))
    x, y, idx = ds[[4, 1]]
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.uint8 and y[:, 0].tolist() == [3, 7]
    ds3 = BatchDataset(images, np.arange(5), task_targets(labels, ["mask", "gender", "age"]))
    assert ds3[[3]][1].tolist() == [[2, 1, 2]]
    assert np.array_equal(x[1].permute(1, 2, 0).numpy(), images[1])


def test_pinned_batches_cover_every_row_in_order_and_to_device_keeps_them():
    from masktk.data.loaders import pinned_batches, to_device
    images = np.random.default_rng(0).integers(0, 255, (10, 4, 3, 3), dtype=np.uint8)
    got = [x for (x,) in to_device(pinned_batches(images, 4, pin=False), "cpu")]
    assert [len(x) for x in got] == [4, 4, 2]
    assert np.array_equal(torch.cat(got).numpy(), images)
    assert all(x.numpy().flags.writeable for x in got)  # no read-only memmap views reach torch


def test_device_loader_gives_the_dataloaders_batches():
    """The GPU-resident loader (here on the CPU device, same code) yields exactly the batches of the
    DataLoader: same sampler, same rows, same targets, for a split that is not in cache order."""
    from masktk.data.loaders import DeviceLoader, make_loader
    images = np.random.default_rng(0).integers(0, 255, (40, 6, 5, 3), dtype=np.uint8)
    rows = np.random.default_rng(1).permutation(40)[:30]
    ds = BatchDataset(images, rows, task_targets(np.arange(30) % 18, ["label", "mask"]))
    ref = make_loader(ds, 8, True, seed=3)
    dev = DeviceLoader(ds, ref.sampler, "cpu")
    for epoch in (0, 1):
        ref.sampler.set_epoch(epoch)
        a, b = list(ref), list(dev)
        assert len(a) == len(b) == len(dev) == 3  # 30 // 8 full batches (drop_last when training)
        for (xa, ya, ia), (xb, yb, ib) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
