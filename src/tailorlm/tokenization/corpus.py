"""A tokenizer corpus: text files, folders of them and data files, checked up front and read as a stream of blocks.

Plain text (.txt, .md, either gzipped) is streamed: it is read in pieces of at most `_PIECE_CHARS` characters and cut
into blocks at blank lines (a paragraph) or once a block reaches `BLOCK_CHARS`, so a file larger than memory is never
held whole. The blocks of a file, joined, are the file's text exactly. Data files (JSONL, JSON, CSV, TSV, Parquet)
go through the project's loaders (`tailorlm.data.formats.load_examples` with the `text` format), one block per row;
those loaders hold one file in memory at a time.

Block `i` (counted over the whole corpus, in the order the paths were given) is held out when
`floor((i + 1) * fraction) > floor(i * fraction)`: with 0.05 that is blocks 19, 39, 59, ... (every 20th), the
same blocks on every run.

    corpus = Corpus.open(["data/notes.txt", "data/faq.jsonl"], column="answer")
    training = corpus.texts(held_out=0.05, part="train")
"""

from __future__ import annotations

import codecs
import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

from tailorlm.errors import ConfigError, DataError

TEXT_SUFFIXES: tuple[str, ...] = (".txt", ".md")
DATA_SUFFIXES: tuple[str, ...] = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")
BLOCK_CHARS = 4096
_PIECE_CHARS = 1 << 20
_CHECK_BYTES = 1 << 20
PARTS: tuple[str, ...] = ("all", "train", "held_out")
NEWLINE = b"\n"


def is_held_out(index: int, fraction: float) -> bool:
    """Whether block `index` (0-based) belongs to the held-out part: spread evenly, exactly `fraction` of the blocks.

    >>> [i for i in range(60) if is_held_out(i, 0.05)]
    [19, 39, 59]
    """
    return int((index + 1) * fraction) > int(index * fraction)


def check_fraction(fraction: float, key: str = "--held-out") -> float:
    """A held-out fraction in [0, 0.5], or ConfigError."""
    if not 0.0 <= fraction <= 0.5:
        raise ConfigError("held-out fraction out of range", key=key, found=repr(fraction),
                          expected="a number from 0 (hold nothing out) to 0.5, e.g. 0.05 (every 20th block)")
    return fraction


@dataclass
class Source:
    """One corpus file: plain text (streamed) or a data file (read with the project's loaders)."""

    path: Path
    streamed: bool
    size: int
    """Bytes on disk (for progress)."""


@dataclass
class Corpus:
    """The checked files of a corpus, in order, and the column that holds the text of data files."""

    sources: list[Source]
    column: str | None = None
    _rows: dict[Path, list[str]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, paths: list[str | Path], *, column: str | None = None) -> "Corpus":
        """Find and check every file: DataError for a missing path, an unknown type, binary or non-UTF-8 text, or no text.

        A file named directly must hold text; empty files inside a folder are skipped, as the data loaders do.
        """
        if not paths:
            raise DataError("the corpus is empty", found="no files", expected="at least one text or data file")
        corpus = cls([], column)
        for raw in paths:
            path = Path(raw)
            if not path.exists():
                raise DataError("no such file or folder", where=str(path),
                                expected="an existing text or data file, or a folder of them")
            if path.is_dir():
                files = _folder_files(path)
                if not files:
                    raise DataError("no text or data files in the folder", where=str(path), found=_listing(path),
                                    expected=".txt or .md files (or .gz of them), or data files (.jsonl, .csv, ...)")
                sources = [s for s in (corpus._check(f, named=False) for f in files) if s is not None]
                if not sources:
                    raise DataError("every text file in the folder is empty", where=str(path),
                                    found=f"{len(files)} empty files", expected="some text")
                corpus.sources.extend(sources)
            else:
                corpus.sources.append(corpus._check(path, named=True))
        return corpus

    @property
    def size(self) -> int:
        """Bytes on disk over all files."""
        return sum(source.size for source in self.sources)

    def blocks(self) -> Iterator[tuple[int, Source, str]]:
        """(block index over the corpus, its file, its text) for every block, in order."""
        index = 0
        for source in self.sources:
            for text in self._source_blocks(source):
                yield index, source, text
                index += 1

    def texts(self, *, held_out: float, part: str) -> Iterator[str]:
        """The blocks of one part: `train` (not held out), `held_out`, or `all`."""
        if part not in PARTS:
            raise ConfigError("unknown corpus part", key="part", found=repr(part), expected="one of " + ", ".join(PARTS))
        for index, _, text in self.blocks():
            if part == "all" or is_held_out(index, held_out) == (part == "held_out"):
                yield text

    def _source_blocks(self, source: Source) -> Iterator[str]:
        if source.streamed:
            with _open_text(source.path) as stream:
                yield from text_blocks(stream)
        else:
            yield from self._row_texts(source.path)

    def _row_texts(self, path: Path) -> list[str]:
        """The text column of a data file's rows (blank rows dropped), read once and kept."""
        if path not in self._rows:
            from tailorlm.data.formats import load_examples

            columns = {"text": self.column} if self.column else None
            try:
                loaded = load_examples(path, format="text", columns=columns)
            except DataError as err:
                if not err.what.startswith("missing column"):
                    raise
                raise DataError(err.what, where=err.where, key=err.key, found=err.found, expected=err.expected,
                                hint="Name the column that holds the text with --column NAME") from None
            self._rows[path] = [example.text for example in loaded.examples if example.text.strip()]
        return self._rows[path]

    def _check(self, path: Path, *, named: bool) -> Source | None:
        suffix, compressed = _suffix(path)
        if suffix in TEXT_SUFFIXES:
            has_text = _check_text_file(path, compressed)
            if not has_text:
                if named:
                    raise DataError("the file is empty", where=str(path), found="no text (0 bytes or only whitespace)",
                                    expected="some text")
                return None
            return Source(path, True, path.stat().st_size)
        if suffix in DATA_SUFFIXES and not (compressed and suffix == ".parquet"):
            if not named and path.stat().st_size == 0:
                return None
            source = Source(path, False, path.stat().st_size)
            if not self._row_texts(path):
                raise DataError("no text in the file", where=str(path), found="only blank values in the text column",
                                expected="some text")
            return source
        raise DataError(
            "unknown file type for a tokenizer corpus", where=str(path),
            found=f"the extension {path.name[len(path.stem):] or '(none)'!r}",
            expected="plain text (.txt, .md, or .gz of them), a folder of them, or a data file "
                     "(.jsonl, .json, .csv, .tsv, .parquet) with a text column",
            hint="Rename the file to the extension that matches its contents",
        )


