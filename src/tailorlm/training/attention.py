"""Attention for packed rows that skips the work between examples.

With packing, transformers turns restarting position ids into a block-diagonal mask, and SDPA then computes every
(query, key) pair of the row and masks most of them away: a 512-token row of two 256-token examples costs four
times the attention arithmetic it needs, and no causal block can be skipped. `packed_sdpa` instead runs causal
SDPA on each example's span alone, which gives the same result (tested) with a fraction of the work.

On the CPU in fp32, `packed_kernel` goes further with tailorlm's compiled kernel (training/cpu_kernels.py,
`train.cpu_kernels`, on by default): one call per layer for all examples of the batch, each example's causal
blocks multiplied by oneDNN's small-matrix kernels (AVX-512 where there is one), the softmax kept in cache, threads
balanced over examples. PyTorch's CPU flash attention multiplies 32- or 64-row blocks through MKL, which runs AVX2
code on AMD CPUs; on rows of SmolLM2-135M's shape packed from MedQuAD, the kernel's forward and backward together
take a third of its time (2.5 against 7.9 ms per 512-token row and layer, bench/README.md). Where the kernel cannot
be built (no compiler), training says so once and keeps `packed_sdpa`.

Both are registered with transformers' attention interface (`ATTENTION`, `KERNEL_ATTENTION`); `use_packed_attention`
switches a model to one, and `restore_attention` switches back before the model is saved or used for generation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tailorlm.training.cpu_kernels import cpu_kernels
from tailorlm.training.matmul import fp32_cpu

ATTENTION = "tailorlm_packed_sdpa"
KERNEL_ATTENTION = "tailorlm_packed_kernel"
PACKED = (ATTENTION, KERNEL_ATTENTION)
_SDPA_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")  # torch 2.5 and later
_SPANS = "_tailorlm_spans"  # attribute of a position-id tensor: (its version, its spans)
_registered = False


def packed_sdpa(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                **kwargs) -> tuple[torch.Tensor, None]:
    """Causal attention per example span, found where `position_ids` restart at 0; (B, T, heads, D) out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    if (attention_mask is not None or query.shape[2] == 1 or key.shape[2] != query.shape[2]
            or not _packed_positions(position_ids, query)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    gqa = {}
    if groups > 1 and _SDPA_GQA:
        gqa = {"enable_gqa": True}  # the kernel reads each key-value head for its group: no repeated copies to keep
    elif groups > 1:  # (B, kv_heads, T, D) -> (B, heads, T, D)
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    batch, heads, width, dim = query.shape
    output = query.new_empty(batch, width, heads, dim)  # (B, T, heads, D): the layout the caller wants, no copy after
    heads_first = output.transpose(1, 2)  # (B, heads, T, D) view of it
    for row, (starts, ends) in enumerate(_row_spans(position_ids, batch)):
        for start, end in zip(starts, ends):
            heads_first[row:row + 1, :, start:end] = F.scaled_dot_product_attention(
                query[row:row + 1, :, start:end], key[row:row + 1, :, start:end], value[row:row + 1, :, start:end],
                dropout_p=dropout if module.training else 0.0, scale=scaling, is_causal=True, **gqa,
            )
    return output, None


def packed_kernel(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                  **kwargs) -> tuple[torch.Tensor, None]:
    """`packed_sdpa`'s result through the compiled kernel where it applies (fp32 CPU tensors, no dropout)."""
    position_ids = kwargs.get("position_ids")
    if not _kernel_fits(query, key, value, attention_mask, position_ids, dropout and module.training) \
            or cpu_kernels() is None:
        return packed_sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else float(scaling)
    return _KernelAttention.apply(query, key, value, _span_table(position_ids, query.shape[0]), scale), None


def _kernel_fits(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
                 position_ids: torch.Tensor | None, dropout: bool) -> bool:
    """Whether the kernel computes this call: packed fp32 CPU rows with (B, T) or (1, T) position ids, key and value
    of the query's shape but for their heads, and no mask, cache or dropout."""
    batch, heads, width, dim = query.shape
    return (attention_mask is None and not dropout and _packed_positions(position_ids, query) and width > 1
            and fp32_cpu(query, key, value)
            and key.shape == value.shape and key.shape[0] == batch and key.shape[2] == width
            and key.shape[3] == dim and key.shape[1] > 0 and heads % key.shape[1] == 0)


def _packed_positions(position_ids: torch.Tensor | None, query: torch.Tensor) -> bool:
    """Whether `position_ids` can mark the examples of the query's rows: (B, T) or (1, T), T the rows' width."""
    return (position_ids is not None and position_ids.dim() == 2 and position_ids.shape[0] in (1, query.shape[0])
            and position_ids.shape[1] == query.shape[2])


class _KernelAttention(torch.autograd.Function):
    """Causal attention per span: (B, heads, T, D) query and (B, kv_heads, T, D) key and value in, (B, T, heads, D)
    out. The kernel saves only each row's log-sum-exp and recomputes the probabilities in the backward."""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, spans: torch.Tensor,
                scale: float) -> torch.Tensor:
        # (B, T, heads, D) memory, which is how the projections lay them out: no copy in the usual case.
        query, key, value = (x.transpose(1, 2).contiguous() for x in (query, key, value))
        output, lse = cpu_kernels().attention_forward(query, key, value, spans, scale)
        ctx.save_for_backward(query, key, value, output, lse, spans)
        ctx.scale = scale
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        query, key, value, output, lse, spans = ctx.saved_tensors
        grads = cpu_kernels().attention_backward(grad_output.contiguous(), query, key, value, output, lse, spans,
                                                 ctx.scale)
        grad_query, grad_key, grad_value = (g.transpose(1, 2) for g in grads)  # back to (B, heads, T, D)
        return grad_query, grad_key, grad_value, None, None


