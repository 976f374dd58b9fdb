"""Perplexity of a causal LM on fixed tokens, and the forgetting check of continued pre-training.

Perplexity is exp(mean next-token negative log-likelihood). The check scores the same tokens of a general text
and of a held-out domain text before and after training, with the same code, so the two numbers of each text
differ only by what training changed.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from tailorlm.errors import DataError


@dataclass
class Perplexity:
    """Summed next-token loss over a text and how many tokens it covers."""

    nll: float
    """Sum of -log p(token | tokens before it), in nats."""
    tokens: int
    """Tokens predicted (every token but the first)."""

    @property
    def value(self) -> float:
        return math.exp(self.nll / self.tokens)


@torch.no_grad()
def perplexity(model: Any, tokens: Sequence[int] | np.ndarray, *, window: int, batch_size: int = 4,
               chunk_size: int = 256) -> Perplexity:
    """Perplexity of `tokens`, scored in windows of `window` tokens that overlap by one.

    Each token after the first is predicted exactly once, from at most window - 1 tokens before it (the first
    token of a window has the context of its own window only). Runs in eval mode, with the chunked head and loss
    of training (training/loss.py), so a 49k vocabulary never needs full logits in memory.
    """
    from tailorlm.training.loss import causal_lm_loss

    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))  # (N,)
    if ids.numel() < 2:
        raise DataError("perplexity needs at least two tokens", found=f"{ids.numel()} token(s)")
    if window < 2:
        raise ValueError(f"window must be at least 2, got {window}")
    device = next(model.parameters()).device
    step = window - 1
    starts = list(range(0, ids.numel() - 1, step))
    full = [s for s in starts if s + window <= ids.numel()]
    last = [s for s in starts if s + window > ids.numel()]  # the shorter tail window, scored alone
    groups = [full[i:i + batch_size] for i in range(0, len(full), batch_size)] + [[s] for s in last]
    training = model.training
    model.eval()
    nll, count = 0.0, 0
    try:
        with _plain_attention(model):
            for group in groups:
                rows = torch.stack([ids[s:s + window] for s in group]).to(device)  # (B, T)
                loss, n = causal_lm_loss(model, {"input_ids": rows, "labels": rows}, chunk_size=chunk_size)
                nll, count = nll + float(loss), count + int(n)
    finally:
        model.train(training)
    return Perplexity(nll, count)


@contextlib.contextmanager
def _plain_attention(model: Any) -> Iterator[None]:
    """Plain SDPA while measuring a model that trains with packed attention (training/attention.py), which reads
    example spans from per-row position ids that these unpacked rows do not carry."""
    from tailorlm.training.attention import PACKED, restore_attention
    from tailorlm.training.loss import unwrap_model

    core = unwrap_model(model)
    previous = getattr(core.config, "_attn_implementation", None)
    if previous in PACKED:
        restore_attention(core)
    try:
        yield
    finally:
        if previous in PACKED:
            core.set_attn_implementation(previous)


def text_tokens(source: str | Mapping[str, Any], tokenizer: Any, *, max_tokens: int, where: str, base_dir: Path,
                key: str) -> np.ndarray:
    """The first `max_tokens` tokens of a text source: a text file, or a `data:`-like mapping of text examples.

    Each example is tokenized as in pre-training (the tokenizer's special tokens, EOS after each document).
    """
    from tailorlm.data.examples import TextExample
    from tailorlm.data.spec import DataSpec
    from tailorlm.data.templates import tokenize_text

    mapping = {"train": source} if isinstance(source, str) else dict(source)
    mapping.setdefault("split", {})
    spec = DataSpec.from_dict(mapping, source=where, base_dir=base_dir)
    examples = spec.load()["train"]
    ids: list[int] = []
    for example in examples:
        if not isinstance(example, TextExample):
            raise DataError("perplexity is measured on text", where=where, key=key,
                            found=f"a {example.kind} example", expected="a text file, or data with a text column "
                            "(e.g. {train: answers.jsonl, format: text, columns: {text: answer}})")
        ids.extend(tokenize_text(tokenizer, example.text).input_ids)
        if len(ids) >= max_tokens:
            break
    if len(ids) < 2:
        raise DataError("the text is too short to measure perplexity", where=where, key=key,
                        found=f"{len(ids)} token(s)", expected="at least two tokens")
    return np.asarray(ids[:max_tokens], dtype=np.int64)


@dataclass
class ForgettingCheck:
    """The fixed tokens of each text, measured before and after training."""

    texts: dict[str, np.ndarray]
    """'general' and 'domain' -> token ids."""
    window: int
    margin: float
    labels: dict[str, str]
    """What each text is (a file name), for the printed table."""

    def measure(self, model: Any, *, batch_size: int = 4, chunk_size: int = 256) -> dict[str, float]:
        return {name: perplexity(model, tokens, window=self.window, batch_size=batch_size,
                                 chunk_size=chunk_size).value
                for name, tokens in self.texts.items()}

    def report(self, before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, Any]:
        """Before, after and change of each text; `forgetting` is true when the general text got worse than the
        margin allows."""
        return forgetting_report(before, after, margin=self.margin,
                                 tokens={k: int(len(v)) for k, v in self.texts.items()}, labels=self.labels)


def forgetting_report(before: Mapping[str, float], after: Mapping[str, float], *, margin: float,
                      tokens: Mapping[str, int] | None = None,
                      labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The stored form of a forgetting check (the manifest's `metrics.forgetting`).

    >>> forgetting_report({"general": 20.0, "domain": 10.0}, {"general": 23.0, "domain": 8.0}, margin=0.1)["forgetting"]
    True
    """
    report: dict[str, Any] = {}
    for name in before:
        report[name] = {"before": before[name], "after": after[name],
                        "change": after[name] / before[name] - 1.0}
        if tokens:
            report[name]["tokens"] = tokens[name]
        if labels:
            report[name]["text"] = labels[name]
    report["margin"] = margin
    report["forgetting"] = bool(report["general"]["change"] > margin)
    return report


def format_forgetting(report: Mapping[str, Any]) -> str:
    """The before/after table, one text per row, and the verdict."""
    names = [k for k in ("general", "domain") if k in report]
    shown = {name: f"{name} ({report[name]['text']})" if report[name].get("text") else name for name in names}
    width = max(len("perplexity"), *(len(v) for v in shown.values()))
    lines = [f"{'perplexity':<{width}}  {'before':>9}  {'after':>9}  {'change':>8}"]
    for name in names:
        row = report[name]
        lines.append(f"{shown[name]:<{width}}  {row['before']:>9.2f}  {row['after']:>9.2f}  {row['change']:>+8.1%}")
    change, margin = report["general"]["change"], report["margin"]
    if report["forgetting"]:
        lines.append(f"forgetting: yes - the general perplexity rose {change:.1%}, more than the {margin:.0%} margin")
    else:
        lines.append(f"forgetting: no - the general perplexity changed {change:+.1%} (margin {margin:.0%})")
    return "\n".join(lines)
