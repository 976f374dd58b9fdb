"""Attention maps: the attention probabilities of one layer (one head or all of them), drawn as a PNG heat map.

The weights are the model's own: it runs with the eager attention implementation, the one that materialises the
softmax probabilities, so `output_attentions=True` returns them (the fused SDPA and flash kernels never form them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tailorlm.errors import ConfigError, ModelError
from tailorlm.inspect.tokens import check_text, piece_label, quoted, special_token_ids

GENERATIVE = ("ForCausalLM", "LMHeadModel")
MAX_TOKENS = 64


@dataclass
class AttentionMap:
    """Attention probabilities of one layer for a text: query rows × key columns, one matrix per head."""

    model: str
    layer: int
    heads: list[int]
    num_layers: int
    num_heads: int
    labels: list[str]
    """One readable label per token shown."""
    weights: np.ndarray
    """(heads, queries, keys); each row sums to 1."""
    causal: bool
    total_tokens: int
    """Tokens in the whole text; more than len(labels) when the text was cut to the cap."""

    @property
    def truncated(self) -> bool:
        return self.total_tokens > len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "layer": self.layer,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "causal": self.causal,
            "tokens": self.labels,
            "total_tokens": self.total_tokens,
            "heads": {str(h): self.weights[n].round(6).tolist() for n, h in enumerate(self.heads)},
        }


def inspect_attention(
    ref: str,
    text: str,
    *,
    layer: int,
    head: int | None = 0,
    output: str | Path,
    max_tokens: int = MAX_TOKENS,
    progress: bool = True,
) -> AttentionMap:
    """Load a model reference, take one layer's attention on `text` (`head=None`: every head) and write a PNG."""
    from transformers import AutoConfig

    from tailorlm.models.hub import resolve
    from tailorlm.models.load import load_model

    output = check_output(output)
    check_text(text)
    check_cap(max_tokens)
    path = resolve(str(ref), progress=progress)
    try:
        config = AutoConfig.from_pretrained(path)
    except (ValueError, OSError):
        config = None  # load_model below says what is wrong with the folder
    if config is not None:  # a bad layer or head is refused before the weights load
        check_index(layer, int(config.num_hidden_layers), what="layer", allow_last=True)
        if head is not None:
            check_index(head, int(config.num_attention_heads), what="head")
    # The base model (AutoModel) for decoders and encoders alike: attention needs no output head. Float32 even
    # on a GPU, so that the weights shown are not rounded to bfloat16.
    model, tokenizer = load_model(path, head="encoder", dtype="float32", progress=progress)
    attention = attention_map(model, tokenizer, text, layer=layer, head=head, max_tokens=max_tokens, name=str(ref))
    write_png(attention, output)
    return attention


def attention_map(
    model: Any,
    tokenizer: Any,
    text: str,
    *,
    layer: int,
    head: int | None = 0,
    max_tokens: int = MAX_TOKENS,
    name: str = "",
) -> AttentionMap:
    """Run `model` on the first `max_tokens` tokens of `text` and return layer `layer`'s attention probabilities.

    `layer` -1 is the last layer; `head=None` keeps every head. The model is switched to eager attention.
    """
    import torch

    check_text(text)
    check_cap(max_tokens)
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(
            "attention maps cover decoders and encoders, not encoder-decoder models",
            where=name or None,
            found=f"model type {getattr(config, 'model_type', '?')!r}",
            expected="a decoder such as smollm2-135m-instruct or an encoder such as minilm-l6",
        )
    num_layers, num_heads = int(config.num_hidden_layers), int(config.num_attention_heads)
    layer = check_index(layer, num_layers, what="layer", allow_last=True)
    heads = list(range(num_heads)) if head is None else [check_index(head, num_heads, what="head")]

    total = len(tokenizer(text)["input_ids"])
    encoding = tokenizer(text, truncation=True, max_length=max_tokens, return_tensors="pt")
    ids = encoding["input_ids"]
    special = special_token_ids(tokenizer)
    if not any(int(i) not in special for i in ids[0]):
        raise ConfigError("the text gives no tokens besides special ones", key="text", found=repr(text))
    model.set_attn_implementation("eager")
    device = next(model.parameters()).device
    with torch.no_grad():
        outputs = model(
            input_ids=ids.to(device), attention_mask=encoding["attention_mask"].to(device), output_attentions=True
        )
    attentions = getattr(outputs, "attentions", None)
    if not attentions or attentions[layer] is None:
        raise ModelError(
            "this model returns no attention weights",
            where=name or None,
            found=f"attention implementation {getattr(config, '_attn_implementation', '?')!r}",
            expected="a model whose attention transformers can run in eager mode",
        )
    weights = attentions[layer][0, heads].float().cpu().numpy()  # (heads, T, T)
    architectures = getattr(config, "architectures", None) or []
    causal = bool(getattr(config, "is_decoder", False)) or any(a.endswith(GENERATIVE) for a in architectures)
    labels = [piece_label(tokenizer, piece) for piece in tokenizer.convert_ids_to_tokens(ids[0].tolist())]
    return AttentionMap(
        model=name,
        layer=layer,
        heads=heads,
        num_layers=num_layers,
        num_heads=num_heads,
        labels=labels,
        weights=weights,
        causal=causal,
        total_tokens=total,
    )


