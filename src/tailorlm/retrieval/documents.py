"""Read the user's documents: text, Markdown, HTML, PDF and Word files, rows of JSONL/CSV files and BEIR corpora.

Errors and skips: a path named explicitly (a file given on the command line) must be readable, so any problem with
it (missing, unknown type, empty, not UTF-8, encrypted or image-only PDF, damaged file, missing text column) is a
DataError that names the file. A file found inside a folder is skipped instead, and reported in
`DocumentBatch.skipped` with a short reason ("encrypted", "empty document", "unknown file type '.png'", or the byte
offset of the first byte that is not UTF-8); hidden files and folders are ignored. A row with empty text is skipped
in both cases. A run that finds no document at all is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tailorlm.data.loaders import read_records
from tailorlm.errors import DataError
from tailorlm.retrieval import readers
from tailorlm.retrieval.readers import Extracted, Unreadable

FILE_READERS = {".txt": "plain", ".text": "plain", ".md": "markdown", ".markdown": "markdown", ".html": "html",
                ".htm": "html", ".xhtml": "html", ".pdf": "pdf", ".docx": "docx"}
RECORD_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".tsv", ".json")
BEIR_CORPUS = ("corpus.jsonl", "corpus.jsonl.gz")
KNOWN = ".txt .md .html/.htm .pdf .docx, .jsonl/.csv/.tsv/.json (one document per row), a BEIR corpus.jsonl"


@dataclass
class Document:
    """One document's text and structure; offsets in `pages` and `headings` index into `text`."""

    path: str
    text: str
    title: str | None = None
    pages: list[tuple[int, int]] = field(default_factory=list)
    """(page number from 1, offset where the page's text starts), for PDF pages that have text."""
    headings: list[tuple[int, str]] = field(default_factory=list)
    """(offset where the heading's text starts, heading text), for Markdown, HTML and DOCX, in order."""
    metadata: dict[str, Any] = field(default_factory=dict)
    doc_id: str = ""
    """Stable id: the path for a file, path#row for a row of a table, the `_id` of a BEIR document or `id_column`."""
    content_hash: str = ""
    """sha256 of the file's bytes, or of a row's text, title and metadata: a changed hash means re-embed."""

    def __post_init__(self) -> None:
        self.doc_id = self.doc_id or self.path
        self.content_hash = self.content_hash or _record_hash(self.text, self.title, self.metadata)


@dataclass
class DocumentBatch:
    """The documents read from some paths, the files or rows skipped with their reasons, and warnings."""

    documents: list[Document]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Document]:
        """The documents, in reading order."""
        return iter(self.documents)

    def __len__(self) -> int:
        """How many documents were read."""
        return len(self.documents)

    def summary(self) -> str:
        """One line for users: 'read 12 documents; skipped 3 (2 unknown file type, 1 encrypted)'."""
        text = f"read {len(self.documents)} document{'s' if len(self.documents) != 1 else ''}"
        if self.skipped:
            kinds = Counter(reason.split(" '")[0].split(": ")[0] for _, reason in self.skipped)
            text += f"; skipped {len(self.skipped)} (" + ", ".join(f"{n} {kind}" for kind, n in kinds.most_common()) + ")"
        return text


def read_documents(
    paths: str | Path | Iterable[str | Path],
    *,
    text_column: str = "text",
    id_column: str | None = None,
    recursive: bool = True,
) -> DocumentBatch:
    """Read files and folders (recursively, in sorted order) into documents; see the module docstring for errors.

    `text_column` names the text of JSONL/CSV rows (the other columns become metadata, `title` becomes the title);
    `id_column` names a column that gives each row a stable id instead of path#row.
    """
    paths = _as_list(paths)
    files, skipped = _walk(paths, recursive)
    batch = DocumentBatch([], skipped)
    for path, explicit in files:
        try:
            docs, rows_skipped, warnings = read_file(path, text_column=text_column, id_column=id_column)
        except DataError as err:
            if explicit:
                raise
            batch.skipped.append((str(path), skip_reason(err)))
            continue
        batch.documents += docs
        batch.skipped += rows_skipped
        batch.warnings += warnings
    batch.documents = _unique(batch.documents)
    unknown = Counter(reason.split("'")[1] for _, reason in batch.skipped if reason.startswith("unknown file type"))
    if unknown:
        total = sum(unknown.values())
        batch.warnings.append(f"skipped {total} file{'s' if total > 1 else ''} of unknown type ("
                              + ", ".join(f"{suffix}: {n}" for suffix, n in unknown.most_common()) + f"); known: {KNOWN}")
    if not batch.documents:
        shown = "; ".join(f"{path}: {reason}" for path, reason in batch.skipped[:5])
        raise DataError("no documents to index", where=", ".join(map(str, paths)),
                        found=f"{len(batch.skipped)} skipped" + (f" ({shown}{' ...' if len(batch.skipped) > 5 else ''})" if shown else ""),
                        expected=KNOWN)
    return batch


