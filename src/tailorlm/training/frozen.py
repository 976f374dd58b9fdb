"""Frozen linear layers kept in fp16 while an adapter trains on the CPU (`train.frozen_weights: fp16`).

Adapter methods (LoRA, IA3, prompt and prefix tuning), and `freeze` for the layers it leaves alone, do not change
the base model's frozen weights: those linear layers only multiply, forward (y = x Wᵀ) and backward (∂x = ∂y W). `use_half_frozen` replaces each frozen `nn.Linear` with
`FrozenHalfLinear`, which keeps W and Wᵀ packed in fp16 by fbgemm and multiplies fp32 activations with them,
accumulating in fp32: the same memory as one fp32 copy, and on this project's CPUs about twice the speed of the fp32
BLAS call for training-sized batches (`bench/train_throughput.py`). Activations, gradients, the adapter and its
optimizer stay fp32; the only change is that each frozen weight is rounded to fp16 (11 significant bits), milder
than QLoRA's 4-bit base or bf16 training on a GPU, which rounds the activations too.

Layers that are not replaced: anything trainable, the base layers under DoRA (its forward reads the weight), a
classification head's frozen original beside its trained copy, and the embeddings and output layer (read by row, and
by the chunked loss). `restore_frozen` puts the exact fp32 layers back from the model's own files before the
specialist is saved or evaluated, so the model in memory after training is the one a reload gives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tailorlm.serving.compact import half_weights_supported


class _HalfMatmul(torch.autograd.Function):
    """x Wᵀ with W packed in fp16, and its input gradient ∂y W; W itself gets no gradient (it is frozen)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, packed: Any, packed_t: Any) -> torch.Tensor:
        ctx.packed_t = packed_t
        return torch.ops.quantized.linear_dynamic_fp16(x.contiguous(), packed)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return torch.ops.quantized.linear_dynamic_fp16(grad_out.contiguous(), ctx.packed_t), None, None


class FrozenHalfLinear(nn.Module):
    """A frozen linear layer trained through: W and Wᵀ packed in fp16 (fbgemm), fp32 activations and gradients."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        bias = linear.bias.detach().float().contiguous() if linear.bias is not None else None
        self._packed = torch.ops.quantized.linear_prepack_fp16(weight.contiguous(), bias)
        self._packed_t = torch.ops.quantized.linear_prepack_fp16(weight.t().contiguous(), None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            return _HalfMatmul.apply(x.float(), self._packed, self._packed_t).to(x.dtype)
        return _HalfMatmul.apply(x, self._packed, self._packed_t)

    @property
    def weight(self) -> torch.Tensor:
        """The fp16-rounded weight in fp32 (for code that reads it; the forward never does)."""
        return torch.ops.quantized.linear_unpack_fp16(self._packed)[0]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, frozen, weights=fp16 (fbgemm)"


def half_frozen_applies(device: torch.device, frozen_weights: str) -> str | None:
    """None when `use_half_frozen` should run, else why not."""
    if frozen_weights == "fp32":
        return "train.frozen_weights is fp32"
    if device.type != "cpu":
        return "fp16 frozen weights are for the CPU (a GPU trains in bf16)"
    return half_weights_supported()


def use_half_frozen(model: nn.Module) -> int:
    """Replace every frozen base linear layer by FrozenHalfLinear in place; returns how many were replaced."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = core.get_output_embeddings() if hasattr(core, "get_output_embeddings") else None
    replaced = 0
    for parent in list(model.modules()):
        if _keeps_own(parent):
            continue
        for name, child in list(parent.named_children()):
            if child is head:  # the output layer: the chunked loss reads its weight
                continue
            if type(child) is nn.Linear and not child.weight.requires_grad and (
                    child.bias is None or not child.bias.requires_grad):
                setattr(parent, name, FrozenHalfLinear(child))
                replaced += 1
    return replaced


def restore_frozen(model: nn.Module, load_base: Callable[[], nn.Module]) -> int:
    """Put the exact fp32 layers back where `use_half_frozen` put fp16 ones, from a fresh load of the base model
    (`load_base()`, which builds it as training did); returns how many."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    replaced = [(name, module) for name, module in base.named_modules() if isinstance(module, FrozenHalfLinear)]
    if not replaced:
        return 0
    fresh = load_base()
    for name, _ in replaced:
        original = fresh.get_submodule(".".join(p for p in name.split(".") if p != "base_layer"))
        if not isinstance(original, nn.Linear):
            raise RuntimeError(f"cannot restore {name}: the reloaded base model has {type(original).__name__} there")
        original.requires_grad_(False)
        parent_name, _, child = name.rpartition(".")
        setattr(base.get_submodule(parent_name) if parent_name else base, child, original)
    return len(replaced)


def _keeps_own(module: Any) -> bool:
    """Modules whose frozen linear layers stay as they are: a LoRA layer with DoRA (its forward reads the base
    weight), and peft's wrapper of a trained head (its frozen original is not in the base model's files)."""
    use_dora = getattr(module, "use_dora", None)
    if isinstance(use_dora, dict) and any(use_dora.values()):
        return True
    return type(module).__name__ == "ModulesToSaveWrapper"
