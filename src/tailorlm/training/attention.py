"""Attention for packed rows that skips the work between examples.

With packing, transformers turns restarting position ids into a block-diagonal mask, and SDPA then computes every
(query, key) pair of the row and masks most of them away: a 512-token row of two 256-token examples costs four
times the attention arithmetic it needs, and no causal block can be skipped. `packed_sdpa` instead runs causal
SDPA on each example's span alone, which gives the same result (tested) with a fraction of the work.
It is registered with transformers' attention interface under `ATTENTION`; `use_packed_attention` switches a model
to it for training, and `restore_attention` switches back before the model is saved or used for generation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION = "tailorlm_packed_sdpa"
_SDPA_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")  # torch 2.5 and later
_registered = False


def packed_sdpa(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                **kwargs) -> tuple[torch.Tensor, None]:
    """Causal attention per example span, found where `position_ids` restart at 0; (B, T, heads, D) out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    if attention_mask is not None or position_ids is None or query.shape[2] == 1 or key.shape[2] != query.shape[2]:
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
    for row, (starts, ends) in enumerate(_spans(position_ids)):
        for start, end in zip(starts, ends):
            heads_first[row:row + 1, :, start:end] = F.scaled_dot_product_attention(
                query[row:row + 1, :, start:end], key[row:row + 1, :, start:end], value[row:row + 1, :, start:end],
                dropout_p=dropout if module.training else 0.0, scale=scaling, is_causal=True, **gqa,
            )
    return output, None


def _spans(position_ids: torch.Tensor) -> list[tuple[list[int], list[int]]]:
    """(starts, ends) of each row's examples: a span starts wherever the position is 0."""
    position_ids = position_ids.reshape(-1, position_ids.shape[-1])
    width = position_ids.shape[-1]
    result = []
    for row in position_ids.cpu():
        starts = (row == 0).nonzero().flatten().tolist() or [0]
        result.append((starts, starts[1:] + [width]))
    return result


def _mask(*args, **kwargs) -> torch.Tensor | None:
    """No mask for packed or plain causal rows (the spans come from position ids); SDPA's own mask for padding."""
    from transformers.masking_utils import sdpa_mask

    if kwargs.get("attention_mask") is None:
        return None
    return sdpa_mask(*args, **kwargs)


def use_packed_attention(model: nn.Module) -> bool:
    """Switch a decoder that uses SDPA to `packed_sdpa`; returns False (and changes nothing) for other models."""
    global _registered
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa" or config.is_encoder_decoder:
        return False
    if not _registered:
        AttentionInterface.register(ATTENTION, packed_sdpa)
        AttentionMaskInterface.register(ATTENTION, _mask)
        _registered = True
    model.set_attn_implementation(ATTENTION)
    return True


def restore_attention(model: nn.Module) -> None:
    """Back to plain SDPA (for generation, saving and anything that passes a padding mask or a cache)."""
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) == ATTENTION:
        model.set_attn_implementation("sdpa")
