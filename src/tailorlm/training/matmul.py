"""fp32 matrix multiplications through oneDNN on the CPU (`train.cpu_matmul: onednn`, the default).

PyTorch sends an fp32 `F.linear` or `mm` on the CPU to MKL's sgemm. On AMD CPUs MKL runs its AVX2 code even where
the CPU has AVX-512, while oneDNN (shipped inside PyTorch as mkldnn) picks its kernels by the instruction sets it
finds: on this project's 2-core AMD EPYC with AVX-512, the linear layers of a SmolLM2 training step multiply at about
480 GFLOP/s through oneDNN against 215 through MKL (`bench/train_throughput.py` measures both). On a CPU where MKL
already uses everything the CPU has, the two are about equal.

The arithmetic is the same: fp32 inputs, fp32 weights, fp32 accumulation; results differ from MKL's only by the order
of the sums (a few units in the last place), and a oneDNN run is as deterministic as an MKL run (same threads, same
result, bit for bit).

`use_onednn_linear` swaps the forward of every fp32 `nn.Linear` (and transformers' `Conv1D`, GPT-2's linear layer) of
a model on the CPU for one that multiplies through oneDNN in the forward and in both backward products (∂x = ∂y W,
∂W = ∂yᵀ x); parameters, state dicts and peft wrappers stay as they are. `restore_linear` undoes it. `onednn_linear`
does both around a block (evaluation runs its forward passes and greedy decoding inside one). `mm_t` is the same
product for code that multiplies a weight itself (the chunked loss's output layer).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

_SWAPPED = "_tailorlm_onednn_linear"
_NARROW = 64
"""∂W of a weight with fewer input features than this goes through MKL: oneDNN copies the transposed ∂y first, which
costs more than it saves when the product has a few columns (measured: 2-4 times slower for r = 16)."""


def onednn_unavailable() -> str | None:
    """None when oneDNN's fp32 linear kernel can be used here, else why not."""
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN (mkldnn)"
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return "this PyTorch build lacks torch.ops.mkldnn._linear_pointwise"
    return None


def _fits(*tensors: torch.Tensor | None) -> bool:
    return all(t is None or (t.dtype == torch.float32 and t.device.type == "cpu" and t.layout == torch.strided)
               for t in tensors)


def mm_t(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ bᵀ (+ bias) for 2-D fp32 CPU tensors of any strides, through oneDNN; other tensors go through PyTorch."""
    if not _fits(a, b, bias) or onednn_unavailable() is not None:
        return F.linear(a, b, bias)
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


class _OneDnnLinear(torch.autograd.Function):
    """y = x Wᵀ + b with all three products through oneDNN; x is 2-D."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    @once_differentiable  # oneDNN's kernel has no derivative of its own: a second-order gradient is refused
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.mkldnn._linear_pointwise(grad_out, weight.t(), None, "none", [], "")  # ∂y W
        if ctx.needs_input_grad[1] and weight.shape[1] >= _NARROW:
            grad_weight = torch.ops.mkldnn._linear_pointwise(grad_out.t(), x.t(), None, "none", [], "")  # ∂yᵀ x
        elif ctx.needs_input_grad[1]:  # a narrow product (a LoRA B factor, r columns): MKL is faster there
            grad_weight = torch.mm(grad_out.t(), x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(0)
        return grad_x, grad_weight, grad_bias


def onednn_linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear's forward through oneDNN for fp32 CPU tensors (anything else takes nn.Linear's own path)."""
    if not _fits(x, self.weight, self.bias) or x.dim() == 0 or x.numel() == 0:  # oneDNN refuses empty products
        return F.linear(x, self.weight, self.bias)
    flat = x.reshape(-1, x.shape[-1])
    return _OneDnnLinear.apply(flat, self.weight, self.bias).reshape(*x.shape[:-1], self.out_features)


def onednn_conv1d_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' Conv1D (GPT-2's linear layer, weight stored as (in, out)) through oneDNN, as above."""
    if not _fits(x, self.weight, self.bias) or x.dim() == 0 or x.numel() == 0:
        return type(self).forward(self, x)
    flat = x.reshape(-1, x.shape[-1])
    return _OneDnnLinear.apply(flat, self.weight.t(), self.bias).reshape(*x.shape[:-1], self.weight.shape[1])


def _swappable(module: nn.Module) -> Any:
    """The oneDNN forward for this module, or None: nn.Linear itself, and transformers' Conv1D (GPT-2)."""
    if "forward" in module.__dict__:  # someone's own forward already
        return None
    if type(module) is nn.Linear:
        return onednn_linear_forward
    if type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers.") and isinstance(
            getattr(module, "weight", None), torch.Tensor) and module.weight.dim() == 2:
        return onednn_conv1d_forward
    return None


def use_onednn_linear(model: nn.Module) -> int:
    """Swap the forward of every fp32 nn.Linear on the CPU for the oneDNN one; returns how many were swapped."""
    return len(_swap(model))


@contextlib.contextmanager
def onednn_linear(model: nn.Module | None) -> Iterator[int]:
    """Multiply the model's fp32 CPU linear layers through oneDNN inside the block (for inference: evaluation); the
    layers it swapped get their own forward back after it. Yields how many were swapped."""
    swapped = _swap(model)
    try:
        yield len(swapped)
    finally:
        for module in swapped:
            _unswap(module)


def _swap(model: nn.Module | None) -> list[nn.Module]:
    if not isinstance(model, nn.Module) or onednn_unavailable() is not None:  # a fake or absent model: nothing to do
        return []
    swapped = []
    for module in model.modules():
        forward = _swappable(module)
        if forward is None or not _fits(module.weight, getattr(module, "bias", None)):
            continue
        setattr(module, _SWAPPED, True)
        module.forward = types.MethodType(forward, module)  # an instance attribute over the class's
        swapped.append(module)
    return swapped


def _unswap(module: nn.Module) -> None:
    module.__dict__.pop("forward", None)
    module.__dict__.pop(_SWAPPED, None)


def uses_onednn(module: nn.Module) -> bool:
    """Whether `use_onednn_linear` swapped this layer's forward (its own attribute: peft wrappers pass lookups on)."""
    return _SWAPPED in module.__dict__


def restore_linear(model: nn.Module) -> None:
    """Give every swapped linear layer nn.Linear's own forward back."""
    for module in model.modules():
        if uses_onednn(module):
            _unswap(module)
