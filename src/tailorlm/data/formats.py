"""Convert records into canonical examples: detect the input format from column names, map columns, check types.

Each format names canonical columns (`text`, `label`, `question`, ...). A record's column is found, in order,
from the caller's `columns` mapping (which may be a dotted path into nested fields, e.g. `instances.0.output`),
the canonical name itself, then the aliases in `ALIASES`, then the same names ignoring case. Fields a format does
not use are kept in the example's `meta`, so nothing in the file is lost.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from tailorlm.data.examples import (
    ROLES,
    ChatExample,
    ClassificationExample,
    Example,
    PreferenceExample,
    TextExample,
)
from tailorlm.data.loaders import Record, read_records
from tailorlm.errors import ConfigError, DataError

# Canonical column -> the names it is known by in public data sets, the canonical name first.
ALIASES: dict[str, tuple[str, ...]] = {
    "text": ("text", "sentence", "content", "document", "review", "reviews", "tweet"),
    "label": ("label", "labels", "sentiment", "class", "category", "answer"),  # LegalBench train files: answer
    "question": ("question", "query"),
    "answer": ("answer", "response", "output"),
    "context": ("context", "passage"),
    "answers": ("answers",),
    "instruction": ("instruction",),
    "input": ("input", "context"),
    "output": ("output", "response"),
    "system": ("system", "system_prompt"),
    "prompt": ("prompt",),
    "completion": ("completion", "response"),
    "chosen": ("chosen",),
    "rejected": ("rejected",),
    "source": ("source", "src"),
    "target": ("target", "tgt"),
    "messages": ("messages",),
    "conversations": ("conversations", "conversation"),
}
SHAREGPT_ROLES: dict[str, str] = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "chatgpt": "assistant", "model": "assistant", "system": "system",
}


@dataclass
class LoadedData:
    """The examples of one file, with the format they were read as and their kind (text/chat/classification/preference)."""

    examples: list[Example]
    format: str
    path: str
    kind: str


class _Row:
    """One record with its columns resolved: typed getters whose errors name the file, row and column."""

    def __init__(self, record: Record, names: dict[str, str]) -> None:
        self.record, self.names, self.where = record, names, str(record.origin)

    def raw(self, column: str) -> Any:
        """The value of a canonical column, or None when an optional column is absent."""
        return _lookup(self.record.fields, self.names[column]) if column in self.names else None

    def text(self, column: str, *, optional: bool = False, joiner: str | None = None) -> str:
        """A string value; numbers are written out, lists of strings joined when `joiner` is given."""
        value = self.raw(column)
        if value is None and (optional or column not in self.names):
            return ""
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if joiner is not None and isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return joiner.join(value)
        expected = "a string" + (" or a list of strings" if joiner is not None else "")
        raise _wrong_type(self.where, self.names[column], value, expected)

    def extras(self) -> dict[str, Any]:
        """Fields the format did not use, for `meta`."""
        used = {name.split(".")[0] for name in self.names.values()}
        return {k: v for k, v in self.record.fields.items() if k not in used}


@dataclass(frozen=True)
class Format:
    """An input format: the canonical columns it needs, those it may use, the kind it yields and how to build one."""

    name: str
    kind: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    build: Callable[[_Row], Example]

    def describe(self) -> str:
        """'alpaca (instruction, output; optional input, system)'."""
        optional = f"; optional {', '.join(self.optional)}" if self.optional else ""
        return f"{self.name} ({', '.join(self.required)}{optional})"


def _chat(row: _Row, user: str, assistant: str, meta: dict[str, Any], system: str = "") -> ChatExample:
    """A single-turn chat example, with an optional system message."""
    messages = [{"role": "system", "content": system}] if system.strip() else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return ChatExample(messages, origin=row.record.origin, meta={**row.extras(), **meta})


def _alpaca(row: _Row) -> Example:
    """instruction (+ input) -> user, output -> assistant."""
    instruction, extra = row.text("instruction"), row.text("input", optional=True)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return _chat(row, user, row.text("output"), {}, system=row.text("system", optional=True))


def _messages(row: _Row) -> Example:
    """OpenAI chat messages: [{role, content}] with roles system, user and assistant."""
    messages = _conversation(row, "messages", {r: r for r in ROLES})
    return ChatExample(messages, origin=row.record.origin, meta=row.extras())


def _sharegpt(row: _Row) -> Example:
    """ShareGPT conversations: [{from: human|gpt|system, value}] (role/content keys are accepted too)."""
    messages = _conversation(row, "conversations", SHAREGPT_ROLES)
    return ChatExample(messages, origin=row.record.origin, meta=row.extras())


def _conversation(row: _Row, column: str, roles: dict[str, str]) -> list[dict[str, str]]:
    """Validated messages from a list of turns, mapping each turn's role through `roles`."""
    name, turns = row.names[column], row.raw(column)
    if not isinstance(turns, list) or not turns:
        raise _wrong_type(row.where, name, turns, "a non-empty list of messages")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise _wrong_type(row.where, f"{name}[{i}]", turn, "an object with a role and a content")
        role_key, content_key = ("from", "value") if "from" in turn else ("role", "content")
        role = turn.get(role_key)
        if role not in roles:
            raise DataError("unknown role", where=row.where, key=f"{name}[{i}].{role_key}", found=repr(role),
                            expected="one of " + ", ".join(roles))
        messages.append({"role": roles[role], "content": _content(row.where, f"{name}[{i}].{content_key}", turn.get(content_key))})
    return messages