def draw(attention: AttentionMap) -> Any:
    """The heat map of an attention map (a `heatmap.Drawing`): one panel per head, on one colour scale."""
    from tailorlm.inspect.heatmap import draw_heatmaps

    size = len(attention.labels)
    heads = attention.heads
    which = f"head {heads[0]}" if len(heads) == 1 else f"all {len(heads)} heads"
    title = f"{attention.model + ': ' if attention.model else ''}attention, layer {attention.layer}, {which}"
    blank = np.triu(np.ones((size, size), dtype=bool), k=1) if attention.causal else None
    return draw_heatmaps(
        [(f"head {h}", attention.weights[n]) for n, h in enumerate(heads)],
        attention.labels,
        attention.labels,
        title=title,
        vmax=float(attention.weights.max()),
        blank=blank,
        footnotes=footnotes(attention),
    )


def footnotes(attention: AttentionMap) -> tuple[str, ...]:
    """How to read the picture, and whether the text was cut."""
    notes = ["rows: queries (the token that attends); columns: keys (the token attended to)"]
    if attention.causal:
        notes.append("blank cells: later tokens, which a causal model cannot see")
    if attention.truncated:
        size = len(attention.labels)
        notes.append(f"only the first {size} of {attention.total_tokens} tokens were given to the model and shown")
    return tuple(notes)


def write_png(attention: AttentionMap, output: str | Path) -> Path:
    """Draw the attention map and save it as a PNG file; returns the path."""
    path = check_output(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw(attention).image.save(path, format="PNG")
    return path


def format_summary(attention: AttentionMap, path: Path | None) -> str:
    """What was drawn, in a few lines: where, which layer and heads, and each head's strongest link."""
    size = len(attention.labels)
    lines = []
    if path is not None:
        lines.append(f"wrote {path}")
    lines.append(
        f"{attention.model}: layer {attention.layer} of 0..{attention.num_layers - 1}, "
        f"head{'s' if len(attention.heads) > 1 else ''} {', '.join(map(str, attention.heads))} "
        f"of 0..{attention.num_heads - 1}; {size} tokens"
        + (f" (the first {size} of {attention.total_tokens})" if attention.truncated else "")
    )
    for n, head in enumerate(attention.heads):
        weights = attention.weights[n].copy()
        if attention.causal and size > 1:
            weights[0, 0] = -1  # the first token of a causal model can attend only to itself: always 1
        q, k = np.unravel_index(int(weights.argmax()), weights.shape)
        lines.append(
            f"  head {head}: strongest {quoted(attention.labels[q])} -> {quoted(attention.labels[k])} "
            f"{attention.weights[n, q, k]:.3f}"
        )
    return "\n".join(lines)


def check_index(value: int, count: int, *, what: str, allow_last: bool = False) -> int:
    """A layer or head number in 0..count-1 (and -1 for the last one where allowed), else an error naming the range."""
    if 0 <= value < count or (allow_last and value == -1):
        return value % count
    expected = f"0..{count - 1}" + (" (or -1 for the last)" if allow_last else "")
    raise ConfigError(
        f"no {what} {value}: this model has {count} {what}s", key=what, found=str(value), expected=expected
    )


def check_cap(max_tokens: int) -> None:
    if max_tokens < 2:
        raise ConfigError(
            "too few tokens to draw", key="max_tokens", found=str(max_tokens), expected="at least 2 (default 64)"
        )


def check_output(output: str | Path) -> Path:
    path = Path(output).expanduser()
    if path.suffix.lower() != ".png":
        raise ConfigError(
            "the attention map is written as a PNG image", key="output", found=str(output), expected="a .png file name"
        )
    return path
