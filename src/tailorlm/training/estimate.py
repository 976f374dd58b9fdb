"""Estimate a run before running it: parameters, memory, tokens per epoch, and time calibrated on this machine."""

from __future__ import annotations

import dataclasses
import math
import resource
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from tailorlm.training.config import RunConfig

GIB = 1024**3


@dataclass
class Estimate:
    total_parameters: int
    trainable_parameters: int
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    """Measured: growth of peak resident memory over the two timed steps (weights, gradients and state aside)."""
    peak_memory_bytes: int
    tokens_per_epoch: int
    trained_tokens_per_epoch: int
    steps_per_epoch: int
    seconds_per_step: float
    seconds_per_epoch: float
    device: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def render(self) -> str:
        rows = [
            ("parameters", f"{self.total_parameters:,} total, {self.trainable_parameters:,} trainable "
                           f"({self.trainable_parameters / max(1, self.total_parameters):.2%})"),
            ("weights", _gib(self.weights_bytes)),
            ("gradients", _gib(self.gradients_bytes)),
            ("optimizer state (AdamW)", _gib(self.optimizer_bytes)),
            ("activations (measured)", _gib(self.activation_bytes)),
            ("peak memory (measured)", _gib(self.peak_memory_bytes)),
            ("tokens per epoch", f"{self.tokens_per_epoch:,} ({self.trained_tokens_per_epoch:,} carry loss)"),
            ("steps per epoch", f"{self.steps_per_epoch:,}"),
            ("time per step", f"{self.seconds_per_step:.2f} s on {self.device} (timed)"),
            ("time per epoch", _duration(self.seconds_per_epoch)),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def estimate(config: RunConfig, *, console: Console | None = None) -> Estimate:
    """Prepare the run as `tailor train` would (in a scratch folder) and time two real optimizer steps."""
    from tailorlm.training.checkpoint import TrainState
    from tailorlm.training.loop import _next_micro_batches, _optimizer_step
    from tailorlm.training.objectives import LossModule
    from tailorlm.training.optim import build_optimizer, build_scheduler
    from tailorlm.training.setup import prepare

    console = console or Console(stderr=True)
    settings = config.train
    with tempfile.TemporaryDirectory(prefix="tailorlm-estimate-") as scratch:
        run = prepare(dataclasses.replace(config, output=scratch), resume=False, overwrite=True, console=console)
        model = run.model
        module = LossModule(model, objective=config.objective, chunk_size=settings.loss_chunk_size,
                            kernels=run.device.type == "cpu" and settings.cpu_kernels)
        optimizer = build_optimizer(model, lr=settings.lr, weight_decay=settings.weight_decay)
        scheduler = build_scheduler(optimizer, total_steps=10, warmup_steps=0, schedule="constant")
        from tailorlm.training.distributed import World

        state, world = TrainState(), World()
        before = _peak_rss()
        model.train()
        timings = []
        for _ in range(2):  # the first step pays one-off costs; the second is the one that counts
            batches = _next_micro_batches(run.plan, state, settings.grad_accum)
            start = time.perf_counter()
            _optimizer_step(module, model, optimizer, scheduler, batches, world, run, settings)
            timings.append(time.perf_counter() - start)
        peak = _peak_rss()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = run.total
        tokens = sum(len(item["input_ids"]) for item in run.plan.items)
        trained = sum(sum(1 for t in item["labels"] if t != -100) if isinstance(item["labels"], list) else 1
                      for item in run.plan.items)
        steps = run.plan.steps_per_epoch(settings.grad_accum)
        optimizer_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                              for t in s.values() if hasattr(t, "numel"))
        return Estimate(
            total_parameters=total, trainable_parameters=trainable, weights_bytes=total * 4,
            gradients_bytes=trainable * 4, optimizer_bytes=optimizer_bytes,
            activation_bytes=max(0, peak - before - trainable * 4 - optimizer_bytes), peak_memory_bytes=peak,
            tokens_per_epoch=tokens, trained_tokens_per_epoch=trained, steps_per_epoch=steps,
            seconds_per_step=timings[-1], seconds_per_epoch=timings[-1] * steps, device=run.device.type,
        )


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 1024**2:.1f} MiB"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
