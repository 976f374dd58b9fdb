"""Checkpoints that resume exactly: trainable weights, optimizer, scheduler, RNG states and the data position.

Everything is written as safetensors plus JSON (no pickle), into a temporary folder that is renamed into place,
so a checkpoint folder either exists whole or not at all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step-(\d+)$")


@dataclass
class TrainState:
    """Where the loop is: enough, with the tensors, to continue as if never stopped."""

    step: int = 0
    epoch: int = 0
    batch_index: int = 0
    """Index of the next micro-batch within the epoch's fixed order."""
    tokens_seen: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    elapsed_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    stream: dict[str, Any] | None = None
    """For a run streamed from a token cache: which cache, block length and block range (epoch and batch_index
    are the position in it); a resume refuses a different stream. None for examples held in memory."""
    perplexity_before: dict[str, float] | None = None
    """The forgetting check's perplexities before the first step, kept so that a resumed run reports them."""


def checkpoint_dir(output: Path, step: int) -> Path:
    return output / CHECKPOINTS / f"step-{step:07d}"


def list_checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
    root = output / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / "state.json").is_file()]
    return [p for _, p in sorted(found)]


def save_checkpoint(output: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    state: TrainState, *, keep_last: int,
                    whole: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None) -> Path:
    """Write a checkpoint atomically, then drop old ones beyond `keep_last` (never the best one).

    `whole` gives the trainable parameters and optimizer state to write when the model and optimizer hold only
    shards of them (FSDP gathers them first, training/fsdp.py); by default they are read from the two directly.
    """
    trainable, optimizer_state = whole or (trainable_state(model), optimizer.state_dict())
    final = checkpoint_dir(output, state.step)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        save_file(_contiguous(trainable), str(tmp / "trainable.safetensors"))
        tensors, groups = _flatten_optimizer(optimizer_state)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        rng_tensors, rng_json = _rng_state()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        _write_json(tmp / "state.json", {
            "train_state": dataclasses.asdict(state),
            "optimizer_param_groups": groups,
            "scheduler": scheduler.state_dict(),
            "rng": rng_json,
        })
        if final.exists():  # re-saving a step: the old copy is deleted only once the new one is in place
            old = final.parent / f".tmp-old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(output, keep_last=keep_last, best_step=state.best_step)
    return final


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> TrainState:
    """Restore everything `save_checkpoint` wrote, in place, and return the loop state.

    Under FSDP every process calls this and keeps its own shard of each tensor.
    """
    from tailorlm.training.fsdp import shard_optimizer_state

    meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    load_trainable(model, path / "trainable.safetensors")
    optimizer_state = _unflatten_optimizer(load_file(str(path / "optimizer.safetensors")),
                                           meta["optimizer_param_groups"])
    optimizer.load_state_dict(shard_optimizer_state(optimizer, optimizer_state))
    scheduler.load_state_dict(meta["scheduler"])
    _set_rng_state(load_file(str(path / "rng.safetensors")), meta["rng"])
    return TrainState(**meta["train_state"])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train, by name (tied parameters once)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, file: Path) -> None:
    """Copy saved trainable parameters into the model (or this process's shards of them, under FSDP), refusing a
    checkpoint made for other parameters."""
    from tailorlm.training.fsdp import shard_like

    saved = load_file(str(file))
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(saved) != expected:
        missing, extra = sorted(expected - set(saved))[:3], sorted(set(saved) - expected)[:3]
        from tailorlm.errors import TailorError

        raise TailorError("the checkpoint was made for a different model or method", where=str(file),
                          found=f"missing {missing}, unexpected {extra}", expected="the same model, method and settings")
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(shard_like(tensor, params[name]))


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.contiguous().cpu() for k, v in tensors.items()}


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors = {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            tensors[f"{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return _contiguous(tensors), state_dict["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return tensors, {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }


def _set_rng_state(tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = data["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = data["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _prune(output: Path, *, keep_last: int, best_step: int | None) -> None:
    found = list_checkpoints(output)
    keep = set(found[-keep_last:])
    if best_step is not None:
        keep.add(checkpoint_dir(output, best_step))
    for path in found:
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)
    for stale in (output / CHECKPOINTS).glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, default=_json_default), encoding="utf-8")


def _json_default(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