def _content(where: str, key: str, value: Any) -> str:
    """A message's content: a string, or OpenAI text parts [{type: text, text}] joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise _wrong_type(where, key, value, 'a string (or a list of {"type": "text", "text": ...} parts)')


def _prompt_completion(row: _Row) -> Example:
    """prompt -> user, completion -> assistant."""
    return _chat(row, row.text("prompt"), row.text("completion"), {})


def _qa(row: _Row) -> Example:
    """(context +) question -> user, answer -> assistant; the three parts stay in meta."""
    context, question, answer = row.text("context", optional=True, joiner="\n\n"), row.text("question"), row.text("answer")
    user = f"{context}\n\n{question}" if context.strip() else question
    return _chat(row, user, answer, {"context": context, "question": question, "answer": answer})


def _source_target(row: _Row) -> Example:
    """source -> user, target -> assistant; a list of targets is several references, the first one trained on."""
    source, target = row.text("source", joiner=" "), row.raw("target")
    references = target if isinstance(target, list) and target and all(isinstance(t, str) for t in target) else None
    target = references[0] if references else row.text("target")
    meta = {"source": source, "target": target, **({"references": references} if references else {})}
    return _chat(row, source, target, meta)


def _squad(row: _Row) -> Example:
    """context + question -> user, the first answer -> assistant; meta keeps every answer and its start."""
    context, question = row.text("context"), row.text("question")
    texts, starts = _squad_answers(row)
    meta = {"context": context, "question": question, "answers": texts, "answer_start": starts}
    return _chat(row, f"{context}\n\n{question}", texts[0], meta)


def _squad_answers(row: _Row) -> tuple[list[str], list[int | None]]:
    """Answer texts and starts from SQuAD's [{text, answer_start}] or Hugging Face's {text: [...], answer_start: [...]}."""
    value, key = row.raw("answers"), row.names["answers"]
    if isinstance(value, dict):
        texts, starts = value.get("text"), list(value.get("answer_start") or [])
    elif isinstance(value, list) and all(isinstance(a, dict) for a in value):
        texts, starts = [a.get("text") for a in value], [a.get("answer_start") for a in value]
    else:
        texts, starts = value, []
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise DataError("no usable answer", where=row.where, key=key, found=_describe(value),
                        expected='a non-empty list of {"text": ..., "answer_start": ...} answers',
                        hint="Unanswerable (SQuAD v2) questions cannot be trained on as squad; drop them first")
    return texts, starts


def _text_label(row: _Row) -> Example:
    """text + label -> classification; the label is kept as a string (0 -> '0', true -> 'true')."""
    return ClassificationExample(row.text("text"), _label(row), origin=row.record.origin, meta=row.extras())


def _label(row: _Row) -> str:
    """A label as a string, from a string, an integer, an integral float or a boolean."""
    value = row.raw("label")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise _wrong_type(row.where, row.names["label"], value, "one label: a non-empty string, an integer or a boolean")


def _text(row: _Row) -> Example:
    """text -> a text example for (continued) pre-training."""
    return TextExample(row.text("text"), origin=row.record.origin, meta=row.extras())


def _preference(row: _Row) -> Example:
    """(prompt,) chosen and rejected -> a preference example; the prompt is empty when there is none."""
    return PreferenceExample(row.text("prompt", optional=True), row.text("chosen"), row.text("rejected"),
                             origin=row.record.origin, meta=row.extras())


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("alpaca", "chat", ("instruction", "output"), ("input", "system"), _alpaca),
    Format("sharegpt", "chat", ("conversations",), (), _sharegpt),
    Format("messages", "chat", ("messages",), (), _messages),
    Format("prompt_completion", "chat", ("prompt", "completion"), (), _prompt_completion),
    Format("qa", "chat", ("question", "answer"), ("context",), _qa),
    Format("source_target", "chat", ("source", "target"), (), _source_target),
    Format("text_label", "classification", ("text", "label"), (), _text_label),
    Format("text", "text", ("text",), (), _text),
    Format("preference", "preference", ("chosen", "rejected"), ("prompt",), _preference),
    Format("squad", "chat", ("context", "question", "answers"), (), _squad),
)}
# Most specific first: squad before qa (both have question), preference before prompt_completion, text last.
DETECTION_ORDER: tuple[str, ...] = (
    "messages", "sharegpt", "preference", "squad", "alpaca", "prompt_completion", "qa", "source_target", "text_label", "text",
)


def detect_format(columns: Iterable[str], *, where: str) -> str:
    """The first format, most specific first, whose required columns are all present (by name or alias).

    >>> detect_format(["sentence", "label"], where="data.csv")
    'text_label'
    >>> detect_format(["instruction", "input", "output"], where="data.jsonl")
    'alpaca'
    """
    names = list(columns)
    for name in DETECTION_ORDER:
        if all(_find_column(column, names) for column in FORMATS[name].required):
            return name
    raise DataError(
        "cannot tell the data format from the columns", where=where, found="columns " + (", ".join(names) or "(none)"),
        expected="the columns of one of: " + "; ".join(FORMATS[n].describe() for n in DETECTION_ORDER),
        hint="Name the format and map your columns, e.g. format: text_label and columns: {text: YOUR_TEXT, label: YOUR_LABEL}",
    )


def convert(records: Iterable[Record], *, format: str | None = None, columns: dict[str, str] | None = None,
            where: str) -> list[Example]:
    """Convert records into canonical examples, detecting the format from the first record when none is given.

    `columns` maps canonical names to the file's names, e.g. {"text": "sentence", "label": "polarity"}.
    """
    records, columns = list(records), dict(columns or {})
    if not records:
        return []
    if format is None:
        format = detect_format(_detection_columns(records[0], columns), where=where)
    spec = _format(format, where)
    _check_columns(spec, columns, where)
    return [spec.build(_Row(record, _resolve(spec, record, columns))) for record in records]


def load_examples(path: str | Path, *, format: str | None = None, columns: dict[str, str] | None = None,
                  **read_options: Any) -> LoadedData:
    """Read a file or folder and convert it: `read_records` options, then `convert`; DataError when there are no rows."""
    records = read_records(path, **read_options)
    if not records:
        raise DataError("no rows", where=str(path), found="no data rows (an empty array, or only a header)",
                        expected="at least one row")
    columns = dict(columns or {})
    name = format or detect_format(_detection_columns(records[0], columns), where=str(path))
    examples = convert(records, format=name, columns=columns, where=str(path))
    return LoadedData(examples, name, str(path), FORMATS[name].kind)


def _format(name: Any, where: str) -> Format:
    """The format called `name`, or a ConfigError listing them."""
    if name in FORMATS:
        return FORMATS[name]
    close = difflib.get_close_matches(str(name), list(FORMATS), n=1)
    raise ConfigError("unknown data format", where=where, key="format", found=repr(name), expected="one of " + ", ".join(FORMATS),
                      hint=f"Did you mean {close[0]!r}?" if close else None)


def _check_columns(spec: Format, columns: dict[str, str], where: str) -> None:
    """The column mapping names only columns of this format, each to a file column name."""
    allowed = spec.required + spec.optional
    for canonical, name in columns.items():
        if canonical not in allowed:
            close = difflib.get_close_matches(str(canonical), allowed, n=1)
            raise ConfigError(f"unknown column for the {spec.name} format", where=where, key=f"columns.{canonical}",
                              found=repr(canonical), expected="one of " + ", ".join(allowed),
                              hint=f"Did you mean {close[0]!r}?" if close else "map canonical names to your file's names")
        if not isinstance(name, str) or not name:
            raise ConfigError("bad column mapping", where=where, key=f"columns.{canonical}", found=repr(name),
                              expected="the name of a column in the file")


def _detection_columns(record: Record, columns: dict[str, str]) -> list[str]:
    """The record's column names, plus the canonical names the mapping provides."""
    mapped = [c for c, name in columns.items() if _lookup(record.fields, name) is not _MISSING]
    return list(record.fields) + mapped


