"""Seeded train/eval/test splits that are the same on every run and on every machine.

How an example finds its split: each distinct example text gets a sha256 hash of (seed, text). Within each
class (or over all examples when not stratifying) the distinct texts are ranked by hash, and a text's place is
its rank as a fraction of the class size. All texts are then ordered by place and cut by the ratios, in the
order the ratios are given. So:

- the result depends only on the examples' contents and the seed, never on the order of the rows or on Python's
  hash randomisation;
- each split gets its exact share (largest-remainder rounding), and each class its share to within one example;
- exact duplicates always land in the same split, so they cannot leak from train into eval;
- adding rows moves only the few examples that sit next to a cut; the rest keep their split.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterable

from tailorlm.data.examples import ClassificationExample, Example, example_text
from tailorlm.errors import ConfigError, DataError


def split_examples(
    examples: Iterable[Example], *, ratios: dict[str, float], seed: int = 0, stratify: bool = True
) -> dict[str, list[Example]]:
    """Split examples by ratio ({"train": 0.8, "eval": 0.1, "test": 0.1}); stratified by label for classification.

    Splits keep the input order of their examples. Every split with a positive ratio gets at least one
    distinct example when there are enough of them.

    >>> from tailorlm.data.examples import TextExample
    >>> parts = split_examples([TextExample(str(i)) for i in range(10)], ratios={"train": 0.8, "eval": 0.2})
    >>> {name: len(part) for name, part in parts.items()}
    {'train': 8, 'eval': 2}
    """
    check_ratios(ratios)
    examples = list(examples)
    require_two_classes(examples, where=_files(examples))
    groups: dict[str, list[int]] = {}  # distinct text -> indexes of its examples
    for index, example in enumerate(examples):
        groups.setdefault(example_text(example), []).append(index)
    keys = {text: _hash(seed, text) for text in groups}
    strata: dict[str, list[str]] = {}
    for text, indexes in groups.items():
        labels = [examples[i].label for i in indexes if isinstance(examples[i], ClassificationExample)]
        strata.setdefault(min(labels) if stratify and labels else "", []).append(text)
    place: dict[str, float] = {}
    for texts in strata.values():
        for rank, text in enumerate(sorted(texts, key=keys.__getitem__)):
            place[text] = (rank + 0.5) / len(texts)
    ordered = sorted(groups, key=lambda text: (place[text], keys[text]))
    assigned: dict[int, str] = {}
    start = 0
    for name, count in split_counts(len(ordered), ratios).items():
        for text in ordered[start:start + count]:
            assigned.update(dict.fromkeys(groups[text], name))
        start += count
    parts: dict[str, list[Example]] = {name: [] for name in ratios}
    for index, example in enumerate(examples):
        parts[assigned[index]].append(example)
    return parts


def split_counts(total: int, ratios: dict[str, float]) -> dict[str, int]:
    """How many of `total` items each split gets: largest-remainder rounding, at least one per positive ratio.

    >>> split_counts(10, {"train": 0.8, "eval": 0.1, "test": 0.1})
    {'train': 8, 'eval': 1, 'test': 1}
    >>> split_counts(5, {"train": 0.9, "eval": 0.1})
    {'train': 4, 'eval': 1}
    """
    exact = {name: total * ratio for name, ratio in ratios.items()}
    counts = {name: math.floor(value) for name, value in exact.items()}
    by_remainder = sorted(ratios, key=lambda name: (-(exact[name] - counts[name]), list(ratios).index(name)))
    for name in by_remainder[: total - sum(counts.values())]:
        counts[name] += 1
    positive = [name for name in ratios if ratios[name] > 0]
    if total >= len(positive):
        for name in positive:
            if counts[name] == 0:
                counts[max(counts, key=counts.__getitem__)] -= 1
                counts[name] = 1
    return counts


def check_ratios(ratios: dict[str, float]) -> None:
    """Ratios are non-negative numbers that add up to 1; ConfigError otherwise."""
    if not isinstance(ratios, dict) or not ratios:
        raise ConfigError("bad split ratios", key="split", found=repr(ratios), expected='a mapping such as {"train": 0.9, "eval": 0.1}')
    for name, ratio in ratios.items():
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
            raise ConfigError("bad split ratio", key=f"split.{name}", found=repr(ratio), expected="a number between 0 and 1")
    total = sum(ratios.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        shown = " + ".join(f"{name} {ratio:g}" for name, ratio in ratios.items())
        raise ConfigError("split ratios do not add up to 1", key="split", found=f"{shown} = {total:g}", expected="a total of 1")


def require_two_classes(examples: Iterable[Example], *, where: str) -> None:
    """Classification examples must have at least two distinct labels; DataError otherwise."""
    labels: dict[str, int] = {}
    for example in examples:
        if isinstance(example, ClassificationExample):
            labels[example.label] = labels.get(example.label, 0) + 1
    if len(labels) == 1:
        (label, count), = labels.items()
        raise DataError(
            f"only one class {label!r} in the data; classification needs at least two", where=where, key="label",
            found=f"all {count} rows labelled {label!r}", expected="at least two distinct labels",
            hint="Check that the label column is the right one (columns: {label: ...})",
        )


def _hash(seed: int, text: str) -> int:
    """A stable 64-bit hash of (seed, text)."""
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{text}".encode()).digest()[:8], "big")


def _files(examples: list[Example]) -> str:
    """The files the examples came from, for error messages."""
    files = sorted({e.origin.file for e in examples if e.origin is not None})
    return ", ".join(files) if files else "the examples"
