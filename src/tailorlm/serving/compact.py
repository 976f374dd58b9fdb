"""Half-precision weight storage for serving on the CPU: fp16 weights, fp32 arithmetic (fbgemm).

Decoding one token at a time reads every weight once per token, so on a CPU it is bound by memory bandwidth, not
arithmetic: SmolLM2-135M reads 540 MB of fp32 weights per token. `compact_weights` replaces each frozen `nn.Linear`
of a served model with `HalfLinear`, which keeps its weight packed in fp16 by fbgemm (the x86 kernel library PyTorch
ships) and multiplies fp32 activations with it, converting the weights as they stream in and accumulating in fp32.
Half the bytes per token, and fbgemm's kernel is also faster than the fp32 BLAS call for one row: on a 2-core AVX2
CPU the linear layers of SmolLM2-135M take about 10 ms per token instead of 33 (bench/serve.py measures the whole).

This is not exact: each weight is rounded to fp16 (11 significant bits). On SmolLM2-135M the next-token choice
agrees with fp32 on 99.9% of positions of real text and the loss is the same to four digits; greedy answers match
until the first near-tie. `tailor serve --weights fp32` keeps exact fp32.

What stays fp32: embeddings and norms (read one row, or tiny), adapter matrices (LoRA's A and B: small, and switched
per request), and the base layers under DoRA adapters, whose forward reads the base weight itself. Rows of a batch do
not affect one another (fbgemm computes each row on its own), so batched decoding gives each request the same tokens
as decoding it alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

WEIGHTS = ("fp16", "fp32")


class HalfLinear(nn.Module):
    """A frozen linear layer whose weight (and bias) fbgemm keeps packed in fp16; fp32 in, fp32 out."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = linear.bias.detach().float().contiguous() if linear.bias is not None else None
        self._packed = torch.ops.quantized.linear_prepack_fp16(linear.weight.detach().float().contiguous(), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        out = torch.ops.quantized.linear_dynamic_fp16(x.float().contiguous(), self._packed)
        return out if dtype == torch.float32 else out.to(dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The weight as it is used, fp16-rounded, in fp32 (for code that reads it; the forward never does)."""
        return torch.ops.quantized.linear_unpack_fp16(self._packed)[0]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weights=fp16 (fbgemm)"


def half_weights_supported() -> str | None:
    """None when this machine can run HalfLinear, else why not."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return "fp16 weight storage needs PyTorch's fbgemm kernels (x86 CPUs with AVX2); this build has none"
    try:
        probe = HalfLinear(nn.Linear(8, 4))
        probe(torch.ones(1, 8))
    except (RuntimeError, NotImplementedError) as err:
        return f"fp16 weight storage does not run on this CPU ({str(err).splitlines()[0] if str(err) else err})"
    return None


def compact_weights(model: nn.Module) -> int:
    """Replace the model's frozen base linear layers by HalfLinear in place; returns how many were replaced.

    Call it once every adapter the model serves is attached: adapter matrices stay fp32, and the base layers under a
    DoRA adapter keep their fp32 weight.
    """
    replaced = 0
    for parent in list(model.modules()):
        if _keeps_fp32(parent):
            continue
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and not _is_adapter_part(parent, name):
                setattr(parent, name, HalfLinear(child))
                replaced += 1
    return replaced


def _is_adapter_part(parent: nn.Module, name: str) -> bool:
    """Whether `parent.name` belongs to a peft adapter (LoRA's A and B live in ModuleDicts named lora_*)."""
    return name.startswith(("lora_", "ia3_", "vera_")) or isinstance(parent, nn.ModuleDict)


def _keeps_fp32(module: Any) -> bool:
    """A peft LoRA layer with a DoRA adapter: its forward reads the base layer's weight."""
    use_dora = getattr(module, "use_dora", None)
    return isinstance(use_dora, dict) and any(use_dora.values())


def check_weights(weights: str) -> None:
    """Refuse a `weights` setting that is not 'fp16' or 'fp32' (before any model is loaded)."""
    if weights not in WEIGHTS:
        from tailorlm.errors import ConfigError

        raise ConfigError("unknown weight storage", key="weights", found=repr(weights), expected=" or ".join(WEIGHTS))


def store_weights(model: nn.Module, weights: str) -> str | None:
    """Apply the `weights` setting ('fp16' or 'fp32') to a model that is about to generate; returns why fp16 was asked
    for and not applied on a CPU without fbgemm, else None. It is a CPU setting: a model on an accelerator keeps its
    dtype, without a note."""
    check_weights(weights)
    if weights == "fp32":
        return None
    if next(model.parameters()).device.type != "cpu":
        return None
    why = half_weights_supported()
    if why is None:
        compact_weights(model)
    return why
