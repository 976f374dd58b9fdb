"""A token cache's corpus read as documents: UTF-8 text files (one document each) and JSON Lines files (one per row),
streamed in blocks and cut into pieces of bounded size, and the pieces tokenized back into each document's tokens.

Long documents. A document longer than `WINDOW_CHARS` is tokenized in pieces, so memory does not grow with its size:
each piece is tokenized with `CONTEXT_CHARS` characters of the text around it and keeps the tokens that *start*
inside it (by the tokenizer's character offsets). Tokenization is local, so the pieces join into the tokens of the
whole document tokenized at once; the exception would be a run of more than `CONTEXT_CHARS` characters that the
tokenizer cannot split (no whitespace or punctuation), cut by a piece boundary.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tailorlm.errors import ConfigError, DataError

JSONL_SUFFIXES = (".jsonl", ".ndjson")
WINDOW_CHARS = 1 << 18  # characters of a long document tokenized as one piece
CONTEXT_CHARS = 1 << 11  # characters of context on each side of a piece
ROW_CHARS = 1 << 19  # characters per dataset row: pieces and documents grouped, so a row is one batch of work
READ_BYTES = 1 << 20


# A piece of text to tokenize: (text, lo, hi, ends). Tokens starting before `lo` or at/after `hi` (character offsets
# into `text`; -1 for no bound) belong to a neighbouring piece; `ends` puts EOS after it (the end of a document).
Piece = tuple[str, int, int, bool]


def rows(pieces: Iterable[Piece], counts: dict) -> Iterator[dict]:
    """Group pieces into dataset rows of about ROW_CHARS characters."""
    row: dict[str, list] = {"texts": [], "lo": [], "hi": [], "eos": []}
    size = 0
    for text, lo, hi, ends in pieces:
        for column, value in zip(row, (text, lo, hi, ends)):
            row[column].append(value)
        size += len(text)
        counts["documents"] += ends
        if size >= ROW_CHARS:
            yield row
            row, size = {"texts": [], "lo": [], "hi": [], "eos": []}, 0
    if row["texts"]:
        yield row


def pieces(paths: list[Path], advance: Callable[[int], None], *, offsets: bool) -> Iterator[Piece]:
    """Every document's pieces, in file order; `offsets`: whether the tokenizer can give character offsets."""
    for path in paths:
        documents = jsonl_texts(path, advance) if kind(path) == "jsonl" else [text_blocks(path, advance)]
        for number, document in enumerate(documents, start=1):
            for piece in windows([document] if isinstance(document, str) else document):
                if not offsets and piece[1:3] != (-1, -1):
                    raise ConfigError(
                        f"a document longer than {WINDOW_CHARS:,} characters needs a fast tokenizer",
                        where=f"{path}:{number}" if kind(path) == "jsonl" else str(path),
                        found="a tokenizer without character offsets (is_fast is False)",
                        hint="Load the tokenizer with AutoTokenizer.from_pretrained(..., use_fast=True)",
                    )
                yield piece


def windows(blocks: Iterable[str]) -> Iterator[Piece]:
    """The pieces of one document given as consecutive blocks of text; nothing for an empty or blank document."""
    buf, buf_at, cut, seen = "", 0, 0, False  # buf holds the text from absolute position buf_at; cut: next piece
    for block in blocks:
        buf += block
        seen = seen or not block.isspace()
        while buf_at + len(buf) > cut + WINDOW_CHARS + CONTEXT_CHARS:
            begin = max(0, cut - CONTEXT_CHARS)
            text = buf[begin - buf_at : cut + WINDOW_CHARS + CONTEXT_CHARS - buf_at]
            yield text, (cut - begin if cut else -1), cut + WINDOW_CHARS - begin, False
            cut += WINDOW_CHARS
            buf, buf_at = buf[cut - CONTEXT_CHARS - buf_at :], cut - CONTEXT_CHARS
    if cut == 0 and (not buf or not seen):
        return  # an empty or whitespace-only document (a blank file longer than one window is kept: rare)
    begin = max(0, cut - CONTEXT_CHARS)
    yield buf[begin - buf_at :], (cut - begin if cut else -1), -1, True


