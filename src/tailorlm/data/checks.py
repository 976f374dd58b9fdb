"""`tailor data check`: a pre-flight report on a data file or a recipe's data, before any training time is spent.

Per split it counts rows, token lengths with the chosen tokenizer, rows that would be truncated, empty and
duplicate rows, labels, assistant turns that do not end with the end-of-turn token and personal data, and it
renders one sample with the trained spans marked. Across splits it counts exact and near-duplicate overlap.
Problems are `Finding`s: errors (training would be wrong) and warnings (training would work, perhaps badly).

>>> report = check_data("train.jsonl", max_length=512)  # doctest: +SKIP
>>> report.has_errors, [f.code for f in report.findings]  # doctest: +SKIP
(False, ['duplicate_rows'])
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from tailorlm.data import overlap, pii
from tailorlm.data.examples import ChatExample, ClassificationExample, Example, example_text
from tailorlm.data.formats import LoadedData, load_examples
from tailorlm.data.measure import measure_examples
from tailorlm.data.redaction import redact_data
from tailorlm.errors import ConfigError, ModelError

__all__ = ["DataReport", "Finding", "OverlapReport", "SplitReport", "check_data", "redact_data", "render_report"]

DEFAULT_MODEL = "smollm2-135m-instruct"
MAX_ORIGINS = 5
"""How many origins (file, row) a finding lists; counts are always complete."""
IMBALANCE_RATIO = 10.0
"""Warn when the largest class has at least this many times the rows of the smallest."""
SAMPLE_CHARS = 2000
PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)


@dataclass
class Finding:
    """One problem: an error (training would be wrong) or a warning, with the rows it concerns."""

    level: str
    code: str
    message: str
    split: str | None = None
    origins: list[str] = field(default_factory=list)


@dataclass
class SplitReport:
    """What one split holds."""

    name: str
    path: str
    rows: int
    format: str
    kind: str
    carved_share: float | None = None
    """The share of train this split was carved from (None when it was given as files)."""
    tokens: dict[str, int] = field(default_factory=dict)
    """Token-length percentiles p50, p90, p95, p99, max (and the total)."""
    truncated: int = 0
    empty: int = 0
    duplicates: int = 0
    labels: dict[str, int] | None = None
    assistant_turns: int = 0
    turns_without_end_of_turn: int = 0
    chats_without_assistant: int = 0
    personal_data: dict[str, int] = field(default_factory=dict)
    sample: str | None = None


@dataclass
class OverlapReport:
    """Rows of split `b` that also occur in split `a`: exactly (after whitespace normalisation) or nearly."""

    a: str
    b: str
    exact: int
    near: int
    threshold: float
    exact_pairs: list[tuple[str, str]] = field(default_factory=list)
    near_pairs: list[tuple[str, str, float]] = field(default_factory=list)


@dataclass
class DataReport:
    """The whole pre-flight report; `to_dict()` is what `--json` prints."""

    source: str
    tokenizer: str
    chat_template: str
    end_of_turn: str | None
    max_length: int | None
    max_length_from: str
    splits: list[SplitReport]
    overlaps: list[OverlapReport]
    findings: list[Finding]

    @property
    def errors(self) -> list[Finding]:
        """The findings that make training wrong."""
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        """The findings worth a look."""
        return [f for f in self.findings if f.level == "warning"]

    @property
    def has_errors(self) -> bool:
        """Whether any finding is an error (the CLI then exits with 1)."""
        return bool(self.errors)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able data."""
        data = asdict(self)
        data["errors"], data["warnings"] = len(self.errors), len(self.warnings)
        return data


def check_data(
    source: str | Path,
    *,
    model: str | None = None,
    max_length: int | None = None,
    tokenizer: Any = None,
    format: str | None = None,
    columns: dict[str, str] | None = None,
    near_duplicate_threshold: float = 0.8,
    progress: bool = False,
) -> DataReport:
    """Check a data file (one split, "train") or a recipe (its `data:` splits, `model:` and `max_length`).

    The tokenizer is `tokenizer` if given, else that of `model`, else the recipe's model, else the built-in
    `smollm2-135m-instruct` pack. `max_length` defaults to the recipe's (`max_length` or `train.max_length`),
    then to the tokenizer's context length.
    """
    if not 0.0 < near_duplicate_threshold <= 1.0:
        raise ConfigError("near-duplicate threshold must be in (0, 1]", key="near_duplicate_threshold",
                          found=repr(near_duplicate_threshold))
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ConfigError("max_length must be a positive integer", key="max_length", found=repr(max_length))
    splits, carved, recipe = _load(Path(source), format, columns)
    tok, tok_name = _tokenizer(tokenizer, model, recipe)
    needs_chat = any(part.kind in ("chat", "preference") for part in splits.values())
    template, eot = _chat_template(tok, needs_chat)
    max_length, max_length_from = _max_length(max_length, recipe, tok)

    findings: list[Finding] = []
    reports: list[SplitReport] = []
    for name, part in splits.items():
        split_report, split_findings = _check_split(name, part, carved.get(name), tok, max_length, progress)
        reports.append(split_report)
        findings.extend(split_findings)
    findings.extend(_label_findings(splits))
    overlaps: list[OverlapReport] = []
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            report, overlap_findings = _check_overlap(a, splits[a], b, splits[b], near_duplicate_threshold)
            overlaps.append(report)
            findings.extend(overlap_findings)
    findings.sort(key=lambda f: f.level != "error")
    return DataReport(str(source), tok_name, template, eot, max_length, max_length_from, reports, overlaps, findings)


