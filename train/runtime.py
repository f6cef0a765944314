"""Where a training process runs: rank, world size, device, autocast, per-epoch seeding.

Why apart from the engine: the tasks' evaluation loops need `autocast` and the rank
collectives too, and must not import the engine that imports them.

DDP: start with `torchrun --nproc_per_node N` (gloo on CPU, NCCL on GPUs). Rank 0 writes
the run folder; every rank gets the same number of batches.
"""
from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from train.data import epoch_seed

__all__ = ["Runtime", "autocast", "main_decides", "runtime_session", "seed_augmentation", "start_runtime"]


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: rank, world size, device, and whether it writes the run."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False  # this process joined the torchrun group here, so it leaves it

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.distributed:
            torch.distributed.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out


def start_runtime(device: str | None = None) -> Runtime:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, NCCL on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device or "cpu")
    if world_size > 1:
        dist = torch.distributed
        joined = not dist.is_initialized()
        if joined:
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        return Runtime(dist.get_rank(), dist.get_world_size(), dev, owns_group=joined)
    return Runtime(0, 1, dev)


@contextlib.contextmanager
def runtime_session(device: str | None = None) -> Iterator[Runtime]:
    """`start_runtime`, and on the way out leave the process group this process joined.

    A rank that exits with its gloo group still alive can abort in the group's threads at
    interpreter shutdown (SIGABRT, "terminate called without an active exception") after a
    run that finished; torch asks for destroy_process_group before exit.
    """
    runtime = start_runtime(device)
    try:
        yield runtime
    finally:
        if runtime.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def seed_augmentation(seed: int, epoch: int, rank: int) -> None:
    """Seed the generators augmentations draw from, per epoch and rank (not keyed)."""
    s = epoch_seed(seed, epoch, rank, stream="augment")
    torch.manual_seed(s)
    np.random.seed(s)  # timm's mixup draws lambda from numpy
    random.seed(s)


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA; CPU runs in float32 (bf16 on CPU is slow and gains nothing)."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def main_decides(runtime: Runtime, check: Callable[[], Any]) -> None:
    """Run `check` on rank 0 only and raise its error on every rank.

    For checks that read or hash files once (run folder, --verify-digests) and must not
    race with rank 0 creating the run folder.
    """
    error = None
    if runtime.main:
        try:
            check()
        except ValueError as e:
            error = (type(e), str(e))
    if runtime.distributed:
        error = runtime.gather(error)[0]
    if error is not None:
        raise error[0](error[1])
