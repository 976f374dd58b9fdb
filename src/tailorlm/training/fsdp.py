"""FSDP (PyTorch's `fully_shard`): parameters, gradients and optimizer state split across the training processes.

Each transformer block is one FSDP unit, and the `LossModule` around the model is the root unit, which holds the
rest (embeddings, final norm, output head). The root is the loss module rather than the model because the chunked
loss (training/loss.py) reads the output head's weight outside the head's forward: FSDP gathers a unit's weights
for its forward only, so the loss has to be computed inside the root's forward to see the whole head.

Checkpoints and the specialist hold whole tensors, exactly as a 1-process or DDP run writes them: every process
takes part in gathering the shards and the main process writes. Loading goes the other way: every process reads
the whole tensors and keeps its own shard (`shard_like`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from tailorlm.training.distributed import World


def shard(loss_module: nn.Module, world: World, device_type: str) -> nn.Module:
    """Apply FSDP to each transformer block, then to the loss module as the root (in place; returns it).

    Call before building the optimizer, which must hold the sharded parameters.
    """
    from tailorlm.training.loss import unwrap_model

    mesh = init_device_mesh(device_type, (world.size,))
    for block in transformer_blocks(unwrap_model(loss_module.model)):
        fully_shard(block, mesh=mesh)
    fully_shard(loss_module, mesh=mesh)
    return loss_module


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks (decoder layers, encoder layers, T5 blocks), outermost first.

    transformers names them in `_no_split_modules` (what must stay on one device); a model without that list gets
    the children of its longest `nn.ModuleList`.
    """
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks: dict[str, nn.Module] = {}
    for path, module in model.named_modules():
        inside = any(path.startswith(outer + ".") for outer in blocks)
        if type(module).__name__ in names and not inside:
            blocks[path] = module
    if blocks:
        return list(blocks.values())
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


@contextlib.contextmanager
def whole_root(module: nn.Module) -> Iterator[None]:
    """Keep the root unit's weights gathered, for code that calls the model without going through the root."""
    if not isinstance(module, FSDPModule):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind an FSDP shard (a collective: every process must call it); any other tensor as is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard_like(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This process's shard of a whole `tensor`, laid out as `like` (an FSDP parameter); `tensor` itself otherwise.

    Every process has read the same whole tensor, so each keeps its own part without communicating.
    """
    if not isinstance(like, DTensor):
        return tensor
    return distribute_tensor(tensor.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None)


def gather_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer,
                      world: World) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Whole trainable parameters and optimizer state, in `save_checkpoint`'s format (a collective).

    The main process gets them on the CPU; the others get empty ones and keep no copy. Only trainable parameters
    are gathered (for LoRA, the adapters and not the frozen base model).
    """
    def keep(tensor: torch.Tensor) -> torch.Tensor | None:
        full = whole(tensor.detach())
        return full.cpu() if world.main else None

    trainable = {name: keep(p) for name, p in model.named_parameters() if p.requires_grad}
    optimizer_state = optimizer.state_dict()  # {"state": {index: {name: tensor}}, "param_groups": [...]}
    optimizer_state["state"] = {index: {key: keep(value) if torch.is_tensor(value) else value
                                        for key, value in values.items()}
                                for index, values in optimizer_state["state"].items()}
    if not world.main:
        return {}, {"state": {}, "param_groups": []}
    return trainable, optimizer_state


def shard_optimizer_state(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """A whole optimizer state dict with each per-parameter tensor cut to this process's shard of its parameter."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {index: {key: shard_like(value, params[index]) if _shaped_like(value, params[index]) else value
                     for key, value in values.items()}
             for index, values in state_dict["state"].items()}
    return {**state_dict, "state": state}


def gather_model(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model state dict on the main process's CPU, for `save_pretrained` (a collective; empty elsewhere).

    Tied parameters (an output head that shares the input embeddings) come back as one tensor under each name, as
    in `model.state_dict()`, so transformers recognises the tie and writes it once.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not state:
        return state
    names_of: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
    for names in names_of.values():
        present = [name for name in names if name in state]
        for name in present[1:]:
            state[name] = state[present[0]]
    return state


def _shaped_like(value: Any, param: torch.Tensor) -> bool:
    """Whether an optimizer state entry is per element of its parameter (AdamW's moments; not its step count)."""
    return torch.is_tensor(value) and isinstance(param, DTensor) and tuple(value.shape) == tuple(param.shape)