def render_report(report: DataReport, console: Any = None) -> None:
    """Print the report for people with rich (the rendering lives in `check_report`)."""
    from tailorlm.data.check_report import render_report as render

    render(report, console)


def _load(
    path: Path, format: str | None, columns: dict[str, str] | None
) -> tuple[dict[str, LoadedData], dict[str, float], dict]:
    """The splits to check, the carved share of each carved split, and the recipe (empty for a data file)."""
    if path.suffix.lower() not in (".yaml", ".yml"):
        return {"train": load_examples(path, format=format, columns=columns)}, {}, {}
    from tailorlm.config import load_yaml
    from tailorlm.data.spec import DataSpec

    recipe = load_yaml(path)
    data = recipe.get("data")
    if data is None:
        found = ("keys " + ", ".join(map(str, recipe))) if recipe else "an empty recipe"
        raise ConfigError("the recipe has no data section", where=str(path), key="data", found=found,
                          expected="a data: mapping with train (and eval, test) files")
    data = {"train": data} if isinstance(data, (str, list)) else dict(data) if isinstance(data, dict) else data
    if isinstance(data, dict):
        data.update({k: v for k, v in (("format", format), ("columns", columns)) if v})
    spec = DataSpec.from_dict(data, source=str(path), base_dir=path.parent)
    spec.check_files()
    carved = {name: share for name, share in spec.ratios().items() if name != "train"}
    return spec.load_splits(), carved, {**recipe, "_base_dir": str(path.parent)}


def _tokenizer(tokenizer: Any, model: str | None, recipe: dict) -> tuple[Any, str]:
    """The tokenizer to measure with, and how the report names it."""
    if tokenizer is not None:
        return copy.deepcopy(tokenizer), f"{getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__} (given)"
    from tailorlm.models.load import load_tokenizer

    if model is not None:
        return load_tokenizer(model), model
    if recipe.get("model"):
        ref = str(recipe["model"])
        local = Path(recipe["_base_dir"]) / ref
        return load_tokenizer(str(local) if local.exists() else ref), f"{ref} (from the recipe)"
    return load_tokenizer(DEFAULT_MODEL), f"{DEFAULT_MODEL} (default; pass --model to use yours)"


def _chat_template(tok: Any, needs_chat: bool) -> tuple[str, str | None]:
    """Install the ChatML default when chats need a template the tokenizer lacks; say which template is used."""
    from tailorlm.data.templates import end_of_turn_token, ensure_chat_template

    if not needs_chat:
        return ("the tokenizer's own" if tok.chat_template else "none (not needed: no chat examples)"), None
    template = "default ChatML (the tokenizer has none)" if ensure_chat_template(tok) else "the tokenizer's own"
    try:
        return template, end_of_turn_token(tok)
    except ModelError:
        return template, None


def _max_length(given: int | None, recipe: dict, tok: Any) -> tuple[int | None, str]:
    """The length that rows are truncated at, and where it came from."""
    if given is not None:
        return given, "--max-length"
    train = recipe.get("train")
    for value in (recipe.get("max_length"), train.get("max_length") if isinstance(train, dict) else None):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, "the recipe"
    context = getattr(tok, "model_max_length", None)
    if isinstance(context, int) and 0 < context < 1_000_000:
        return context, "the tokenizer's context length"
    config = Path(getattr(tok, "name_or_path", "") or "\0") / "config.json"
    if config.is_file():
        try:
            settings = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            settings = {}
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            if isinstance(settings.get(key), int) and settings[key] > 0:
                return settings[key], "the model's context length"
    return None, "not set, so no truncation was checked"


