"""Write a copy of a data file with personal data replaced by placeholders ([EMAIL], [PHONE], [SSN], [CARD], [IP]).

JSON Lines, JSON and CSV/TSV files keep their format and layout (every string value or cell is redacted, keys
and numbers are left alone); any other input (Parquet, text, folders, gzipped files) is written as JSON Lines
of its records. The input is never overwritten.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tailorlm.data.loaders import read_records, read_text
from tailorlm.data.pii import PLACEHOLDERS, find_personal_data
from tailorlm.errors import ConfigError
from tailorlm.files import write_atomic

_JSONL = (".jsonl", ".ndjson")
_TABLES = {".csv": ",", ".tsv": "\t"}


@dataclass
class Redaction:
    """What `redact_data` wrote: the file, its format and how many values of each kind it replaced."""

    path: str
    format: str
    replaced: dict[str, int] = field(default_factory=dict)


def redact_data(source: str | Path, out_path: str | Path) -> Redaction:
    """Write a redacted copy of the data file `source` to `out_path` (never the input itself)."""
    source, out = Path(source), Path(out_path)
    if source.suffix.lower() in (".yaml", ".yml"):
        raise ConfigError("--redact needs a data file, not a recipe", where=str(source),
                          hint="run `tailor data check FILE --redact OUT` on each data file the recipe names")
    if _same_file(source, out):
        raise ConfigError("refusing to overwrite the input with its redacted copy", where=str(out),
                          found="the output path is the input file", expected="a new path, e.g. data.redacted.jsonl")
    records = read_records(source)  # validates the file and gives the usual row-level errors
    counts: Counter[str] = Counter()
    suffix = source.suffix.lower()
    if source.is_file() and suffix in _TABLES:
        text, written = _redact_table(read_text(source), _TABLES[suffix], counts), suffix[1:]
    elif source.is_file() and suffix == ".json" and (data := _json_or_none(read_text(source))) is not None:
        text, written = json.dumps(_redact_value(data, counts), ensure_ascii=False, indent=2) + "\n", "json"
    else:
        if not (source.is_file() and suffix in _JSONL) and out.suffix.lower() not in _JSONL:
            raise ConfigError("a redacted copy of this input is written as JSON Lines", where=str(out),
                              found=f"the output name {out.name!r}", expected="a name ending in .jsonl")
        lines = [json.dumps(_redact_value(r.fields, counts), ensure_ascii=False, default=str) for r in records]
        text, written = "\n".join(lines) + "\n", "jsonl"
    write_atomic(out, text)
    return Redaction(str(out), written, {kind: counts[kind] for kind in PLACEHOLDERS if counts[kind]})


def redact_counting(text: str, counts: Counter[str]) -> str:
    """`pii.redact`, also counting each replaced kind."""
    pieces, last = [], 0
    for found in find_personal_data(text):
        pieces += [text[last : found.start], PLACEHOLDERS[found.kind]]
        counts[found.kind] += 1
        last = found.end
    return "".join(pieces) + text[last:]


def _redact_value(value: Any, counts: Counter[str]) -> Any:
    """Every string inside a JSON value redacted; keys, numbers and booleans kept."""
    if isinstance(value, str):
        return redact_counting(value, counts)
    if isinstance(value, dict):
        return {key: _redact_value(item, counts) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact_value(item, counts) for item in value]
    return value


def _redact_table(text: str, delimiter: str, counts: Counter[str]) -> str:
    """Every cell of a CSV/TSV text redacted, header and row layout kept."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    for cells in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter):
        writer.writerow([redact_counting(cell, counts) for cell in cells])
    return out.getvalue()


def _json_or_none(text: str) -> Any:
    """The parsed JSON document, or None for JSON Lines saved as .json."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _same_file(source: Path, out: Path) -> bool:
    """Whether writing `out` would replace `source` (same path, a link to it, or a file inside a source folder)."""
    if out.resolve() == source.resolve() or (source.is_dir() and source.resolve() in out.resolve().parents):
        return True
    return out.exists() and source.exists() and os.path.samefile(source, out)
