"""The one training loop: pre-training, SFT, classification and seq2seq, for every method.

A reader can follow a run top to bottom in `train`: set up, plan batches, step, evaluate, checkpoint, save.
Methods differ only in which parameters train (strategies/adapters.py); objectives only in how a batch
becomes a loss (training/objectives.py).
"""

from __future__ import annotations

import contextlib
import math
import random
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from tailorlm.training.checkpoint import TrainState, list_checkpoints, load_checkpoint, save_checkpoint
from tailorlm.training.config import RunConfig
from tailorlm.errors import ConfigError
from tailorlm.training.distributed import World, all_reduce_sum, barrier, gradient_sync, init_world, shutdown, wrap
from tailorlm.training.fsdp import gather_checkpoint, whole, whole_root
from tailorlm.training.objectives import LossModule, classifier_logits, trained_tokens
from tailorlm.training.optim import build_optimizer, build_scheduler
from tailorlm.training.setup import Prepared, pick_device, prepare
from tailorlm.training.tracking import Tracker

StepCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class RunResult:
    """What a run did: where its specialist is, how far it got, and how it went."""

    output: Path
    steps: int
    interrupted: bool = False
    stopped_early: bool = False
    final_loss: float | None = None
    best_step: int | None = None
    best_metric: float | None = None
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    trainable_parameters: int = 0
    total_parameters: int = 0
    tokens_per_second: float = 0.0
    peak_memory_mb: float = 0.0
    seconds: float = 0.0
    forgetting: dict[str, Any] | None = None
    """The forgetting check's perplexities before and after (training/perplexity.py), when the recipe has one."""


def train(config: RunConfig, *, resume: bool = False, overwrite: bool = False,
          callbacks: tuple[StepCallback, ...] = (), console: Console | None = None) -> RunResult:
    """Run one training job to completion (or to Ctrl-C, which checkpoints) and save the specialist."""
    settings = config.train
    world = init_world(pick_device(settings).type)
    try:
        settings.check_processes(world.size, where=config.source)
    except ConfigError:
        shutdown(world)
        raise
    console = console or Console(stderr=True, quiet=not world.main)
    # Seeded before the model is built, so that new weights (adapters, heads) start the same in every run.
    _seed_everything(settings.seed)
    try:
        run = prepare(config, resume=resume, overwrite=overwrite, console=console, world=world)
    except BaseException:
        shutdown(world)
        raise
    model = run.model
    loss_module = LossModule(model, objective=config.objective, chunk_size=settings.loss_chunk_size,
                             kernels=run.device.type == "cpu" and settings.cpu_kernels)
    step_module = wrap(loss_module, world, run.device.type, fsdp=settings.fsdp)  # before the optimizer: FSDP
    optimizer = build_optimizer(model, lr=settings.lr, weight_decay=settings.weight_decay)
    if world.size == 1:
        _allocate_gradients(model)
    plan = run.plan
    total_steps = settings.max_steps or max(1, math.ceil(settings.epochs * plan.steps_per_epoch(settings.grad_accum)))
    warmup = settings.warmup_steps if settings.warmup_steps is not None else int(settings.warmup_ratio * total_steps)
    scheduler = build_scheduler(optimizer, total_steps=total_steps, warmup_steps=warmup, schedule=settings.schedule)

    state = TrainState()
    if resume:
        checkpoints = list_checkpoints(run.output)
        state = load_checkpoint(checkpoints[-1], model, optimizer, scheduler)
        console.print(f"resumed from {checkpoints[-1]} (step {state.step})")
        try:
            _check_stream(state, plan, checkpoints[-1])
        except ConfigError:
            shutdown(world)
            raise
    state.stream = plan.position()
    if run.forgetting is not None and state.perplexity_before is None and world.main:
        # Measured before the first step; a resumed run keeps the numbers its checkpoint saved.
        console.print("measuring perplexity on the forgetting check's texts before training")
        state.perplexity_before = run.forgetting.measure(model, chunk_size=settings.loss_chunk_size)
    tracker = Tracker(run.output, total_steps=total_steps, start_step=state.step, tensorboard=settings.tensorboard,
                      mlflow=settings.mlflow, run_name=run.output.name, console=console, enabled=world.main)
    stop = _InterruptFlag()
    losses = [h["loss"] for h in state.history if "loss" in h]
    result = RunResult(output=run.output, steps=state.step, final_loss=losses[-1] if losses else None,
                       trainable_parameters=run.trainable, total_parameters=run.total)
    saved_step = state.step if resume else None

    def checkpoint() -> None:
        """Save the current state once per step; the main process writes (under FSDP, all of them gather)."""
        nonlocal saved_step
        if saved_step == state.step:
            return
        gathered = None
        if settings.fsdp:
            gathered = gather_checkpoint(model, optimizer, world)
        if world.main:
            save_checkpoint(run.output, model, optimizer, scheduler, state, keep_last=settings.keep_last,
                            whole=gathered)
        saved_step = state.step
    model.train()
    try:
        with stop.installed():
            while state.step < total_steps and not stop.synced(world):
                step_start = time.perf_counter()
                batches = _next_micro_batches(plan, state, settings.grad_accum)
                record = _optimizer_step(step_module, model, optimizer, scheduler, batches, world, run, settings)
                state.step += 1
                state.tokens_seen += record.pop("input_tokens")
                seconds = time.perf_counter() - step_start
                state.elapsed_seconds += seconds
                record.update(step=state.step, epoch=state.epoch, tokens_per_second=record["step_tokens"] / seconds)
                if state.step % settings.log_every == 0 or state.step == total_steps:
                    tracker.log(record)
                state.history.append({"step": state.step, "loss": record["loss"]})
                result.final_loss = record["loss"]
                evaluate_now = settings.eval_every and state.step % settings.eval_every == 0
                if run.eval_plan is not None and (evaluate_now or state.step == total_steps):
                    # FSDP: classification calls the model itself, outside the loss module that gathers its weights
                    with whole_root(loss_module):
                        improved = _evaluate(loss_module, model, run, state, tracker, world)
                    if settings.early_stopping_patience and state.evals_without_improvement >= settings.early_stopping_patience:
                        result.stopped_early = True
                    if improved:
                        checkpoint()
                if settings.save_every and state.step % settings.save_every == 0:
                    checkpoint()
                for callback in callbacks:
                    callback(state.step, record)
                if result.stopped_early:
                    console.print(f"early stop at step {state.step}: no improvement in "
                                  f"{settings.early_stopping_patience} evaluations")
                    break
        checkpoint()
        barrier(world)
    finally:
        tracker.close()
    result.interrupted = stop.raised and state.step < total_steps
    result.steps, result.seconds = state.step, state.elapsed_seconds
    result.best_step, result.best_metric = state.best_step, state.best_metric
    result.eval_history = [h for h in state.history if "eval_loss" in h]
    result.tokens_per_second = state.tokens_seen / max(state.elapsed_seconds, 1e-9)
    result.peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if not result.interrupted:
        run.save_specialist(state, result, world, fsdp_root=loss_module if settings.fsdp else None, console=console)
    elif result.interrupted and world.main:
        console.print(f"interrupted at step {state.step}; checkpoint saved in {list_checkpoints(run.output)[-1]}. "
                      "To continue, run the same command with --resume.")
    # The last collective (FSDP's all-gather for the specialist, DDP's all-reduce) must be retired before the process
    # group goes: gloo's worker thread frees its tensors, which needs the interpreter. Under FSDP one freed during
    # shutdown aborted the process (seen in a core dump; pytorch/pytorch#179291); under DDP a rank hung at exit, the
    # process group's destructor joining that thread while holding the interpreter (seen in gdb). A barrier waits
    # with the interpreter free, so that thread finishes first.
    barrier(world)
    shutdown(world)
    return result


