"""torchrun / DistributedDataParallel set-up. Without torchrun every function is a single-process no-op.

    torchrun --standalone --nproc_per_node=2 train.py ...        # one machine, 2 processes
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self):
        return self.world > 1

    @property
    def is_main(self):
        return self.rank == 0


def setup(device_name="auto") -> Dist:
    """Reads torchrun's RANK/WORLD_SIZE/LOCAL_RANK; nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device(device_name)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local, device)


def is_main_process():
    return not dist.is_initialized() or dist.get_rank() == 0


def gather_objects(obj):
    """List of every rank's obj (just [obj] without DDP)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's obj on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(model):
    """Rank 0's buffers (BatchNorm running stats) on every rank. DDP broadcasts them before each
    forward, but each rank's last forward then updates its own copy: without this, ranks would
    validate slightly different models from the one rank 0 saves."""
    if dist.is_initialized():
        for b in model.buffers():
            dist.broadcast(b, src=0)


def barrier():
    if dist.is_initialized():
        dist.barrier()


def cleanup():
    if dist.is_initialized():
        dist.destroy_process_group()