def text_blocks(stream: IO[str], *, block_chars: int = BLOCK_CHARS) -> Iterator[str]:
    """Cut a text stream into blocks that end after a blank line or once they reach `block_chars`.

    Reads at most `_PIECE_CHARS` characters at a time, so a single huge line is split too. Joined, the blocks are
    the stream's text.

    >>> list(text_blocks(io.StringIO("a\\nb\\n\\nc\\n")))
    ['a\\nb\\n\\n', 'c\\n']
    """
    block: list[str] = []
    length = 0
    while piece := stream.readline(_PIECE_CHARS):
        block.append(piece)
        length += len(piece)
        if length >= block_chars or not piece.strip():
            yield "".join(block)
            block, length = [], 0
    if block:
        yield "".join(block)


def _check_text_file(path: Path, compressed: bool) -> bool:
    """Scan a text file in pieces: DataError naming the line and byte offset of a NUL byte or a non-UTF-8 byte.

    Returns whether the file holds any non-whitespace text.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line, has_text = 0, 1, False
    with _open_bytes(path, compressed) as stream:
        while chunk := stream.read(_CHECK_BYTES):
            if offset == 0 and chunk.startswith((b"\xff\xfe", b"\xfe\xff")):
                raise DataError("the file is UTF-16 text", where=str(path),
                                found="a UTF-16 byte-order mark at byte offset 0", expected="UTF-8 text",
                                hint="Re-save the file as UTF-8, e.g. iconv -f utf-16 -t utf-8")
            nul = chunk.find(b"\x00")
            if nul >= 0:
                raise DataError(
                    "binary data, not text", where=f"{path}, line {line + chunk.count(NEWLINE, 0, nul)}",
                    found=f"a NUL byte at byte offset {offset + nul}", expected="UTF-8 text",
                    hint="A tokenizer corpus must be text; leave binary files out",
                )
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as err:
                # err.object is the bytes held back from the previous piece followed by this piece.
                raise DataError(
                    "the file is not UTF-8 text", where=f"{path}, line {line + err.object.count(NEWLINE, 0, err.start)}",
                    found=f"byte 0x{err.object[err.start]:02x} at byte offset {offset - pending + err.start}",
                    expected="UTF-8 text", hint="Re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8",
                ) from None
            has_text = has_text or bool(text.strip())
            offset += len(chunk)
            line += chunk.count(NEWLINE)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DataError("the file is not UTF-8 text", where=f"{path}, line {line}",
                        found=f"a cut-off UTF-8 sequence at the end (byte offset {offset})", expected="UTF-8 text") from None
    return has_text


def _open_bytes(path: Path, compressed: bool) -> IO[bytes]:
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def _open_text(path: Path) -> IO[str]:
    """A text stream that keeps line ends as they are (newline='') and drops a leading BOM."""
    _, compressed = _suffix(path)
    return io.TextIOWrapper(_open_bytes(path, compressed), encoding="utf-8-sig", newline="")


def _suffix(path: Path) -> tuple[str, bool]:
    """The data extension (lower case) and whether the file is gzipped: notes.txt.gz -> ('.txt', True)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        return (suffixes[-2] if len(suffixes) > 1 else ""), True
    return (suffixes[-1] if suffixes else ""), False


def _folder_files(folder: Path) -> list[Path]:
    """Text and data files below a folder, in path order, hidden files and folders left out."""
    return sorted(
        (p for p in folder.rglob("*") if p.is_file() and _suffix(p)[0] in TEXT_SUFFIXES + DATA_SUFFIXES
         and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
        key=lambda p: p.relative_to(folder).as_posix(),
    )


def _listing(folder: Path, limit: int = 8) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "an empty folder"
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