def document_files(paths: str | Path | Iterable[str | Path], *, recursive: bool = True) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files `read_documents` would read, in order, and the folder files it skips for their unknown type."""
    files, skipped = _walk(_as_list(paths), recursive)
    return [path for path, _ in files], skipped


def read_file(path: Path, *, text_column: str = "text", id_column: str | None = None
              ) -> tuple[list[Document], list[tuple[str, str]], list[str]]:
    """The documents of one file, the rows skipped with reasons, and warnings; DataError when it cannot be read."""
    path, where = Path(path), str(path)
    kind = _kind(path)
    if kind == "beir":
        return _read_rows(path, "text", "_id")
    if kind == "rows":
        return _read_rows(path, text_column, id_column)
    if kind is None:
        found = _extension(path)
        raise Unreadable(f"unknown file type {found!r}", where=where, found=f"the extension {found!r}", expected=KNOWN)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise Unreadable("cannot read the file", where=where, found=err.strerror or str(err), expected="a readable file") from None
    if kind == "pdf":
        extracted = readers.read_pdf(path, where)
    elif kind == "docx":
        extracted = readers.read_docx(path, where)
    else:
        extracted = getattr(readers, f"read_{kind}")(raw, where)
    return [_file_document(path, raw, extracted)], [], extracted.warnings


def skip_reason(err: DataError) -> str:
    """The short reason a skipped file is reported with."""
    if isinstance(err, Unreadable):
        return err.reason
    return f"{err.what}: {err.found}" if err.found else err.what


def _as_list(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Paths as a list of Path."""
    return [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]


def _walk(paths: list[Path], recursive: bool) -> tuple[list[tuple[Path, bool]], list[tuple[str, str]]]:
    """(file, named explicitly) for each file to read, and folder files skipped for their type; DataError for a missing path."""
    files: list[tuple[Path, bool]] = []
    skipped: list[tuple[str, str]] = []
    for path in paths:
        corpus = next((path / name for name in BEIR_CORPUS if (path / name).is_file()), None) if path.is_dir() else None
        if corpus is not None:  # a BEIR folder named explicitly is its corpus named explicitly
            files.append((corpus, True))
        elif path.is_dir():
            for file in _folder_files(path, recursive):
                if _kind(file) is None:
                    skipped.append((str(file), f"unknown file type {_extension(file)!r}"))
                else:
                    files.append((file, False))
        elif path.is_file():
            files.append((path, True))
        else:
            raise DataError("no such file or folder", where=str(path), found="nothing at that path",
                            expected="an existing document file or folder")
    return files, skipped