def _span_table(position_ids: torch.Tensor, batch: int) -> torch.Tensor:
    """(N, 3) int64 (row, start, end) of every example of every row, for the kernel."""
    rows = _row_spans(position_ids, batch)
    table = [(row, start, end) for row, (starts, ends) in enumerate(rows) for start, end in zip(starts, ends)]
    return torch.tensor(table, dtype=torch.long)


def _row_spans(position_ids: torch.Tensor, batch: int) -> list[tuple[list[int], list[int]]]:
    """`_spans` for each of `batch` rows; (1, T) position ids stand for every row."""
    spans = _spans(position_ids)
    return spans * batch if len(spans) == 1 else spans


def _spans(position_ids: torch.Tensor) -> list[tuple[list[int], list[int]]]:
    """(starts, ends) of each row's examples: a span starts at the row's first token and wherever the position is 0.

    Every layer of a forward gets the same position-id tensor, so the spans are kept on it (with its version, which
    an in-place change bumps) and found once per forward rather than once per layer."""
    cached = getattr(position_ids, _SPANS, None)
    if cached is not None and cached[0] == position_ids._version:
        return cached[1]
    spans = _find_spans(position_ids)
    setattr(position_ids, _SPANS, (position_ids._version, spans))
    return spans


def _find_spans(position_ids: torch.Tensor) -> list[tuple[list[int], list[int]]]:
    position_ids = position_ids.reshape(-1, position_ids.shape[-1])
    width = position_ids.shape[-1]
    result = []
    for row in position_ids.cpu():
        starts = (row == 0).nonzero().flatten().tolist()
        if not starts or starts[0] != 0:
            starts = [0] + starts
        result.append((starts, starts[1:] + [width]))
    return result


def _mask(*args, **kwargs) -> torch.Tensor | None:
    """No mask for packed or plain causal rows (the spans come from position ids); SDPA's own mask for padding."""
    from transformers.masking_utils import sdpa_mask

    if kwargs.get("attention_mask") is None:
        return None
    return sdpa_mask(*args, **kwargs)


def use_packed_attention(model: nn.Module, *, kernel: bool = False) -> bool:
    """Switch a decoder that uses SDPA to `packed_sdpa`, or with `kernel` to `packed_kernel` (which builds the
    kernel now, so a build failure shows before training); returns False (and changes nothing) for other models."""
    global _registered
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    config = getattr(model, "config", None)
    if config is None or config.is_encoder_decoder:
        return False
    if getattr(config, "_attn_implementation", None) not in ("sdpa", *PACKED):
        return False
    if not _registered:
        for name, function in ((ATTENTION, packed_sdpa), (KERNEL_ATTENTION, packed_kernel)):
            AttentionInterface.register(name, function)
            AttentionMaskInterface.register(name, _mask)
        _registered = True
    if kernel:
        cpu_kernels()  # built now, so that a build failure shows before training
    model.set_attn_implementation(KERNEL_ATTENTION if kernel else ATTENTION)
    return True


def restore_attention(model: nn.Module) -> None:
    """Back to plain SDPA (for generation, saving and anything that passes a padding mask or a cache)."""
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) in PACKED:
        model.set_attn_implementation("sdpa")
