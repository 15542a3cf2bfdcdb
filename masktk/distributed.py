"""torchrun / DistributedDataParallel set-up. Without torchrun every function is a single-process no-op.

    torchrun --standalone --nproc_per_node=2 train.py ...        # one machine, 2 processes
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from masktk.errors import UserError


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


def setup(device_name="auto", cudnn_benchmark=True) -> Dist:
    """Reads torchrun's RANK/WORLD_SIZE/LOCAL_RANK; nccl on CUDA, gloo on CPU. cudnn_benchmark: let cuDNN
    time its kernels for each new input shape (fixed sizes here; costs time in the first epoch)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda but no CUDA device is visible; use --device cpu")
        if local >= torch.cuda.device_count():
            raise UserError(f"process {local} of this machine has no GPU of its own ({torch.cuda.device_count()} "
                            "visible): use --nproc_per_node at most the number of GPUs, or --device cpu")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        torch.backends.cudnn.benchmark = cudnn_benchmark
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


def sync_state(model):
    """Rank 0's parameters and buffers on every rank. DDP broadcasts buffers (BatchNorm running stats)
    before each forward, but each rank's last forward then updates its own copy, and an EMA copy of the
    model averages each rank's own buffers: without this, ranks would validate slightly different
    models from the one rank 0 saves."""
    if dist.is_initialized():
        with torch.no_grad():
            for t in model.state_dict().values():
                dist.broadcast(t, src=0)


def check_shared_dir(path):
    """Every rank must see the run folder rank 0 writes (checkpoints, resume and 'finished' markers
    live there): rank 0 writes a token, every rank reads it, and all stop together when one cannot."""
    if not dist.is_initialized():
        return
    import secrets
    from pathlib import Path
    token = broadcast_object(secrets.token_hex(8) if is_main_process() else None)
    marker = Path(path) / ".ranks-share-this-folder"
    if is_main_process():
        marker.write_text(token)
    barrier()
    seen = gather_objects(marker.is_file() and marker.read_text() == token)
    barrier()
    if is_main_process():
        marker.unlink(missing_ok=True)
    if not all(seen):
        missing = [r for r, ok in enumerate(seen) if not ok]
        raise UserError(f"{path}: ranks {missing} cannot see the run folder rank 0 writes; torchrun across machines "
                        "needs --model_dir (or --run_dir) on a filesystem shared by every machine")


def on_rank0(fn):
    """fn() on rank 0 only -> its result on every rank. A UserError on rank 0 stops every rank with the
    same message (the others would otherwise wait for rank 0 at the next collective)."""
    result, err = None, None
    if is_main_process():
        try:
            result = fn()
        except UserError as e:
            err = str(e)
    err, result = broadcast_object((err, result))
    if err:
        raise UserError(err)
    return result


def rank0_first(fn):
    """fn() on rank 0 (which builds shared files, such as the image cache), then on the other ranks
    (which find them built). A UserError on rank 0 stops every rank with the same message."""
    mine = []  # rank 0's result stays here: the others compute their own
    on_rank0(lambda: mine.append(fn()))
    return mine[0] if mine else fn()


def barrier():
    if dist.is_initialized():
        dist.barrier()


def cleanup():
    if dist.is_initialized():
        dist.destroy_process_group()


def log_main(*a):
    if is_main_process():
        print(*a, flush=True)