def _optimizer_step(step_module, model, optimizer, scheduler, batches, world: World, run: Prepared, settings) -> dict:
    """Accumulate gradients over this process's micro-batches, normalised by the step's total trained tokens."""
    counts = [trained_tokens(b, run.objective) for b, _ in batches]
    total = max(1, sum(counts))
    loss_sum = 0.0
    input_tokens = sum(real for _, real in batches)
    size = settings.micro_batch_size or (1 if run.device.type == "cpu" else settings.batch_size)
    mine = _rank_pieces(batches, world.rank, world.size, size)
    passes = len(mine)
    if settings.fsdp:
        # FSDP gathers each block's weights in every forward, so all processes run the same number of passes;
        # one with fewer micro-batches repeats its first with a zero weight.
        passes = max(len(_rank_pieces(batches, rank, world.size, size)) for rank in range(world.size))
    for i in range(passes):
        batch = {k: v.to(run.device) for k, v in mine[i if i < len(mine) else 0].items()}
        # DDP and FSDP average gradients over processes; scaling by the world size turns that into a sum.
        weight = world.size / total if i < len(mine) else 0.0
        with gradient_sync(step_module, i == passes - 1), run.autocast():
            loss, _ = step_module(batch)
            (loss * weight).backward()
        if i < len(mine):
            loss_sum += float(loss.detach())
    grad_norm = None
    if settings.max_grad_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                              settings.max_grad_norm)
        grad_norm = float(whole(norm))  # FSDP gives the norm as a distributed tensor over the gradients' shards
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=world.size > 1)  # one process keeps its gradient buffers (_allocate_gradients)
    (loss_sum,) = all_reduce_sum([loss_sum], world)
    record = {"loss": loss_sum / total, "lr": lr, "trained_tokens": total, "step_tokens": input_tokens,
              "input_tokens": input_tokens}
    if grad_norm is not None:
        record["grad_norm"] = grad_norm
    return record


def _allocate_gradients(model: torch.nn.Module) -> None:
    """Give every trainable parameter its gradient buffer now, before any activation exists, to be zeroed in place.

    Buffers first allocated inside the first backward land between that pass's activations and stay there, so the
    allocator cannot hand the next forward those holes whole: on SmolLM2-135M with LoRA that left about 180 MB more
    resident memory from the second micro-batch on (bench/README.md).
    """
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)