def _resolve(spec: Format, record: Record, columns: dict[str, str]) -> dict[str, str]:
    """Canonical column -> the record's field name (or dotted path), for every column the record provides."""
    names: dict[str, str] = {}
    keys = list(record.fields)
    for column in spec.required + spec.optional:
        name = columns.get(column) or _find_column(column, keys)
        if name is not None and _lookup(record.fields, name) is not _MISSING:
            names[column] = name
        elif column in spec.required or column in columns:
            raise _missing_column(spec, column, columns.get(column), record)
    return names


def _find_column(column: str, keys: list[str]) -> str | None:
    """The first key that is the column's name or alias, exactly, else ignoring case."""
    aliases = ALIASES.get(column, (column,))
    exact = next((a for a in aliases if a in keys), None)
    if exact is not None:
        return exact
    folded = {k.lower(): k for k in reversed(keys)}
    return next((folded[a] for a in aliases if a in folded), None)


_MISSING = object()


def _lookup(fields: dict[str, Any], name: str) -> Any:
    """A field by name, or by a dotted path into nested objects and lists ('instances.0.output')."""
    if name in fields:
        return fields[name]
    value: Any = fields
    for part in name.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _missing_column(spec: Format, column: str, mapped: str | None, record: Record) -> DataError:
    """A missing-column error that suggests the closest column of the file."""
    keys = list(record.fields)
    wanted = mapped or column
    candidates = [mapped] if mapped else list(ALIASES.get(column, (column,)))
    close = max((m for c in candidates for m in difflib.get_close_matches(c, keys, n=1, cutoff=0.6)),
                key=lambda m: max(difflib.SequenceMatcher(None, c, m).ratio() for c in candidates), default=None)
    aliases = [a for a in ALIASES.get(column, ()) if a != column]
    expected = f"a column {wanted!r}" if mapped else f"a column {column!r}" + (f" (or {', '.join(aliases)})" if aliases else "")
    hint = (f"Did you mean {close!r}? Map it with columns: {{{column}: {close}}}" if close
            else f"Map your column with columns: {{{column}: YOUR_COLUMN}}")
    return DataError(f"missing column for the {spec.name} format", where=str(record.origin), key=wanted,
                     found="columns " + (", ".join(keys) or "(none)"), expected=expected, hint=hint)


def _wrong_type(where: str, key: str, value: Any, expected: str) -> DataError:
    """A wrong-type error naming the row, the column and the value found."""
    return DataError("wrong type", where=where, key=key, found=_describe(value), expected=expected)


def _describe(value: Any) -> str:
    """A short description of a value for error messages."""
    if value is None:
        return "null (no value)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else f"the string {value[:40] + ('...' if len(value) > 40 else '')!r}"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return "an object with keys " + ", ".join(map(str, value))[:80]
    return type(value).__name__
