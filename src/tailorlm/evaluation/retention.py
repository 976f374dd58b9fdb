"""Retention check of a fine-tuned specialist: did it forget general language while learning the task?

The perplexity of the base model and of the specialist on the same tokens of a general text (training/perplexity.py,
the code of the continued-pre-training forgetting check). The specialist is flagged when its perplexity rises by more
than `margin` (a share: 0.1 is 10%). The base model's number is measured once per base model and cached on disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tailorlm.errors import ConfigError
from tailorlm.files import write_atomic

RETENTION_KEYS = ("text", "max_tokens", "margin", "window")


@dataclass
class RetentionSettings:
    """The recipe's `retention:` section."""

    text: str
    """A general text file (resolved against the recipe's folder), e.g. tiny Shakespeare."""
    max_tokens: int = 4096
    """Tokens of the text that are scored (the first ones), so the check costs seconds."""
    margin: float = 0.1
    """Flag the specialist when its perplexity rises by more than this share."""
    window: int = 512
    """Tokens per scored window (capped at the model's context)."""

    def __post_init__(self) -> None:
        if self.max_tokens < 2:
            raise ConfigError("must be at least 2", key="retention.max_tokens", found=str(self.max_tokens))
        if self.margin < 0:
            raise ConfigError("must be 0 or more", key="retention.margin", found=str(self.margin),
                              expected="a share such as 0.1 (10%)")
        if self.window < 2:
            raise ConfigError("must be at least 2", key="retention.window", found=str(self.window))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, *, where: str, base_dir: Path) -> "RetentionSettings | None":
        """Settings from a recipe section (None when the recipe has none); the text path made absolute."""
        if not data:
            return None
        if not isinstance(data, Mapping):
            raise ConfigError("retention must be a mapping", where=where, key="retention", found=repr(data),
                              expected="{text: general.txt, max_tokens: 4096, margin: 0.1}")
        unknown = [k for k in data if k not in RETENTION_KEYS]
        if unknown:
            raise ConfigError("unknown setting", where=where, key=f"retention.{unknown[0]}",
                              expected="one of " + ", ".join(RETENTION_KEYS))
        if not data.get("text"):
            raise ConfigError("missing setting", where=where, key="retention.text",
                              expected="a general text file the model should not forget")
        path = Path(str(data["text"]))
        path = path if path.is_absolute() else (base_dir / path).resolve()
        if not path.is_file():
            raise ConfigError("the retention text was not found", where=where, key="retention.text", found=str(path),
                              expected="a text file")
        return cls(text=str(path), max_tokens=int(data.get("max_tokens", 4096)),
                   margin=float(data.get("margin", 0.1)), window=int(data.get("window", 512)))


def retention_report(before: float, after: float, *, margin: float, text: str = "", tokens: int = 0) -> dict[str, Any]:
    """Before, after, relative change, and whether the change exceeds the margin.

    >>> retention_report(20.0, 23.0, margin=0.1)["flagged"]
    True
    """
    change = after / before - 1.0
    return {"text": Path(text).name if text else "", "tokens": tokens, "before": before, "after": after,
            "change": change, "margin": margin, "flagged": bool(after > before * (1.0 + margin))}


def model_perplexity(model: Any, tokenizer: Any, settings: RetentionSettings) -> tuple[float, int]:
    """(perplexity, tokens scored) of a loaded causal LM on the retention text."""
    from tailorlm.training.loss import unwrap_model
    from tailorlm.training.perplexity import perplexity, text_tokens

    tokens = text_tokens(settings.text, tokenizer, max_tokens=settings.max_tokens, where=settings.text,
                         base_dir=Path(settings.text).parent, key="retention.text")
    context = getattr(unwrap_model(model).config, "max_position_embeddings", None) or settings.window
    window = max(2, min(settings.window, int(context) - _virtual_tokens(model)))
    return perplexity(model, tokens, window=window).value, int(len(tokens))


def base_perplexity(base_model: str, settings: RetentionSettings, *, cache: Path | None = None) -> float:
    """The base model's perplexity on the retention text, read from `cache` when it was measured before."""
    key = {"model": base_model, "text": settings.text, "max_tokens": settings.max_tokens, "window": settings.window}
    if cache is not None and cache.is_file():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return float(saved["perplexity"])
    from tailorlm.models.load import load_model

    model, tokenizer = load_model(base_model, progress=False)
    value, _ = model_perplexity(model, tokenizer, settings)
    if cache is not None:
        write_atomic(cache, json.dumps({"key": key, "perplexity": value}))
    return value


def check_retention(specialist: str | Path, settings: RetentionSettings, *, before: float) -> dict[str, Any]:
    """The retention report of a trained causal-LM specialist folder against its base model's perplexity."""
    from tailorlm.strategies.base import load_specialist

    model, tokenizer, _ = load_specialist(specialist)
    after, tokens = model_perplexity(model, tokenizer, settings)
    return retention_report(before, after, margin=settings.margin, text=settings.text, tokens=tokens)


def _virtual_tokens(model: Any) -> int:
    """Positions a prompt-learning adapter prepends (they take room in the context)."""
    config = getattr(model, "peft_config", None)
    if not config:
        return 0
    active = config.get(getattr(model, "active_adapter", "default")) or next(iter(config.values()))
    return int(getattr(active, "num_virtual_tokens", 0) or 0) if getattr(active, "is_prompt_learning", False) else 0