def _check_split(
    name: str, part: LoadedData, carved: float | None, tok: Any, max_length: int | None, progress: bool
) -> tuple[SplitReport, list[Finding]]:
    """Measure one split and list its problems."""
    examples = part.examples
    report = SplitReport(name, part.path, len(examples), part.format, part.kind, carved)
    findings: list[Finding] = []

    def add(level: str, code: str, message: str, origins: Iterable[Any] = ()) -> None:
        findings.append(Finding(level, code, message, name, [str(o) for o in list(origins)[:MAX_ORIGINS]]))

    measured = measure_examples(tok, examples, max_length=max_length, progress=progress, label=name)
    lengths = np.array([m.length for m in measured if m.length is not None], dtype=np.int64)
    if lengths.size:
        values = np.percentile(lengths, PERCENTILES, method="inverted_cdf")
        report.tokens = {f"p{p}": int(v) for p, v in zip(PERCENTILES, values)}
        report.tokens.update(max=int(lengths.max()), total=int(lengths.sum()))
    report.sample = next((m.sample for m in measured if m.sample), None)
    if report.sample and len(report.sample) > SAMPLE_CHARS:
        report.sample = report.sample[:SAMPLE_CHARS] + " …"

    failed = [(e.origin, m.error) for e, m in zip(examples, measured) if m.error]
    if failed:
        add("error", "render_failed",
            f"{_n(len(failed), 'row')} cannot be rendered or tokenized; the first: {failed[0][1]}", (o for o, _ in failed))
    truncated = [(e.origin, m) for e, m in zip(examples, measured) if m.truncated]
    report.truncated = len(truncated)
    if truncated:
        emptied = sum(1 for _, m in truncated if m.trained_tokens == 0)
        lost = f"; {emptied} of them lose every trained token" if emptied else ""
        n = len(truncated)
        add("warning", "truncated", f"{_n(n, 'row')} {_v(n, 'is', 'are')} longer than max_length {max_length} tokens "
            f"and would be cut{lost}", (o for o, _ in truncated))

    no_assistant = [e.origin for e, m in zip(examples, measured) if m.no_assistant]
    report.chats_without_assistant = len(no_assistant)
    if no_assistant:
        n = len(no_assistant)
        add("error", "no_assistant_turn", f"{_n(n, 'conversation')} {_v(n, 'has', 'have')} no assistant turn, so there "
            "is nothing to train on", no_assistant)
    report.assistant_turns = sum(m.assistant_turns for m in measured)
    open_turns = [(e.origin, m.assistant_turns - m.turns_ending_with_eot) for e, m in zip(examples, measured)
                  if m.assistant_turns > m.turns_ending_with_eot]
    report.turns_without_end_of_turn = sum(n for _, n in open_turns)
    if open_turns:
        n = report.turns_without_end_of_turn
        add("error", "no_end_of_turn", f"{n} of {report.assistant_turns} assistant turns {_v(n, 'does', 'do')} not end "
            "with the end-of-turn token, so the model would not learn to stop", (o for o, _ in open_turns))

    texts = [overlap.normalise(example_text(e)) for e in examples]
    empty = [e.origin for e, t in zip(examples, texts) if not t]
    report.empty = len(empty)
    if empty:
        add("warning", "empty_rows", f"{_n(len(empty), 'row')} {_v(len(empty), 'is', 'are')} empty", empty)
    first_seen: dict[str, int] = {}
    repeats: list[tuple[Example, int]] = []
    for i, text in enumerate(texts):
        if text and first_seen.setdefault(text, i) != i:
            repeats.append((examples[i], first_seen[text]))
    report.duplicates = len(repeats)
    if repeats:
        example, first = repeats[0]
        n = len(repeats)
        add("warning", "duplicate_rows", f"{_n(n, 'row')} {_v(n, 'repeats', 'repeat')} an earlier row (after whitespace "
            f"normalisation); e.g. {example.origin} repeats {examples[first].origin}", (e.origin for e, _ in repeats))

    conflicts = [(e, examples[first]) for e, first in repeats
                 if isinstance(e, ClassificationExample) and e.label != getattr(examples[first], "label", e.label)]
    if conflicts:
        example, earlier = conflicts[0]
        add("warning", "conflicting_labels", f"{_n(len(conflicts), 'row')} {_v(len(conflicts), 'repeats', 'repeat')} the "
            f"text of an earlier row with another label; e.g. {example.origin} says {example.label!r}, {earlier.origin} "
            f"says {getattr(earlier, 'label', '')!r}", (e.origin for e, _ in conflicts))

    if part.kind == "classification":
        report.labels = dict(Counter(e.label for e in examples if isinstance(e, ClassificationExample)).most_common())
        findings.extend(_class_balance(name, report.labels))

    found = [(e.origin, pii.find_personal_data(example_text(e))) for e in examples]
    found = [(o, f) for o, f in found if f]
    report.personal_data = dict(Counter(p.kind for _, f in found for p in f).most_common())
    if found:
        kinds = ", ".join(f"{count} {kind}" for kind, count in report.personal_data.items())
        n = len(found)
        add("warning", "personal_data", f"{_n(n, 'row')} {_v(n, 'holds', 'hold')} personal data ({kinds}); "
            "`tailor data check --redact OUT` writes a copy with it replaced", (o for o, _ in found))
    return report, findings


