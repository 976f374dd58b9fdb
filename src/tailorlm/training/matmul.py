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

A peft LoRA layer is swapped as a whole: peft computes y = base(x) + B(A(x)) · s as three products and, over the
(tokens, out) output, a scaling, a sum and, in the backward, the scaling's gradient and a second ∂x to add.
`_OneDnnLora` gives the same y and gradients with the scale applied to the (tokens, r) product s x Aᵀ and both
rank-r products added in place into the big ones (addmm with β = 1), so no full-size temporary is made. Measured in
`bench/train_throughput.py`'s LoRA setup: about 170 MB less peak memory, the same speed within the run-to-run noise.
Layers with dropout, DoRA, a LoRA bias, several active adapters, merged weights, hooks on their parts or another
adapter's layer beneath keep peft's forward.
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
from torch.nn.modules import module as torch_module

_SWAPPED = "_tailorlm_onednn_linear"
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
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


def fp32_cpu(*tensors: torch.Tensor | None) -> bool:
    """Whether every tensor given (None counts as fitting) is a dense fp32 CPU tensor, what oneDNN's fp32 products
    and tailorlm's CPU kernels take."""
    return all(t is None or (t.dtype == torch.float32 and t.device.type == "cpu" and t.layout == torch.strided)
               for t in tensors)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """A 2-D operand as oneDNN reads it fast: itself when it is contiguous or the transpose of a contiguous matrix,
    else a contiguous copy. oneDNN takes a slow path for other strides (measured here: a (576, 512) transposed slice
    with rows 1152 apart took 5.9 s as a weight where its contiguous copy took 2 ms)."""
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def _lin(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ bᵀ (+ bias) through oneDNN; a and b 2-D fp32 CPU tensors."""
    return torch.ops.mkldnn._linear_pointwise(_dense(a), _dense(b), bias, "none", [], "")


def mm_t(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ bᵀ (+ bias) for 2-D fp32 CPU tensors of any strides, through oneDNN; other tensors go through PyTorch."""
    if not fp32_cpu(a, b, bias) or onednn_unavailable() is not None:
        return F.linear(a, b, bias)
    return _lin(a, b, bias)


def _weight_grad(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """∂W = ∂yᵀ x: through oneDNN, or MKL for a narrow product (a LoRA B factor, r columns), which is faster there."""
    return _lin(grad_out.t(), x.t()) if x.shape[1] >= _NARROW else torch.mm(grad_out.t(), x)


class _OneDnnLinear(torch.autograd.Function):
    """y = x Wᵀ + b with all three products through oneDNN; x is 2-D."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight)
        ctx.has_bias = bias is not None
        return _lin(x, weight, bias)

    @staticmethod
    @once_differentiable  # oneDNN's kernel has no derivative of its own: a second-order gradient is refused
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _lin(grad_out, weight.t())  # ∂y W
        if ctx.needs_input_grad[1]:
            grad_weight = _weight_grad(grad_out, x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(0)
        return grad_x, grad_weight, grad_bias


class _OneDnnLora(torch.autograd.Function):
    """y = x Wᵀ + b + s (x Aᵀ) Bᵀ for a peft LoRA layer (no dropout): the big products through oneDNN, the rank-r
    ones added in place; x is 2-D, W the base weight as (out, in)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, scale: float) -> torch.Tensor:
        y = _lin(x, weight, bias)
        t = _lin(x, lora_a).mul_(scale)  # (N, r): s x Aᵀ
        y.addmm_(t, lora_b.t())  # + s (x Aᵀ) Bᵀ, in place
        keep_x = ctx.needs_input_grad[1] or ctx.needs_input_grad[3]
        ctx.save_for_backward(x if keep_x else None, t, weight, lora_a, lora_b)
        ctx.has_bias, ctx.scale = bias is not None, scale
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, t, weight, lora_a, lora_b = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_x = grad_weight = grad_bias = grad_a = grad_b = None
        u = _lin(grad_out, lora_b.t()).mul_(ctx.scale) if needs[0] or needs[3] else None  # (N, r): s ∂y B
        if needs[0]:
            grad_x = _lin(grad_out, weight.t())  # ∂y W
            grad_x.addmm_(u, lora_a)  # + s ∂y B A
        if needs[1]:
            grad_weight = _weight_grad(grad_out, x)
        if ctx.has_bias and needs[2]:
            grad_bias = grad_out.sum(0)
        if needs[3]:
            grad_a = _lin(u.t(), x.t())  # (r, in): uᵀ x
        if needs[4]:
            # (out, r) as the transpose of tᵀ ∂y: oneDNN is fastest with the r rows as the output's rows (1536
            # outputs: 80 µs, where MKL's ∂yᵀ t takes 250 µs and oneDNN's 370 µs)
            grad_b = _lin(t.t(), grad_out.t()).t().contiguous()
        return grad_x, grad_weight, grad_bias, grad_a, grad_b, None


def onednn_linear_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An nn.Linear's or transformers Conv1D's forward through oneDNN for fp32 CPU tensors (anything else, and an
    empty input, which oneDNN refuses, takes the layer's own path)."""
    weight = _out_in(self)
    if not fp32_cpu(x, weight, self.bias) or x.dim() == 0 or x.numel() == 0:
        return type(self).forward(self, x)
    flat = x.reshape(-1, x.shape[-1])
    return _OneDnnLinear.apply(flat, weight, self.bias).reshape(*x.shape[:-1], weight.shape[0])


def _out_in(layer: nn.Module) -> torch.Tensor | None:
    """The weight of an nn.Linear or transformers' Conv1D (GPT-2's linear layer, which stores (in, out)) as (out, in);
    None for any other module."""
    if type(layer) is nn.Linear:
        return layer.weight
    if type(layer).__name__ == "Conv1D" and type(layer).__module__.startswith("transformers.") and isinstance(
            getattr(layer, "weight", None), torch.Tensor) and layer.weight.dim() == 2:
        return layer.weight.t()
    return None


def onednn_lora_forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """A peft LoRA layer's forward through `_OneDnnLora` where it is plain LoRA on fp32 CPU tensors, else peft's."""
    parts = None if args or kwargs else _plain_lora(self, x)
    if parts is None:
        return type(self).forward(self, x, *args, **kwargs)
    weight, bias, lora_a, lora_b, scale = parts
    flat = x.reshape(-1, x.shape[-1])
    return _OneDnnLora.apply(flat, weight, bias, lora_a, lora_b, scale).reshape(*x.shape[:-1], weight.shape[0])


def _plain_lora(layer: nn.Module, x: torch.Tensor) -> tuple[Any, ...] | None:
    """(W as (out, in), bias, A, B, scale) of a LoRA layer whose forward is one adapter's x Wᵀ + b + s (x Aᵀ) Bᵀ,
    or None (adapters off or merged, several adapters, dropout, a LoRA variant such as DoRA, a LoRA bias, hooks on
    its parts, or a base that is not a plain linear layer)."""
    if layer.disable_adapters or layer.merged or x.dim() == 0 or x.numel() == 0:
        return None
    names = [name for name in layer.active_adapters if name in layer.lora_A.keys()]
    if len(names) != 1 or names[0] in getattr(layer, "lora_variant", {}):
        return None
    name = names[0]
    lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
    if not isinstance(layer.lora_dropout[name], nn.Identity) or type(lora_a) is not nn.Linear or type(
            lora_b) is not nn.Linear or lora_a.bias is not None or lora_b.bias is not None:
        return None
    base = layer.base_layer  # the layer right under it: another adapter's layer (peft's mixed models) is not fused
    if not all(_plain_call(m) for m in (base, lora_a, lora_b)):
        return None
    weight = _out_in(base)
    if weight is None:
        return None
    bias = base.bias
    if not fp32_cpu(x, weight, bias, lora_a.weight, lora_b.weight) or not isinstance(layer.scaling[name], float | int):
        return None
    return weight, bias, lora_a.weight, lora_b.weight, float(layer.scaling[name])


def _plain_call(module: nn.Module) -> bool:
    """Whether calling the module runs only its own (or oneDNN's) forward: no hooks, no one else's forward. The fused
    LoRA layer reads these modules' weights without calling them, which is only the same where this holds."""
    if any(getattr(module, name, None) for name in _HOOKS) or any(
            getattr(torch_module, f"_global{name}", None) for name in _HOOKS):
        return False
    return "forward" not in module.__dict__ or uses_onednn(module)


def _is_lora_linear(module: nn.Module) -> bool:
    """peft's LoRA wrapper of a linear layer (`peft.tuners.lora.Linear`, not its quantised or variant relatives)."""
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:  # peft absent: no LoRA layers to find
        return False
    return type(module) is LoraLinear


def _swappable(module: nn.Module) -> Any:
    """The oneDNN forward for this module, or None: nn.Linear itself, transformers' Conv1D (GPT-2) and peft's LoRA
    wrapper of either."""
    if "forward" in module.__dict__:  # someone's own forward already
        return None
    if _is_lora_linear(module):
        return onednn_lora_forward
    return None if _out_in(module) is None else onednn_linear_forward


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
        if forward is None or not fp32_cpu(module.weight, getattr(module, "bias", None)):  # a LoRA layer: its base's
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
