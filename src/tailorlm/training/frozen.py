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
    if replaced:
        _own_memory(model)
    return replaced


def _own_memory(model: nn.Module) -> None:
    """Copy the parameters that stay into memory of their own: a model loaded from safetensors holds views of the
    mapped file, and the whole mapping (all of the fp32 weights just replaced) stays resident while one view is left."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.data = parameter.data.clone()


def restore_frozen(model: nn.Module, model_path: str, load_base: Callable[[], nn.Module]) -> int:
    """Put the exact fp32 layers back where `use_half_frozen` put fp16 ones; returns how many.

    The weights are read one layer at a time from the model's safetensors files in `model_path`, each replacing its
    fp16 copy, so restoring needs no memory beyond what training had. Where a layer's weight is not found under its
    name there (an unusual checkpoint layout), the base model is built again with `load_base()` and the layers are
    taken from it.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    replaced = [name for name, module in base.named_modules() if isinstance(module, FrozenHalfLinear)]
    if not replaced:
        return 0
    plain = {name: ".".join(p for p in name.split(".") if p != "base_layer") for name in replaced}
    reader = _CheckpointReader(model_path)
    keys = {name: reader.key(f"{path}.weight") for name, path in plain.items()}
    if all(keys.values()):
        for name in replaced:
            half = base.get_submodule(name)
            weight = reader.tensor(keys[name])
            bias_key = reader.key(f"{plain[name]}.bias")
            linear = nn.Linear(half.in_features, half.out_features, bias=bias_key is not None)
            with torch.no_grad():
                linear.weight.copy_(weight)
                if bias_key is not None:
                    linear.bias.copy_(reader.tensor(bias_key))
            _put(base, name, linear.requires_grad_(False))
        return len(replaced)
    fresh = load_base()
    for name in replaced:
        original = fresh.get_submodule(plain[name])
        if not isinstance(original, nn.Linear):
            raise RuntimeError(f"cannot restore {name}: the reloaded base model has {type(original).__name__} there")
        _put(base, name, original.requires_grad_(False))
    return len(replaced)


def _put(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


class _CheckpointReader:
    """Tensors of a model folder's safetensors files by name, read one at a time (a module path may carry the
    model's base prefix that a base checkpoint's keys lack, such as `bert.` in a classifier built on BERT)."""

    def __init__(self, folder: str) -> None:
        from pathlib import Path

        from safetensors import safe_open

        self.files: dict[str, Any] = {}
        for path in sorted(Path(folder).glob("*.safetensors")) if folder else []:
            handle = safe_open(str(path), framework="pt")
            for key in handle.keys():
                self.files[key] = handle

    def key(self, name: str) -> str | None:
        if name in self.files:
            return name
        rest = name.split(".", 1)[1] if "." in name else None
        return rest if rest in self.files else None

    def tensor(self, key: str) -> torch.Tensor:
        return self.files[key].get_tensor(key).float()


def _keeps_own(module: Any) -> bool:
    """Modules whose frozen linear layers stay as they are: a LoRA layer with DoRA (its forward reads the base
    weight), and peft's wrapper of a trained head (its frozen original is not in the base model's files)."""
    use_dora = getattr(module, "use_dora", None)
    if isinstance(use_dora, dict) and any(use_dora.values()):
        return True
    return type(module).__name__ == "ModulesToSaveWrapper"