def text_blocks(path: Path, advance: Callable[[int], None]) -> Iterator[str]:
    """A UTF-8 file's text in blocks (a leading byte-order mark dropped, line ends kept as they are)."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")("strict")
    at, lines = 0, 1
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(READ_BYTES), b""):
            if b"\0" in block:
                nul = block.index(b"\0")
                raise not_text(path, lines + block.count(b"\n", 0, nul), at + nul, "a NUL byte: a binary file")
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(block)
            except UnicodeDecodeError as err:
                bad = max(0, err.start - pending)
                raise not_text(
                    path, lines + block.count(b"\n", 0, bad), at + bad, f"byte 0x{block[bad]:02x}, not UTF-8"
                ) from None
            at += len(block)
            lines += block.count(b"\n")
            advance(len(block))
            if text:
                yield text
        try:
            tail = decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise not_text(path, lines, at, "a multi-byte character cut short at the end of the file") from None
        if tail:
            yield tail


def jsonl_texts(path: Path, advance: Callable[[int], None]) -> Iterator[str]:
    """The `text` field of each row of a JSON Lines file; blank lines are skipped."""
    unreported = 0
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            unreported += len(raw)
            if unreported >= READ_BYTES:
                advance(unreported)
                unreported = 0
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                raise DataError(
                    "this line is not UTF-8 text",
                    where=where,
                    found=f"byte 0x{raw[err.start]:02x} at column {err.start + 1}",
                    expected="UTF-8 JSON Lines",
                ) from None
            except ValueError as err:
                raise DataError(
                    "this line is not valid JSON", where=where, found=str(err), expected="one JSON object per line"
                ) from None
            if not isinstance(row, dict) or "text" not in row:
                raise DataError(
                    "a JSONL row for pre-training needs a text field",
                    where=where,
                    key="text",
                    found=f"keys {sorted(row)}" if isinstance(row, dict) else f"a JSON {type(row).__name__}",
                    expected='an object such as {"text": "..."}',
                )
            if not isinstance(row["text"], str):
                raise DataError(
                    "the text field must be a string",
                    where=where,
                    key="text",
                    found=f"a JSON {type(row['text']).__name__}",
                    expected="a string",
                )
            yield row["text"]
    advance(unreported)


def not_text(path: Path, line: int, offset: int, found: str) -> DataError:
    return DataError(
        "the file is not UTF-8 text",
        where=f"{path}:{line}",
        found=f"{found} at byte {offset:,}",
        expected="UTF-8 text files, or JSON Lines (.jsonl) with a text field",
        hint="Convert it to UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or leave it out of the corpus",
    )


def kind(path: Path) -> str:
    return "jsonl" if path.suffix.lower() in JSONL_SUFFIXES else "text"


def check_files(files: Sequence[Path] | Path | str) -> list[Path]:
    paths = [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(f) for f in files]
    if not paths:
        raise DataError("no corpus files given", expected="one or more UTF-8 text or JSONL files")
    for path in paths:
        if path.is_dir():
            raise DataError(
                "a corpus file is a folder",
                where=str(path),
                expected="files (text or JSONL)",
                hint=f"Pass the files in it, e.g. {path}/*.txt",
            )
        if not path.is_file():
            raise DataError("no such file", where=str(path), expected="an existing UTF-8 text or JSONL file")
    return paths


def tokenize_rows(batch: dict, tokenizer: Any, eos_id: int | None, done_file: str) -> dict:
    """The token ids of each row: its texts tokenized, pieces of long documents trimmed, EOS after each document."""
    ids = [
        tokenize_row(texts, lo, hi, ends, tokenizer, eos_id)
        for texts, lo, hi, ends in zip(batch["texts"], batch["lo"], batch["hi"], batch["eos"])
    ]
    # One byte per row, appended (atomic with O_APPEND): the parent reads the file's size as tokenizing progress.
    with open(done_file, "ab") as fh:
        fh.write(b"\0" * len(ids))
    return {"ids": ids}


def tokenize_row(
    texts: list[str], lo: list[int], hi: list[int], ends: list[bool], tokenizer: Any, eos_id: int | None
) -> np.ndarray:
    offsets = any(a >= 0 or b >= 0 for a, b in zip(lo, hi))
    encoded = tokenizer(
        texts,
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        return_offsets_mapping=offsets,
        verbose=False,  # pieces are longer than the model's context; that warning is noise here
    )
    parts = []
    for i, ids in enumerate(encoded["input_ids"]):
        ids = np.asarray(ids, dtype=np.int64)
        if lo[i] >= 0 or hi[i] >= 0:
            starts = np.fromiter((s for s, _ in encoded["offset_mapping"][i]), dtype=np.int64, count=len(ids))
            keep = np.ones(len(ids), dtype=bool)
            if lo[i] >= 0:
                keep &= starts >= lo[i]
            if hi[i] >= 0:
                keep &= starts < hi[i]
            ids = ids[keep]
        parts.append(ids)
        if ends[i] and eos_id is not None:
            parts.append(np.array([eos_id], dtype=np.int64))
    return np.concatenate(parts).astype(np.uint32) if parts else np.zeros(0, dtype=np.uint32)


# --- checks, keys and the cache folder ----------------------------------------------------------------------------
