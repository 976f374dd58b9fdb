"""Examples to token ids and labels, one small function per objective."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from tailorlm.data.examples import ChatExample, ClassificationExample, Example, TextExample
from tailorlm.data.templates import IGNORE_INDEX, tokenize_chat, tokenize_text
from tailorlm.errors import DataError


@dataclass
class Features:
    """Tokenized examples of one split: each item has `input_ids` and `labels` (a token list, or a class index)."""

    items: list[dict[str, Any]]
    truncated: int = 0
    label_names: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def trained_tokens(self) -> int:
        return sum(sum(1 for t in item["labels"] if t != IGNORE_INDEX) if isinstance(item["labels"], list) else 1
                   for item in self.items)


def build_features(objective: str, examples: Sequence[Example], tokenizer: Any, *, max_length: int,
                   label_names: list[str] | None = None, split: str = "train") -> Features:
    """Tokenize a split for an objective; errors name the file and row of the offending example."""
    if not examples:
        raise DataError(f"the {split} split is empty", key=split, expected="at least one example")
    builder = {"pretrain": _pretrain, "sft": _sft, "classify": _classify, "seq2seq": _seq2seq}[objective]
    return builder(examples, tokenizer, max_length=max_length, label_names=label_names, split=split)


def _require(examples: Sequence[Example], kind: type, objective: str, wanted: str) -> None:
    for example in examples:
        if not isinstance(example, kind):
            raise DataError(
                f"objective {objective} needs {wanted} examples", where=_where(example),
                found=f"a {example.kind} example", expected=f"{wanted} data ({_FORMATS_FOR[objective]})",
            )


_FORMATS_FOR = {
    "pretrain": "plain text files, or a text column",
    "sft": "alpaca, sharegpt, messages, prompt/completion or question/answer",
    "classify": "text and label columns",
    "seq2seq": "source/target pairs, or prompt/completion",
}


def _pretrain(examples, tokenizer, *, max_length, label_names, split) -> Features:
    """Each document gets EOS and is cut into pieces of at most max_length tokens (nothing is dropped)."""
    _require(examples, TextExample, "pretrain", "text")
    items = []
    for example in examples:
        ids = tokenize_text(tokenizer, example.text, where=_where(example)).input_ids
        for start in range(0, len(ids), max_length):
            piece = ids[start:start + max_length]
            if len(piece) > 1:
                items.append({"input_ids": piece, "labels": list(piece)})
    return Features(items)


def _sft(examples, tokenizer, *, max_length, label_names, split) -> Features:
    _require(examples, ChatExample, "sft", "chat")
    if not any(m.get("role") == "assistant" for ex in examples for m in ex.messages):
        raise DataError(f"the {split} split has no assistant turns, so supervised fine-tuning has nothing to learn",
                        where=str(examples[0].origin.file) if examples[0].origin else None,
                        expected="conversations with assistant answers")
    items, truncated = [], 0
    for example in examples:
        tokenized = tokenize_chat(tokenizer, example.messages, max_length=max_length, where=_where(example))
        truncated += tokenized.truncated
        if any(t != IGNORE_INDEX for t in tokenized.labels):  # truncation can cut every answer token away
            items.append({"input_ids": tokenized.input_ids, "labels": tokenized.labels})
    notes = [f"{len(examples) - len(items)} examples lost every answer token to truncation at {max_length}"] \
        if len(items) < len(examples) else []
    return Features(items, truncated=truncated, notes=notes)


def _classify(examples, tokenizer, *, max_length, label_names, split) -> Features:
    _require(examples, ClassificationExample, "classify", "classification")
    names = label_names or sorted({ex.label for ex in examples}, key=_label_sort_key)
    if len(names) < 2:
        raise DataError("classification needs at least two classes", key="label", found=f"only {names!r}",
                        where=str(examples[0].origin.file) if examples[0].origin else None)
    index = {name: i for i, name in enumerate(names)}
    items, truncated = [], 0
    for example in examples:
        if example.label not in index:
            raise DataError("label is not in the label set", where=_where(example), key="label",
                            found=repr(example.label), expected="one of " + ", ".join(names))
        ids = tokenizer(example.text, truncation=False, add_special_tokens=True, verbose=False)["input_ids"]
        truncated += len(ids) > max_length
        items.append({"input_ids": ids[:max_length], "labels": index[example.label]})
    return Features(items, truncated=truncated, label_names=names)


def _seq2seq(examples, tokenizer, *, max_length, label_names, split) -> Features:
    _require(examples, ChatExample, "seq2seq", "source/target")
    items, truncated = [], 0
    for example in examples:
        user = [m["content"] for m in example.messages if m["role"] == "user"]
        answer = [m["content"] for m in example.messages if m["role"] == "assistant"]
        if not user or not answer:
            raise DataError("a seq2seq example needs a source and a target", where=_where(example),
                            expected="one user (source) and one assistant (target) message")
        source = tokenizer(user[-1], add_special_tokens=True, verbose=False)["input_ids"]
        target = tokenizer(text_target=answer[-1], add_special_tokens=True, verbose=False)["input_ids"]
        truncated += len(source) > max_length or len(target) > max_length
        items.append({"input_ids": source[:max_length], "labels": target[:max_length]})
    return Features(items, truncated=truncated)


def _label_sort_key(label: str) -> tuple[int, Any]:
    """Numeric labels sort as numbers ('2' before '10'), others alphabetically."""
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)


def label_counts(examples: Sequence[ClassificationExample]) -> Counter:
    return Counter(ex.label for ex in examples)


def _where(example: Example) -> str | None:
    return str(example.origin) if example.origin else None