def _folder_files(folder: Path, recursive: bool) -> Iterator[Path]:
    """Files below a folder in sorted order, hidden ones left out; a BEIR folder yields only its corpus."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        corpus = next((name for name in BEIR_CORPUS if name in files), None)
        if corpus:  # queries and qrels of a BEIR folder are not documents
            dirs[:] = []
            yield Path(root) / corpus
            continue
        yield from (Path(root) / name for name in sorted(files) if not name.startswith("."))


def _extension(path: Path) -> str:
    """The extension as written, two parts for a gzipped file: '.pdf', '.jsonl.gz', '(none)'."""
    if path.suffix.lower() == ".gz" and len(path.suffixes) > 1:
        return "".join(path.suffixes[-2:])
    return path.suffix or "(none)"


def _kind(path: Path) -> str | None:
    """How a file is read: 'beir', 'rows', a reader name from FILE_READERS, or None for an unknown type."""
    if path.name in BEIR_CORPUS:
        return "beir"
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    if suffixes and suffixes[-1] == ".gz":
        return "rows" if len(suffixes) > 1 and suffixes[-2] in RECORD_SUFFIXES else None
    suffix = suffixes[-1] if suffixes else ""
    return "rows" if suffix in RECORD_SUFFIXES else FILE_READERS.get(suffix)


def _file_document(path: Path, raw: bytes, extracted: Extracted) -> Document:
    """A Document for a whole file, identified by its path and hashed by its bytes."""
    return Document(path=str(path), text=extracted.text, title=extracted.title, pages=extracted.pages,
                    headings=extracted.headings, metadata={}, doc_id=str(path),
                    content_hash=hashlib.sha256(raw).hexdigest())


def _read_rows(path: Path, text_column: str, id_column: str | None) -> tuple[list[Document], list[tuple[str, str]], list[str]]:
    """One document per row of a JSONL/CSV/TSV/JSON file or BEIR corpus; rows with empty text are skipped."""
    if path.suffix.lower() != ".gz" and path.stat().st_size == 0:
        raise Unreadable("empty document", where=str(path), found="0 bytes", expected="at least one row")
    records = read_records(path, csv_header=True)
    documents, skipped = [], []
    for record in records:
        fields, where = record.fields, str(record.origin)
        for key in (text_column, id_column):
            if key is not None and key not in fields:
                raise DataError("no such column", where=where, key=key, found="columns " + ", ".join(map(str, fields)),
                                expected=f"a {key!r} column", hint="Name the text column with --text-column and the id column with --id-column")
        text = fields[text_column]
        if text is not None and not isinstance(text, str):
            raise DataError("the text column does not hold text", where=where, key=text_column,
                            found=f"{type(text).__name__} {str(text)[:40]!r}", expected="a string")
        if text is not None and not _is_unicode(text):
            position = next(i for i, ch in enumerate(text) if 0xD800 <= ord(ch) <= 0xDFFF)
            raise DataError("the text is not valid Unicode", where=where, key=text_column,
                            found=f"a lone surrogate {text[position]!r} at character {position}",
                            expected="text whose \\ud800-\\udfff JSON escapes come in pairs")
        doc_id = f"{path}#{record.origin.row}"
        if id_column is not None:
            if not isinstance(fields[id_column], (str, int)) or str(fields[id_column]).strip() == "":
                raise DataError("bad document id", where=where, key=id_column, found=repr(fields[id_column]),
                                expected="a non-empty string or integer")
            doc_id = str(fields[id_column])
        if not text or not text.strip():
            skipped.append((doc_id, "empty text"))
            continue
        title = fields.get("title") if isinstance(fields.get("title"), str) and fields["title"].strip() else None
        metadata = {k: v for k, v in fields.items() if k not in (text_column, id_column, "title")}
        documents.append(Document(path=str(path), text=text, title=title, metadata=metadata, doc_id=doc_id,
                                  content_hash=_record_hash(text, title, metadata)))
    if not documents and not skipped:
        raise Unreadable("empty document", where=str(path), found="no rows", expected="at least one row")
    return documents, skipped, []


def _is_unicode(text: str) -> bool:
    """False for text holding a lone surrogate, which no tokenizer accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _record_hash(text: str, title: str | None, metadata: dict[str, Any]) -> str:
    """sha256 of a row's text, title and metadata, so a changed column also re-embeds its row."""
    payload = json.dumps([text, title, metadata], ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _unique(documents: list[Document]) -> list[Document]:
    """The documents with the same file read twice dropped; DataError for two different documents with one id."""
    seen: dict[str, Document] = {}
    kept = []
    for doc in documents:
        other = seen.get(doc.doc_id)
        if other is None:
            seen[doc.doc_id] = doc
            kept.append(doc)
        elif other.content_hash != doc.content_hash or other.path != doc.path:
            raise DataError("two documents have the same id", where=doc.path, key="doc_id", found=repr(doc.doc_id),
                            expected=f"ids that differ from the one in {other.path}",
                            hint="Give each row a unique id column (--id-column) or index the sources separately")
    return kept
