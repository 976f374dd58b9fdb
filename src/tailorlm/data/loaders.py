"""Read data files into records: the fields of each row as found, and the file and 1-based row they came from.

Rows are numbered as a user would find them in an editor: the line number for JSON Lines, CSV/TSV (the line
where the data row starts, so with a header the first data row is 2) and text split by line or paragraph; the
item number (index + 1) for JSON arrays, Parquet and saved `datasets`; the question number for SQuAD files.
Every problem with a file ends in a `DataError` that names the file, the line and what was expected.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import io
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tailorlm.data.examples import Origin
from tailorlm.errors import ConfigError, DataError

CSV_QUOTING: dict[str, int] = {"minimal": csv.QUOTE_MINIMAL, "none": csv.QUOTE_NONE, "all": csv.QUOTE_ALL}
TEXT_SPLITS: tuple[str, ...] = ("file", "line", "paragraph")
JSONL_SUFFIXES: tuple[str, ...] = (".jsonl", ".ndjson")
TABLE_DELIMITERS: dict[str, str] = {".csv": ",", ".tsv": "\t"}
TEXT_SUFFIXES: tuple[str, ...] = (".txt", ".md")
SUPPORTED = (
    ".jsonl/.ndjson (JSON Lines), .json (array of objects, SQuAD-style or objects keyed by id), .csv, .tsv, "
    ".parquet, .txt/.md (plain text), .gz of any of these but Parquet, a folder of .txt/.md files, "
    "a folder saved by datasets' save_to_disk, a BEIR folder (corpus.jsonl, queries.jsonl, qrels/*.tsv)"
)
# A header cell is a short name: starts with a letter or underscore, at most four words, no sentence punctuation.
_HEADER_NAME = re.compile(r"^[A-Za-z_][\w.\-/()#]*( [\w.\-/()#]+){0,3}$")
_HEADER_SAMPLE_ROWS = 200
csv.field_size_limit(2**31 - 1)  # real corpora (IMDB reviews, abstracts) have fields far above the 128 KiB default


@dataclass
class Record:
    """One row of a data file: its fields as read, and where it came from."""

    fields: dict[str, Any]
    origin: Origin


@dataclass
class BeirData:
    """A BEIR folder: documents, queries and relevance judgements (qrels[split][query_id][doc_id] = score)."""

    corpus: list[Record]
    queries: list[Record]
    qrels: dict[str, dict[str, dict[str, int]]]


def read_records(
    path: str | Path,
    *,
    csv_delimiter: str | None = None,
    csv_header: bool | None = None,
    csv_quoting: str = "minimal",
    csv_columns: list[str] | None = None,
    text_split: str = "file",
    split: str | None = None,
) -> list[Record]:
    """Read a data file or folder into records; the file type comes from the extension or the folder's contents.

    `csv_*` options apply to .csv/.tsv files, and to a .txt file when `csv_delimiter` is given (so a
    tab-separated .txt file is read as a table). `text_split` cuts plain text into one record per file, line or
    paragraph. `split` picks one split of a saved `DatasetDict`; without it every split is read, each record
    carrying a `split` field. A BEIR folder yields its corpus (fields `_id`, `title`, `text`, ...); see `read_beir`.
    """
    _check_options(csv_delimiter, csv_quoting, csv_columns, text_split)
    path = Path(path)
    if not path.exists():
        raise _missing_path(path)
    if path.is_dir():
        return _read_folder(path, text_split, split)
    suffix, compressed = _suffix(path)
    if suffix == ".parquet" and not compressed:
        return _read_parquet(path)
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path, read_text(path))
    if suffix == ".json":
        return _read_json(path, read_text(path))
    if suffix in TABLE_DELIMITERS or (suffix in TEXT_SUFFIXES and csv_delimiter is not None):
        delimiter = csv_delimiter or TABLE_DELIMITERS[suffix]
        return _read_table(path, read_text(path), delimiter, csv_header, CSV_QUOTING[csv_quoting], csv_columns)
    if suffix in TEXT_SUFFIXES:
        return _text_records(path, read_text(path), text_split)
    raise DataError("unknown file type", where=str(path), found=f"the extension {path.name[len(path.stem):] or '(none)'!r}",
                    expected=SUPPORTED, hint="Rename the file to the extension that matches its contents")


def read_beir(folder: str | Path) -> BeirData:
    """Read a BEIR folder: corpus.jsonl (`_id`, `text`, optional `title`), optional queries.jsonl and qrels/*.tsv."""
    folder = Path(folder)
    corpus_path = _first_existing(folder, "corpus.jsonl", "corpus.jsonl.gz")
    if corpus_path is None:
        raise DataError("not a BEIR folder", where=str(folder), found=_listing(folder),
                        expected="corpus.jsonl with _id, title and text, plus queries.jsonl and qrels/*.tsv")
    corpus = read_records(corpus_path)
    _require_fields(corpus, ("_id", "text"))
    queries_path = _first_existing(folder, "queries.jsonl", "queries.jsonl.gz")
    queries = read_records(queries_path) if queries_path else []
    _require_fields(queries, ("_id", "text"))
    qrels: dict[str, dict[str, dict[str, int]]] = {}
    for tsv in sorted((folder / "qrels").glob("*.tsv")):
        judged: dict[str, dict[str, int]] = {}
        for record in read_records(tsv, csv_columns=["query-id", "corpus-id", "score"]):
            score = _as_int(record.fields["score"], record.origin, "score")
            judged.setdefault(record.fields["query-id"], {})[record.fields["corpus-id"]] = score
        qrels[tsv.stem] = judged
    return BeirData(corpus, queries, qrels)


def read_text(path: Path) -> str:
    """The file's text, decoded from UTF-8 (gunzipped first for .gz); DataError for empty, binary or non-UTF-8 files."""
    raw = path.read_bytes()
    compressed = path.suffix.lower() == ".gz"
    if compressed and raw:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError("cannot decompress the file", where=str(path), found=str(err), expected="gzip data") from None
    return decode_text(raw, where=str(path), note=" after decompression" if compressed else "")


def decode_text(raw: bytes, *, where: str, note: str = "") -> str:
    """Decode UTF-8 bytes (a leading BOM dropped), naming the byte offset and line of anything that is not text."""
    if not raw.strip():
        found = "0 bytes" if not raw else "only whitespace"
        raise DataError("the file is empty", where=where, found=found + note, expected="at least one row of data")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(
            "the file is UTF-16 text", where=where, found="a UTF-16 byte-order mark at byte offset 0",
            expected="UTF-8 text", hint="Re-save the file as UTF-8, e.g. iconv -f utf-16 -t utf-8",
        )
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise DataError(
            "binary data, not text", where=f"{where}, line {_line_of(raw, nul)}",
            found=f"a NUL byte at byte offset {nul}{note}", expected="UTF-8 text",
            hint="Check that the extension matches the contents (Parquet files must end in .parquet)",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            "the file is not UTF-8 text", where=f"{where}, line {_line_of(raw, err.start)}",
            found=f"byte 0x{raw[err.start]:02x} at byte offset {err.start}{note}", expected="UTF-8 text",
            hint="Re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8",
        ) from None
    return text.removeprefix("\ufeff")


def _line_of(raw: bytes, offset: int) -> int:
    """The 1-based line that holds a byte offset."""
    return raw.count(b"\n", 0, offset) + 1


def _check_options(delimiter: str | None, quoting: str, columns: list[str] | None, text_split: str) -> None:
    """Reject read options that cannot work, before touching the file."""
    if delimiter is not None and (not isinstance(delimiter, str) or len(delimiter) != 1):
        raise ConfigError("bad CSV delimiter", key="csv_delimiter", found=repr(delimiter), expected="one character, e.g. ',' or '\\t'")
    if quoting not in CSV_QUOTING:
        raise ConfigError("unknown CSV quoting", key="csv_quoting", found=repr(quoting), expected="one of " + ", ".join(CSV_QUOTING))
    if columns is not None and (isinstance(columns, str) or not all(isinstance(c, str) and c for c in columns)):
        raise ConfigError("bad CSV column names", key="csv_columns", found=repr(columns), expected="a list of non-empty names")
    if text_split not in TEXT_SPLITS:
        raise ConfigError("unknown text split", key="text_split", found=repr(text_split), expected="one of " + ", ".join(TEXT_SPLITS))


def _suffix(path: Path) -> tuple[str, bool]:
    """The data extension (lower case) and whether the file is gzipped: data.jsonl.gz -> ('.jsonl', True)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        return (suffixes[-2] if len(suffixes) > 1 else ""), True
    return (suffixes[-1] if suffixes else ""), False


def _missing_path(path: Path) -> DataError:
    """A 'no such file' error, with the closest name in the folder when there is one."""
    parent, hint = path.parent, None
    if not parent.is_dir():
        hint = f"The folder {str(parent)!r} does not exist either"
    elif close := difflib.get_close_matches(path.name, [p.name for p in parent.iterdir()], n=1, cutoff=0.6):
        hint = f"Did you mean {str(parent / close[0])!r}?"
    return DataError("no such file or folder", where=str(path), found="nothing at that path", expected="an existing data file or folder", hint=hint)


def _read_jsonl(path: Path, text: str) -> list[Record]:
    """One record per non-blank line; each line must be one JSON object."""
    records = []
    # Split on "\n" only: JSON strings may hold U+2028 or U+0085, which str.splitlines would treat as line ends.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                "malformed JSON", where=where, found=f"{err.msg} at column {err.colno}: {_excerpt(line, err.pos)}",
                expected="one complete JSON object per line",
                hint="A JSON value may not span several lines in a .jsonl file",
            ) from None
        if not isinstance(value, dict):
            raise DataError("a line is not a JSON object", where=where, found=f"{_json_type(value)}: {_excerpt(line, 0)}",
                            expected='a JSON object such as {"text": "..."}')
        records.append(Record(value, Origin(str(path), number)))
    return records


def _read_json(path: Path, text: str) -> list[Record]:
    """A JSON array of objects, a SQuAD file (one record per question), or objects keyed by id."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data" and text.lstrip().startswith("{"):
            return _read_jsonl(path, text)  # JSON Lines saved as .json, as datasets' to_json writes by default
        raise DataError(
            "malformed JSON", where=f"{path}, line {err.lineno}", found=f"{err.msg} at column {err.colno}",
            expected="a JSON array of objects, a SQuAD-style {\"data\": [...]} file or JSON Lines",
        ) from None
    if isinstance(value, list):
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise DataError("an item of the JSON array is not an object", where=f"{path}, row {index + 1}",
                                found=_json_type(item), expected='a JSON object such as {"text": "..."}')
        return [Record(item, Origin(str(path), index + 1)) for index, item in enumerate(value)]
    if isinstance(value, dict) and _is_squad(value):
        return _squad_records(path, value["data"])
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        return [Record({"id": key, **item}, Origin(str(path), n)) for n, (key, item) in enumerate(value.items(), 1)]
    raise DataError(
        "unsupported JSON layout", where=str(path), found=_json_type(value),
        expected='an array of objects, a SQuAD-style {"data": [{"paragraphs": [...]}]} or objects keyed by id',
    )


def _is_squad(value: dict) -> bool:
    """True for the SQuAD layout: {"data": [{"title", "paragraphs": [{"context", "qas"}]}]}."""
    data = value.get("data")
    return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and "paragraphs" in data[0]


def _squad_records(path: Path, data: list) -> list[Record]:
    """Flatten SQuAD articles into one record per question: context, question, answers, id, title."""
    records: list[Record] = []
    for a, article in enumerate(data):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            place = f"{path}, data[{a}].paragraphs[{p}]"
            context = _squad_field(paragraph, "context", place)
            for q, qa in enumerate(paragraph.get("qas", [])):
                fields = {
                    "id": qa.get("id"),
                    "title": article.get("title", ""),
                    "context": context,
                    "question": _squad_field(qa, "question", f"{place}.qas[{q}]"),
                    "answers": qa.get("answers", []),
                }
                if "is_impossible" in qa:
                    fields["is_impossible"] = qa["is_impossible"]
                records.append(Record(fields, Origin(str(path), len(records) + 1)))
    return records


def _squad_field(item: Any, key: str, where: str) -> Any:
    """A required field of a SQuAD paragraph or question."""
    if not isinstance(item, dict) or key not in item:
        found = f"keys {', '.join(item)}" if isinstance(item, dict) else _json_type(item)
        raise DataError("missing field in a SQuAD file", where=where, key=key, found=found, expected=f"an object with {key!r}")
    return item[key]


def _read_table(path: Path, text: str, delimiter: str, header: bool | None, quoting: int,
                columns: list[str] | None) -> list[Record]:
    """CSV/TSV rows as records keyed by the header, `columns`, or col0, col1, ..."""
    rows = list(_csv_rows(path, text, delimiter, quoting))
    if not rows:
        return []
    if header is None:
        header = looks_like_header(rows[0][1], [cells for _, cells in rows[1:_HEADER_SAMPLE_ROWS]])
    names = [c.strip() or f"col{i}" for i, c in enumerate(rows[0][1])] if header else [f"col{i}" for i in range(len(rows[0][1]))]
    if header:
        rows = rows[1:]
    if columns is not None:
        if len(columns) != len(names):
            raise DataError("csv_columns does not match the file", where=f"{path}, line {rows[0][0] if rows else 1}",
                            key="csv_columns", found=f"{len(names)} columns in the file", expected=f"{len(columns)} columns ({', '.join(columns)})")
        names = list(columns)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError("duplicate column names", where=f"{path}, line 1", found=", ".join(duplicates),
                        expected="distinct names", hint="Name the columns with csv_columns")
    records = []
    for line, cells in rows:
        if len(cells) != len(names):
            raise DataError(
                "wrong number of fields", where=f"{path}, line {line}", found=f"{len(cells)} fields",
                expected=f"{len(names)} fields ({', '.join(names)})",
                hint="If the text holds quote characters, read it with csv_quoting: none; check the delimiter",
            )
        records.append(Record(dict(zip(names, cells)), Origin(str(path), line)))
    return records


def _csv_rows(path: Path, text: str, delimiter: str, quoting: int) -> Iterator[tuple[int, list[str]]]:
    """(line where the row starts, cells) for every non-blank row."""
    # newline="" keeps quoted line breaks inside fields and leaves U+0085 (in real IMDB reviews) alone.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    start = 1
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1
            if cells and not (len(cells) == 1 and not cells[0].strip()):
                yield line, cells
    except csv.Error as err:
        raise DataError("unreadable CSV", where=f"{path}, line {start}", found=str(err), expected="delimited text") from None


def looks_like_header(first: list[str], rest: list[list[str]]) -> bool:
    """Guess whether a table's first row is a header.

    It is when every cell is a distinct short name (not a number, at most four words) and no cell appears again
    in its column within the next rows: a label column repeats its values, a header name does not.

    >>> looks_like_header(["text", "label"], [["Good case.", "1"], ["Bad.", "0"]])
    True
    >>> looks_like_header(["0", "to water, cloudlike", "0"], [["1", "shall yet be glad", "1"]])
    False
    """
    names = [c.strip() for c in first]
    if len(set(names)) != len(names) or not all(_HEADER_NAME.match(n) for n in names):
        return False
    return not any(i < len(row) and row[i].strip() == name for row in rest for i, name in enumerate(names))


def _read_parquet(path: Path) -> list[Record]:
    """One record per Parquet row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        raise DataError("the file is empty", where=str(path), found="0 bytes", expected="at least one row of data")
    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise DataError("cannot read the Parquet file", where=str(path), found=str(err), expected="a Parquet file") from None
    return [Record(row, Origin(str(path), n)) for n, row in enumerate(rows, start=1)]


def _text_records(path: Path, text: str, text_split: str) -> list[Record]:
    """Plain text as one record per file, per non-blank line, or per paragraph (lines between blank lines)."""
    if text_split == "file":
        return [Record({"text": text}, Origin(str(path), 1))]
    records: list[Record] = []
    block: list[str] = []
    start = 0
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if text_split == "line":
            if line.strip():
                records.append(Record({"text": line}, Origin(str(path), number)))
        elif line.strip():
            start = start or number
            block.append(line)
        elif block:
            records.append(Record({"text": "\n".join(block)}, Origin(str(path), start)))
            block, start = [], 0
    if block:
        records.append(Record({"text": "\n".join(block)}, Origin(str(path), start)))
    return records


def _read_folder(folder: Path, text_split: str, split: str | None) -> list[Record]:
    """A BEIR folder's corpus, a saved `datasets` folder, or every .txt/.md file below the folder, in path order."""
    if _first_existing(folder, "corpus.jsonl", "corpus.jsonl.gz"):
        return read_beir(folder).corpus
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        return _read_saved_dataset(folder, split)
    files = sorted(
        (p for p in folder.rglob("*") if p.is_file() and _suffix(p)[0] in TEXT_SUFFIXES
         and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not files:
        raise DataError("no data files in the folder", where=str(folder), found=_listing(folder),
                        expected=".txt/.md files, a saved `datasets` folder or a BEIR folder")
    records: list[Record] = []
    for file in files:
        raw = file.read_bytes()
        if file.suffix.lower() == ".gz" or raw.strip():  # empty files in a folder of documents are skipped
            records.extend(_text_records(file, read_text(file), text_split))
    if not records:
        raise DataError("every text file in the folder is empty", where=str(folder), found=f"{len(files)} empty files", expected="some text")
    return records


def _read_saved_dataset(folder: Path, split: str | None) -> list[Record]:
    """Rows of a folder written by `save_to_disk`; for a DatasetDict, one split or all with a `split` field."""
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(folder))
    except Exception as err:  # noqa: BLE001 - datasets raises many types; the user needs one clear message
        raise DataError("cannot read the saved `datasets` folder", where=str(folder), found=f"{type(err).__name__}: {err}",
                        expected="a folder written by Dataset.save_to_disk or DatasetDict.save_to_disk") from None
    if not isinstance(dataset, DatasetDict):
        if split is not None:
            raise DataError("the saved dataset has no splits", where=str(folder), key="split", found=repr(split),
                            expected="no split for a single Dataset")
        return [Record(row, Origin(str(folder), n)) for n, row in enumerate(dataset.to_list(), start=1)]
    if split is not None and split not in dataset:
        close = difflib.get_close_matches(split, list(dataset), n=1)
        raise DataError("no such split", where=str(folder), key="split", found=repr(split),
                        expected="one of " + ", ".join(dataset), hint=f"Did you mean {close[0]!r}?" if close else None)
    names = [split] if split is not None else list(dataset)
    return [
        Record(row if split is not None else {**row, "split": name}, Origin(f"{folder}#{name}", n))
        for name in names
        for n, row in enumerate(dataset[name].to_list(), start=1)
    ]


def _require_fields(records: list[Record], keys: tuple[str, ...]) -> None:
    """Every record has these fields."""
    for record in records:
        for key in keys:
            if key not in record.fields:
                raise DataError("missing field", where=str(record.origin), key=key,
                                found="fields " + ", ".join(record.fields), expected=f"a {key!r} field")


def _as_int(value: Any, origin: Origin, key: str) -> int:
    """An integer written as text, or a DataError naming the row."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError("not an integer", where=str(origin), key=key, found=repr(value), expected="an integer") from None


def _first_existing(folder: Path, *names: str) -> Path | None:
    """The first of these files that exists in the folder."""
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _listing(folder: Path, limit: int = 8) -> str:
    """A short listing of a folder's entries, for error messages."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "an empty folder"
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _json_type(value: Any) -> str:
    """The JSON name of a value's type, with an article."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _excerpt(line: str, pos: int, width: int = 30) -> str:
    """The text around a position, quoted, for error messages."""
    start = max(0, pos - width)
    return repr(("..." if start else "") + line[start:pos + width] + ("..." if pos + width < len(line) else ""))
