"""The four canonical kinds of example that every input format is converted into.

Each example remembers where it came from (`Origin`), so any later error can point at the file and row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Union

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class Origin:
    """Where an example came from: a file and a 1-based row (the line where the row starts for JSONL, CSV and text; the position for JSON arrays, Parquet and datasets)."""

    file: str
    row: int

    def __str__(self) -> str:
        return f"{self.file}, row {self.row}"


@dataclass
class TextExample:
    """Plain text for (continued) pre-training."""

    text: str
    origin: Origin | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    kind: str = field(default="text", init=False)


@dataclass
class ChatExample:
    """A conversation: a list of {"role": system|user|assistant, "content": str} messages."""

    messages: list[dict[str, str]]
    origin: Origin | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    kind: str = field(default="chat", init=False)


@dataclass
class ClassificationExample:
    """A text and its label (kept as a string, so '0' and 'bearish' are handled alike)."""

    text: str
    label: str
    origin: Origin | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    kind: str = field(default="classification", init=False)


@dataclass
class PreferenceExample:
    """A prompt (may be empty) with a chosen and a rejected answer."""

    prompt: str
    chosen: str
    rejected: str
    origin: Origin | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    kind: str = field(default="preference", init=False)


Example = Union[TextExample, ChatExample, ClassificationExample, PreferenceExample]
KINDS: tuple[str, ...] = ("text", "chat", "classification", "preference")


def example_text(example: Example) -> str:
    """The whole visible text of an example, used for length, duplicate and overlap checks."""
    if isinstance(example, ChatExample):
        return "\n".join(m["content"] for m in example.messages)
    if isinstance(example, PreferenceExample):
        return "\n".join([example.prompt, example.chosen, example.rejected])
    return example.text
