"""Fertility: how many tokens a tokenizer spends per word and per character of a text.

Words are the whitespace-separated pieces of the text (`str.split()`); characters are Unicode code points, spaces and
newlines included. Tokens are the tokenizer's ids without special tokens (no BOS/EOS).

    >>> f = Fertility(tokens=12, words=4, chars=30)
    >>> (f.per_word, round(f.per_char, 3))
    (3.0, 0.4)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

_BATCH = 256


@dataclass(frozen=True)
class Fertility:
    """Token, word and character counts of one text sample under one tokenizer."""

    tokens: int
    words: int
    chars: int

    @property
    def per_word(self) -> float:
        """Tokens per whitespace-separated word."""
        return self.tokens / self.words if self.words else float("nan")

    @property
    def per_char(self) -> float:
        """Tokens per character."""
        return self.tokens / self.chars if self.chars else float("nan")

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "tokens_per_word": round(self.per_word, 4), "tokens_per_char": round(self.per_char, 4)}


def count_tokens(tokenizer: Any, texts: list[str]) -> int:
    """Tokens of `texts` under a transformers tokenizer (no special tokens added)."""
    total = 0
    for start in range(0, len(texts), _BATCH):
        batch = texts[start : start + _BATCH]
        total += sum(len(ids) for ids in tokenizer(batch, add_special_tokens=False)["input_ids"])
    return total


def measure_fertility(tokenizers: dict[str, Any], texts: Iterable[str]) -> dict[str, Fertility]:
    """Fertility of each named tokenizer on the same texts, read once (so `texts` may be a stream)."""
    tokens = dict.fromkeys(tokenizers, 0)
    words = chars = 0
    batch: list[str] = []

    def flush() -> None:
        for name, tokenizer in tokenizers.items():
            tokens[name] += count_tokens(tokenizer, batch)
        batch.clear()

    for text in texts:
        words += len(text.split())
        chars += len(text)
        batch.append(text)
        if len(batch) == _BATCH:
            flush()
    flush()
    return {name: Fertility(tokens[name], words, chars) for name in tokenizers}


def fertility_table(rows: dict[str, Fertility], *, title: str, vocab_sizes: dict[str, int] | None = None) -> Any:
    """A rich table: one row per tokenizer with vocabulary size, tokens, tokens per word and per character."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("tokenizer", overflow="fold")
    if vocab_sizes is not None:
        table.add_column("vocab", justify="right")
    for column in ("tokens", "tokens/word", "tokens/char"):
        table.add_column(column, justify="right")
    for name, fertility in rows.items():
        vocab = [f"{vocab_sizes[name]:,}"] if vocab_sizes is not None else []
        table.add_row(name, *vocab, f"{fertility.tokens:,}", f"{fertility.per_word:.3f}", f"{fertility.per_char:.4f}")
    return table