def _class_balance(split: str, labels: dict[str, int]) -> list[Finding]:
    """One class only is an error in train (a warning elsewhere); a strong imbalance is a warning."""
    shown = ", ".join(f"{label}: {count}" for label, count in labels.items())
    if len(labels) == 1:
        level = "error" if split == "train" else "warning"
        return [Finding(level, "single_class", f"every row has the label {next(iter(labels))!r}; a classifier needs "
                        "at least two classes", split)]
    largest, smallest = max(labels.values()), min(labels.values())
    if largest >= IMBALANCE_RATIO * smallest:
        return [Finding("warning", "label_imbalance", f"labels are strongly imbalanced ({shown}); the largest class has "
                        f"{largest / smallest:.0f}x the rows of the smallest", split)]
    return []


def _label_findings(splits: dict[str, LoadedData]) -> list[Finding]:
    """Labels in eval or test that train never shows."""
    if "train" not in splits or splits["train"].kind != "classification":
        return []
    known = {e.label for e in splits["train"].examples if isinstance(e, ClassificationExample)}
    findings = []
    for name, part in splits.items():
        unseen = [e for e in part.examples if isinstance(e, ClassificationExample) and e.label not in known]
        if name != "train" and unseen:
            labels = ", ".join(sorted({repr(e.label) for e in unseen}))
            message = f"{_n(len(unseen), 'row')} {_v(len(unseen), 'has', 'have')} labels that train never shows ({labels})"
            findings.append(Finding("warning", "unseen_labels", message, name, [str(e.origin) for e in unseen[:MAX_ORIGINS]]))
    return findings


def overlap_text(example: Example) -> str:
    """The text compared across splits: for chats, without system messages (often shared by every row)."""
    if isinstance(example, ChatExample):
        return "\n".join(m["content"] for m in example.messages if m["role"] != "system")
    return example_text(example)


def _check_overlap(
    a: str, part_a: LoadedData, b: str, part_b: LoadedData, threshold: float
) -> tuple[OverlapReport, list[Finding]]:
    """Rows of split b found in split a, exactly and nearly."""
    texts_a = [overlap_text(e) for e in part_a.examples]
    texts_b = [overlap_text(e) for e in part_b.examples]
    index: dict[str, int] = {}
    for i, text in enumerate(texts_a):
        if overlap.normalise(text):
            index.setdefault(overlap.text_hash(text), i)
    hashes = [overlap.text_hash(t) if overlap.normalise(t) else None for t in texts_b]
    exact = [(j, index[h]) for j, h in enumerate(hashes) if h in index]
    exact_rows = {j for j, _ in exact}
    rest = [j for j in range(len(texts_b)) if j not in exact_rows]
    found = overlap.near_duplicates([texts_b[j] for j in rest], texts_a, threshold=threshold)
    near = [(rest[q], c, sim) for q, c, sim in found]

    origin_a = [str(e.origin) for e in part_a.examples]
    origin_b = [str(e.origin) for e in part_b.examples]
    report = OverlapReport(
        a, b, len(exact), len(near), threshold,
        exact_pairs=[(origin_b[j], origin_a[i]) for j, i in exact[:MAX_ORIGINS]],
        near_pairs=[(origin_b[j], origin_a[i], sim) for j, i, sim in near[:MAX_ORIGINS]],
    )
    findings = []
    if exact:
        j, i = exact[0]
        message = (f"{_n(len(exact), b + ' row')} also {_v(len(exact), 'occurs', 'occur')} in {a} (e.g. {origin_b[j]} = "
                   f"{origin_a[i]}); scores on {b} would be inflated")
        findings.append(Finding("warning", "overlap_exact", message, b, [origin_b[j] for j, _ in exact[:MAX_ORIGINS]]))
    if near:
        j, i, sim = near[0]
        message = (f"{_n(len(near), b + ' row')} {_v(len(near), 'is a near duplicate', 'are near duplicates')} of {a} "
                   f"rows (character 5-gram Jaccard >= {threshold:g}; e.g. {origin_b[j]} ~ {origin_a[i]}, {sim:.2f})")
        findings.append(Finding("warning", "overlap_near", message, b, [origin_b[j] for j, _, _ in near[:MAX_ORIGINS]]))
    return report, findings


def _n(count: int, noun: str) -> str:
    """'1 row', '3 rows'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _v(count: int, singular: str, plural: str) -> str:
    """The verb form that agrees with `count`."""
    return singular if count == 1 else plural
