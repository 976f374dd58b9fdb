"""Scale-out on PyTorch's own engine: torchrun launches the processes, DDP (or FSDP) keeps their gradients in step."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_world(device_type: str) -> World:
    """Join the process group that torchrun set up in the environment, or run alone."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def wrap(module: nn.Module, world: World, device_type: str, *, fsdp: bool = False) -> nn.Module:
    """DDP around the module that computes the loss, so its forward triggers gradient synchronisation.

    With `fsdp`, the module is sharded in place instead (training/fsdp.py); build the optimizer after this.
    """
    if world.size == 1:
        return module
    if fsdp:
        from tailorlm.training.fsdp import shard

        return shard(module, world, device_type)
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.local_rank] if device_type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=False)


def gradient_sync(module: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """Synchronise gradients in this backward pass (a step's last micro-batch) or only accumulate them."""
    if isinstance(module, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if enabled else module.no_sync()
    if hasattr(module, "set_requires_gradient_sync"):  # FSDP
        module.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def all_reduce_sum(values: list[float], world: World) -> list[float]:
    """Sum numbers across processes (for logging losses and token counts)."""
    if world.size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def launch(argv: list[str], nproc: int) -> int:
    """Re-run this `tailor` command under torchrun with `nproc` processes on this machine."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "tailorlm", *argv]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc))))
    # torchrun gets its own session and exactly one Ctrl-C from us: it passes that on to each worker, which
    # finishes its step and checkpoints. A terminal's Ctrl-C reaching torchrun directly as well would be a second
    # one, which means "stop now".
    process = subprocess.Popen(command, env=env, start_new_session=True)
    interrupted = False

    def forward(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True
        process.send_signal(signum)

    previous = signal.signal(signal.SIGINT, forward)
    try:
        code = process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    return 130 if interrupted else code
