"""Batched augmentation on uint8 tensors and the normalisation every model input goes through.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from masktk.data.loaders import send
from masktk.errors import UserError

AUG_PRESETS = {
    "none": dict(),
    "basic": dict(flip=0.5, scale=(0.9, 1.1), shift=0.05, rotate=0.0, brightness=0.2, contrast=0.2),
    "strong": dict(flip=0.5, scale=(0.85, 1.15), shift=0.08, rotate=10.0, brightness=0.3, contrast=0.3,
                   saturation=0.3, gray=0.1, erase=0.25),
}


class BatchTransform:
    """uint8 (B, 3, H, W) -> normalised float, with the preset's random augmentation when
    training. One affine warp (flip, scale, shift, rotation) and a few per-sample colour ops for
    the whole batch, on whatever device the batch is on."""

    def __init__(self, mean, std, preset="none"):
        if preset not in AUG_PRESETS:
            raise UserError(f"unknown augmentation {preset!r}; valid: {', '.join(AUG_PRESETS)}")
        # (x - mean) / std as x * scale + shift: one kernel (addcmul reads the uint8 batch itself)
        # instead of three passes over a float copy
        self.scale = 1 / (torch.tensor(std).view(1, 3, 1, 1) * 255)
        self.shift = -torch.tensor(mean).view(1, 3, 1, 1) * 255 * self.scale
        self.p = AUG_PRESETS[preset]

    def __call__(self, x, train=False, generator=None):
        if train and self.p:
            x = self._augment(x.float(), generator)
        if self.scale.device != x.device:  # moved once: a blocking copy per batch would stall the GPU
            self.scale, self.shift = self.scale.to(x.device), self.shift.to(x.device)
        return torch.addcmul(self.shift, x, self.scale)

    def _augment(self, x, g):
        p, b, dev = self.p, x.shape[0], x.device
        # Every random number of the batch in one draw from the CPU generator (the same stream on any
        # device), sent in one asynchronous copy: no host synchronisation per batch.
        r = send(torch.rand(b, 14, generator=g), dev)
        s = p["scale"][0] + (p["scale"][1] - p["scale"][0]) * r[:, 0]
        ang = (r[:, 1] * 2 - 1) * math.radians(p["rotate"])
        flip = torch.where(r[:, 2] < p["flip"], -1.0, 1.0)
        t = (r[:, 3:5] * 2 - 1) * p["shift"] * 2
        cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
        theta = torch.stack([torch.stack([cos * flip, -sin, t[:, 0]], 1),
                             torch.stack([sin * flip, cos, t[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        per_sample = r.view(b, 14, 1, 1, 1)
        x = (x - mean) * (1 + (per_sample[:, 5] * 2 - 1) * p["contrast"]) + mean
        x = x * (1 + (per_sample[:, 6] * 2 - 1) * p["brightness"])
        if p.get("saturation"):
            grey = x.mean(dim=1, keepdim=True)
            x = (x - grey) * (1 + (per_sample[:, 7] * 2 - 1) * p["saturation"]) + grey
            x = torch.where(per_sample[:, 8] < p["gray"], grey.expand_as(x), x)
        if p.get("erase"):  # one random rectangle per chosen sample, filled with the image mean
            h, w = x.shape[-2:]
            cy, cx, eh, ew = r[:, 9] * h, r[:, 10] * w, (0.1 + 0.2 * r[:, 11]) * h, (0.1 + 0.2 * r[:, 12]) * w
            yy = torch.arange(h, device=dev).view(1, h, 1)
            xx = torch.arange(w, device=dev).view(1, 1, w)
            box = ((yy - cy.view(-1, 1, 1)).abs() < eh.view(-1, 1, 1) / 2) & \
                  ((xx - cx.view(-1, 1, 1)).abs() < ew.view(-1, 1, 1) / 2)
            box &= (r[:, 13] < p["erase"]).view(-1, 1, 1)
            x = torch.where(box.unsqueeze(1), mean, x)
        return x.clamp(0, 255)