def _rank_pieces(batches: list[tuple[dict[str, torch.Tensor], int]], rank: int, size: int,
                 rows: int) -> list[dict[str, torch.Tensor]]:
    """The forward passes of process `rank`: its share of the step's micro-batches, split into pieces of `rows`."""
    return [piece for batch, _ in batches[rank::size] for piece in _pieces(batch, rows)]


def _pieces(batch: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    """Split a batch along its rows into forward passes of at most `size` rows (same sum of losses, less memory)."""
    rows = batch["input_ids"].shape[0]
    if rows <= size:
        return [batch]
    pieces = [{k: v[start:start + size] for k, v in batch.items()} for start in range(0, rows, size)]
    return [_trim(piece) for piece in pieces]


def _trim(piece: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the padding columns that only other rows of the batch needed."""
    mask = piece.get("attention_mask")
    if mask is None:
        return piece
    width = mask.shape[1]
    keep = int(mask.any(0).nonzero().max()) + 1 if mask.any() else width
    return {k: (v[:, :keep] if v.dim() == 2 and v.shape[1] == width else v) for k, v in piece.items()}


def _next_micro_batches(plan, state: TrainState, count: int) -> list[tuple[dict[str, torch.Tensor], int]]:
    """The next `count` micro-batches in the fixed per-epoch order, moving to the next epoch when one ends."""
    batches = []
    while len(batches) < count:
        order = plan.epoch_batches(state.epoch)
        if state.batch_index >= len(order):
            state.epoch, state.batch_index = state.epoch + 1, 0
            continue
        batches.append(plan.collate(order[state.batch_index]))
        state.batch_index += 1
    return batches


@torch.no_grad()
def _evaluate(loss_module: LossModule, model, run: Prepared, state: TrainState, tracker: Tracker, world: World) -> bool:
    """Eval loss (and accuracy for classification) on the eval split; returns True when it is the best so far."""
    model.eval()
    loss_sum, count, correct, seen = 0.0, 0, 0, 0
    limit = run.config.train.eval_max_batches
    for n, indices in enumerate(run.eval_plan.epoch_batches(0)):
        if limit and n >= limit:
            break
        batch = {k: v.to(run.device) for k, v in run.eval_plan.collate(indices)[0].items()}
        with run.autocast():
            if run.objective == "classify":  # one forward gives both the loss and the accuracy
                logits = classifier_logits(model, batch).float()  # (B, C)
                loss, tokens = F.cross_entropy(logits, batch["labels"], reduction="sum"), batch["labels"].numel()
                correct += int((logits.argmax(-1) == batch["labels"]).sum())
                seen += int(batch["labels"].numel())
            else:
                loss, tokens = loss_module(batch)
        loss_sum, count = loss_sum + float(loss), count + int(tokens)
    model.train()
    record = {"step": state.step, "eval_loss": loss_sum / max(count, 1)}
    if seen:
        record["eval_accuracy"] = correct / seen
    # Lower loss is better; for classification, higher accuracy is what users care about.
    score = record["eval_accuracy"] if seen else record["eval_loss"]
    improved = state.best_metric is None or (score > state.best_metric if seen else score < state.best_metric)
    if improved:
        state.best_metric, state.best_step, state.evals_without_improvement = score, state.step, 0
    else:
        state.evals_without_improvement += 1
    state.history.append(record)
    tracker.log(record)
    return improved


def _check_stream(state: TrainState, plan, checkpoint: Path) -> None:
    """Refuse to resume a streamed run on another token stream: the saved position would point elsewhere."""
    wanted = plan.position()
    if state.stream != wanted:
        raise ConfigError("the checkpoint was made on another token stream", where=str(checkpoint),
                          found=f"{state.stream}", expected=f"{wanted}",
                          hint="The corpus, tokenizer, max_length or batch size changed since it was saved; set them "
                               "back, or start a new run (another --output, or --overwrite)")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode also fills every new tensor with NaN, to expose reads of memory nothing wrote (which no
    # kernel here does); that fill alone was a tenth of a CPU training step.
    torch.utils.deterministic.fill_uninitialized_memory = False


class _InterruptFlag:
    """Ctrl-C sets a flag; the loop finishes its step, checkpoints and returns."""

    def __init__(self) -> None:
        self.raised = False
        self._signals = 0

    def _handle(self, signum, frame) -> None:
        self._signals += 1
        if self._signals > 1:  # a second Ctrl-C means stop now
            raise KeyboardInterrupt
        self.raised = True

    def synced(self, world: World) -> bool:
        """Whether any process was interrupted, so that all of them stop after the same step."""
        if world.size > 1:
            (count,) = all_reduce_sum([float(self.raised)], world)
            self.raised = count > 0
        return self.raised

    @contextlib.contextmanager
    def installed(self):
        try:
            previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
