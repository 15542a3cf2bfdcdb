"""Batches from the image cache: the dataset of whole batches, the seeded sampler, the loaders (DataLoader
or images held on the GPU) and the transfer to the device.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from masktk.data.cache import ImageCache


class BatchDataset(torch.utils.data.Dataset):
    """Indexed by a list of indices: returns a whole uint8 batch (B, 3, H, W) and its targets.

    One code path for the 18-class label and the task labels: `targets` has one column per task.
    """

    def __init__(self, images, rows, targets):
        self.images, self.rows, self.targets = images, np.asarray(rows), torch.as_tensor(targets)

    def __len__(self):
        return len(self.rows)

    @property
    def image_shape(self):
        return tuple(self.images.shape[1:])  # (H, W, 3)

    def __getitem__(self, idx):
        idx = np.asarray(idx)
        arr = self.images.array if isinstance(self.images, ImageCache) else self.images
        order = np.argsort(self.rows[idx])  # sorted reads are faster on a memmap
        x = np.empty((len(idx),) + arr.shape[1:], np.uint8)
        x[order] = arr[self.rows[idx][order]]
        return torch.from_numpy(x).permute(0, 3, 1, 2), self.targets[idx], torch.as_tensor(idx)


class BatchSampler(torch.utils.data.Sampler):
    """Yields lists of indices. The order of an epoch depends on (seed, epoch) only, so a resumed
    run sees the same batches. Under DDP each rank takes every world-th batch element; training
    pads with repeats so ranks step together, evaluation does not pad (each sample once)."""

    def __init__(self, n, batch_size, shuffle, seed=0, weights=None, rank=0, world=1, drop_last=False):
        self.n, self.bs, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.rank, self.world, self.drop_last, self.epoch = rank, world, drop_last, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def _indices(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        if self.weights is not None:
            idx = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        elif self.shuffle:
            idx = torch.randperm(self.n, generator=g)
        else:
            idx = torch.arange(self.n)
        if self.shuffle and self.world > 1:  # pad so every rank gets the same number of steps
            pad = (-len(idx)) % self.world
            idx = torch.cat([idx, idx[:pad]])
        return idx[self.rank::self.world].tolist()

    def __iter__(self):
        idx = self._indices()
        stop = len(idx) - len(idx) % self.bs if self.drop_last else len(idx)
        for i in range(0, stop, self.bs):
            yield idx[i:i + self.bs]

    def __len__(self):
        m = len(self._indices())
        return m // self.bs if self.drop_last else math.ceil(m / self.bs)


def make_loader(dataset, batch_size, train, seed, weights=None, workers=0, rank=0, world=1, pin=False,
                gpu=None):
    """Batches of (uint8 images (B, 3, H, W), targets, indices). gpu: a CUDA device on which to hold the
    images when they take under a quarter of its free memory (DeviceLoader); else a DataLoader."""
    sampler = BatchSampler(len(dataset), batch_size, shuffle=train, seed=seed, weights=weights, rank=rank,
                           world=world, drop_last=train and len(dataset) // world > batch_size)
    if gpu is not None and torch.device(gpu).type == "cuda":
        if len(dataset) * int(np.prod(dataset.image_shape)) < torch.cuda.mem_get_info(gpu)[0] / 4:
            return DeviceLoader(dataset, sampler, gpu)
    return torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=workers,
                                       pin_memory=pin, persistent_workers=workers > 0)


def send(t, device):
    """A small host tensor to `device` without stalling it: pinned first on CUDA, then an asynchronous copy."""
    return (t.pin_memory() if device.type == "cuda" else t).to(device, non_blocking=True)


def to_device(batches, device):
    """Yield each batch (a tuple of tensors) on `device`. On CUDA the next batch is copied on a side
    stream while the current one computes (from pinned memory: asynchronous); elsewhere a plain move."""
    device = torch.device(device)
    if device.type != "cuda":
        yield from (tuple(t.to(device) for t in b) for b in batches)
        return
    stream, main, current = torch.cuda.Stream(device), torch.cuda.current_stream(device), None
    for b in batches:
        with torch.cuda.stream(stream):
            nxt = tuple(t.to(device, non_blocking=True) for t in b)
        if current is not None:
            yield current
        main.wait_stream(stream)
        for t in nxt:  # the main stream uses memory the side stream allocated
            t.record_stream(main)
        current = nxt
    if current is not None:
        yield current


def pinned_batches(images, batch_size, pin, threads=4):
    """uint8 (N, H, W, 3) images (an array or an ImageCache) -> batches as tensors, each read once
    straight into (pinned, when `pin`) memory by helper threads while the caller computes."""
    def load(i):
        out = torch.empty((min(batch_size, len(images) - i),) + tuple(images.shape[1:]), dtype=torch.uint8,
                          pin_memory=pin)
        if isinstance(images, ImageCache):
            images.read_into(i, out.numpy())
        else:
            out.numpy()[...] = images[i:i + batch_size]
        return (out,)
    starts = range(0, len(images), batch_size)
    with ThreadPoolExecutor(threads) as ex:
        ahead = [ex.submit(load, i) for i in starts[:threads]]
        for k in range(len(starts)):
            if k + threads < len(starts):
                ahead.append(ex.submit(load, starts[k + threads]))
            yield ahead[k].result()
            ahead[k] = None


class DeviceLoader:
    """A split's uint8 images held on the GPU: each batch is one gather there, with no worker processes,
    no host copies and no transfers, since the host otherwise sets the pace. Same sampler, same batches
    as the DataLoader it replaces."""

    def __init__(self, dataset, sampler, device, chunk=512):
        self.sampler, self.device = sampler, torch.device(device)
        n = len(dataset)
        self.images = torch.empty((n,) + tuple(dataset.image_shape), dtype=torch.uint8, device=self.device)
        for s in range(0, n, chunk):
            x, _, _ = dataset[np.arange(s, min(n, s + chunk))]
            self.images[s:s + chunk] = x.permute(0, 2, 3, 1).to(self.device)
        self.targets = dataset.targets.to(self.device)

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        for idx in self.sampler:
            i = send(torch.as_tensor(idx), self.device)
            yield self.images[i].permute(0, 3, 1, 2), self.targets[i], i
