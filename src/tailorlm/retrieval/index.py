"""An index: a folder holding the chunk store, the BM25 index and `tailorlm-index.json`, the manifest naming both.

Indexing is incremental (only new or changed files are read, chunked and embedded; chunks of deleted files go)
and atomic: new data is written beside the old (a new store version, a new BM25 folder), and only the last
step, an `os.replace` of the manifest, switches readers to it. A run that fails before that step leaves the
manifest, and so the index that readers open, as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: concurrent indexing runs are not locked out
    fcntl = None  # type: ignore[assignment]

from tailorlm.errors import ConfigError, DataError
from tailorlm.retrieval.chunking import check_chunk_settings, chunk_documents, default_chunk_tokens
from tailorlm.retrieval.documents import BEIR_CORPUS, KNOWN, document_files, read_file, skip_reason
from tailorlm.retrieval.lexical import LexicalIndex
from tailorlm.retrieval.store import VectorStore, open_store

MANIFEST = "tailorlm-index.json"
FORMAT_VERSION = 1
BACKENDS = ("lance", "qdrant")
# What a failed first run may leave behind; a folder holding only these is ours to start again in.
LOCK = ".tailorlm-index.lock"
_OWN_NAMES = ("store", "bm25-", "qdrant-", MANIFEST, LOCK)
# Chunks are embedded in groups of EMBED_GROUP (bounding the vectors held in memory, one store write each), within a
# group from the longest to the shortest in tokens, EMBED_BATCH at a time.
EMBED_GROUP = 16_384
EMBED_BATCH = 64


@dataclass
class IndexReport:
    """What one indexing run did, counted in source files (and chunks in the whole index afterwards)."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: int = 0
    chunks: int = 0
    embedded: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for users: what happened to the files and the chunks, and the run's time and chunks per second."""
        files = (f"files: {self.added} added, {self.updated} updated, {self.removed} removed, "
                 f"{self.unchanged} unchanged, {self.skipped} skipped")
        speed = f" ({self.embedded / self.seconds:.0f} chunks/s)" if self.embedded and self.seconds > 0 else ""
        return f"{files}; {self.chunks} chunks in the index, {self.embedded} embedded; {self.seconds:.1f} s{speed}"


class Index:
    """An index folder opened for search: its manifest, store, BM25 index and embedding model."""

    def __init__(self, folder: Path, manifest: dict[str, Any], store: VectorStore, embedder: Any = None) -> None:
        self.folder = folder
        self.manifest = manifest
        self.store = store
        if embedder is not None:
            _check_model(folder, manifest, embedder)
            self.__dict__["embedder"] = embedder

    @cached_property
    def embedder(self) -> Any:
        """The embedding model the index was built with (loaded on first use)."""
        from tailorlm.retrieval.embeddings import Embedder

        embedder = Embedder(self.manifest["embed_model"])
        _check_model(self.folder, self.manifest, embedder)
        return embedder

    @cached_property
    def lexical(self) -> LexicalIndex:
        """The BM25 index of the chunks."""
        return LexicalIndex.load(self.folder / self.manifest["bm25"])

    @property
    def embed_model(self) -> str:
        """The embedding model reference the index was built with."""
        return self.manifest["embed_model"]

    def __len__(self) -> int:
        return int(self.manifest["counts"]["chunks"])

    def close(self) -> None:
        """Release the store's files."""
        self.store.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_index(index_dir: str | Path, *, embedder: Any = None) -> Index:
    """Open an index for search; DataError for a missing folder or one that is not an index."""
    folder = Path(index_dir)
    manifest = read_manifest(folder)
    if manifest is None:
        raise DataError("no index here", where=str(folder), found="no such folder" if not folder.exists() else _listing(folder),
                        expected=f"a folder made by `tailor rag index` (with {MANIFEST})",
                        hint=f"Build one first: tailor rag index DOCS --index {folder}")
    store = open_store(manifest["backend"], folder, manifest["store"], dimension=manifest["dimension"])
    return Index(folder, manifest, store, embedder)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, None when the folder is missing or empty; DataError when it is something else."""
    path = folder / MANIFEST
    if not path.is_file():
        if folder.exists() and not folder.is_dir():
            raise DataError("the index path is a file", where=str(folder), expected="a folder for the index")
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError("the index manifest is damaged", where=str(path), found=str(err), expected="JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise DataError("unsupported index format", where=str(path),
                        found=repr(manifest.get("format") if isinstance(manifest, dict) else manifest),
                        expected=f"format {FORMAT_VERSION}", hint="Build the index again in a new folder")
    return manifest


def build_index(
    paths: Sequence[str | Path] | str | Path,
    index_dir: str | Path,
    *,
    embed_model: str = "minilm-l6",
    chunk_tokens: int | None = None,
    overlap: int = 32,
    backend: str = "lance",
    progress: bool = True,
    text_column: str = "text",
    id_column: str | None = None,
    embedder: Any = None,
) -> IndexReport:
    """Index the documents under `paths` into `index_dir`, embedding only documents that are new or changed.

    Files indexed before that are gone, or that sit under one of `paths` and no longer give text, lose their
    chunks; files from other folders indexed before are kept. Within a changed file (a JSONL or BEIR corpus),
    rows whose content is unchanged keep their chunks and vectors. `text_column` and `id_column` name the text
    and the document id of JSONL/CSV rows. `embedder` replaces the model named by `embed_model` (tests pass a
    fake one).
    """
    folder = Path(index_dir)
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if backend not in BACKENDS:
        raise ConfigError("unknown index backend", key="backend", found=repr(backend), expected=" or ".join(BACKENDS))
    _refuse_foreign(folder)
    start = time.perf_counter()
    with _writer_lock(folder):
        report = _build(paths, folder, embed_model, chunk_tokens, overlap, backend, progress, text_column, id_column, embedder)
    report.seconds = time.perf_counter() - start
    return report


def _build(paths: list[Path], folder: Path, embed_model: str, chunk_tokens: int | None, overlap: int, backend: str,
           progress: bool, text_column: str, id_column: str | None, embedder: Any) -> IndexReport:
    """`build_index` once the folder is known to be ours and locked against other writers."""
    previous = _previous_manifest(folder)
    if previous is not None and embedder is None and previous["embed_model"] != embed_model:
        raise _model_mismatch(folder, previous["embed_model"], embed_model)
    if previous is not None and previous["backend"] != backend:
        raise ConfigError("the index uses another backend", where=str(folder), key="backend",
                          found=f"{backend!r} asked, the index holds {previous['backend']!r}",
                          expected=f"backend {previous['backend']!r} or a new index folder")
    if embedder is None:
        from tailorlm.retrieval.embeddings import Embedder

        embedder = Embedder(embed_model)
    if previous is not None:
        _check_model(folder, previous, embedder)
    chunk_tokens = chunk_tokens or default_chunk_tokens(embedder)
    check_chunk_settings(chunk_tokens, overlap)
    settings = {"chunk_tokens": chunk_tokens, "overlap": overlap, "text_column": text_column, "id_column": id_column}
    rechunk = previous is not None and any(previous.get(key) != value for key, value in settings.items())

    report = IndexReport()
    files, explicit, skipped = _source_files(paths)
    report.skipped = len(skipped)
    report.warnings += [f"skipped {path}: {reason}" for path, reason in skipped]
    old_files: dict[str, dict[str, Any]] = {} if previous is None else dict(previous["files"])
    dropped = [key for key in old_files if key not in files and (not Path(key).exists() or _under(Path(key), paths))]
    if rechunk:  # new chunk or column settings: files indexed earlier from other folders are read again too
        files.update({key: Path(key) for key in old_files if key not in files and key not in dropped})
    hashes = {key: _file_hash(path) for key, path in files.items()}
    changed = [key for key in files if rechunk or key not in old_files or old_files[key]["hash"] != hashes[key]]
    report.unchanged = len(files) - len(changed)
    report.removed = len(dropped)
    if previous is not None and not changed and not dropped:
        report.chunks = previous["counts"]["chunks"]
        return report

    new_files = {key: entry for key, entry in old_files.items() if key not in dropped and key not in changed}
    owners = {doc_id: key for key, entry in new_files.items() for doc_id in entry["docs"]}
    stale: list[str] = [doc_id for key in dropped for doc_id in old_files[key]["docs"]]
    documents = []
    for key in _progress(changed, "reading", progress):
        try:
            docs, rows_skipped, file_warnings = read_file(files[key], text_column=text_column, id_column=id_column)
        except DataError as err:
            if key in explicit:
                raise
            report.skipped += 1
            report.warnings.append(f"skipped {files[key]}: {skip_reason(err)}")
            stale += list(old_files.get(key, {}).get("docs", {}))
            continue
        report.warnings += file_warnings + [f"skipped {where}: {reason}" for where, reason in rows_skipped]
        old_docs = old_files.get(key, {}).get("docs", {})
        entry = new_files[key] = {"hash": hashes[key], "docs": {}}
        for doc in docs:
            if doc.doc_id in owners:
                raise DataError("two sources give the same document id", where=str(files[key]), key="doc_id",
                                found=repr(doc.doc_id), expected=f"ids unique across files (it also comes from {owners[doc.doc_id]})")
            owners[doc.doc_id] = key
            entry["docs"][doc.doc_id] = doc.content_hash
            if rechunk or old_docs.get(doc.doc_id) != doc.content_hash:
                documents.append(doc)
        stale += [doc_id for doc_id, digest in old_docs.items() if rechunk or entry["docs"].get(doc_id) != digest]
        report.updated += key in old_files
        report.added += key not in old_files

    if not owners:
        raise DataError("no documents to index", where=", ".join(map(str, paths)),
                        found=f"{report.skipped} files skipped" if report.skipped else "no document files",
                        expected=KNOWN, hint="An index cannot be empty; delete its folder to drop it")
    store = open_store(backend, folder, previous["store"] if previous else {}, dimension=embedder.dimension, writable=True)
    try:
        store.delete_docs(stale)
        chunks = chunk_documents(documents, embedder.tokenizer, chunk_tokens=chunk_tokens, overlap=overlap)
        _embed_into(store, chunks, embedder, progress)
        report.embedded = len(chunks)
        store.finish()
        generation = previous["generation"] + 1 if previous else 1
        bm25_name = f"bm25-{generation}"
        shutil.rmtree(folder / bm25_name, ignore_errors=True)
        LexicalIndex.build(store.all_chunks()).save(folder / bm25_name)
        report.chunks = store.count()
        manifest = {
            "format": FORMAT_VERSION, "embed_model": embedder.model_ref, "dimension": embedder.dimension,
            **settings, "backend": backend, "generation": generation,
            "store": store.state(), "bm25": bm25_name,
            "counts": {"files": len(new_files), "documents": len(owners), "chunks": report.chunks},
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": dict(sorted(new_files.items())),
        }
        _write_manifest(folder, manifest)
    finally:
        store.close()
    _remove_stale(folder, keep={bm25_name, str(manifest["store"].get("path"))})
    return report


def _embed_into(store: VectorStore, chunks: list[Any], embedder: Any, progress: bool) -> None:
    """Embed the chunks and add them to the store in their own order, batching chunks of similar token length."""
    from tailorlm.retrieval.embeddings import length_order

    with _progress_bar(len(chunks), f"embedding {len(chunks)} chunks", progress) as advance:
        for first in range(0, len(chunks), EMBED_GROUP):
            group = chunks[first:first + EMBED_GROUP]
            texts = [chunk.text for chunk in group]
            order = length_order(embedder.tokenizer, texts)
            vectors = np.empty((len(group), embedder.dimension), dtype=np.float32)  # (G, D)
            for start in range(0, len(group), EMBED_BATCH):
                rows = order[start:start + EMBED_BATCH]
                vectors[rows] = embedder.embed([texts[i] for i in rows])
                advance(len(rows))
            store.add(group, vectors)


def _refuse_foreign(folder: Path) -> None:
    """DataError when `folder` exists and holds anything but an index or what a failed first run leaves."""
    if read_manifest(folder) is not None or not folder.exists():
        return
    if any(not entry.name.startswith(_OWN_NAMES) for entry in folder.iterdir()):
        raise DataError("the folder exists and is not an index", where=str(folder), found=_listing(folder),
                        expected=f"an index folder (with {MANIFEST}), an empty folder or a new path")


def _previous_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of the index in `folder`, or None after clearing what a failed first run left there."""
    manifest = read_manifest(folder)
    if manifest is None:
        for entry in folder.iterdir():
            if entry.name != LOCK:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return manifest


@contextmanager
def _writer_lock(folder: Path) -> Iterator[None]:
    """Hold the index's lock file while writing; DataError when another run holds it (no locks on Windows)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / LOCK).open("a") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DataError("another indexing run is writing this index", where=str(folder),
                                hint="Wait for it to finish, then run again") from None
        yield


def _check_model(folder: Path, manifest: dict[str, Any], embedder: Any) -> None:
    """ConfigError when the embedder is not the model (or width) the index was built with."""
    if embedder.model_ref != manifest["embed_model"]:
        raise _model_mismatch(folder, manifest["embed_model"], embedder.model_ref)
    if embedder.dimension != manifest["dimension"]:
        raise ConfigError("the embedding width differs from the index's", where=str(folder),
                          found=f"{embedder.dimension} dimensions", expected=f"{manifest['dimension']}")


def _model_mismatch(folder: Path, built: str, asked: str) -> ConfigError:
    """The error for indexing or searching with another embedding model than the index's."""
    return ConfigError("the index was built with another embedding model", where=str(folder), key="embed_model",
                       found=f"{asked!r} asked, the index holds vectors of {built!r}",
                       expected=f"--embed-model {built}", hint="Vectors of two models cannot be compared; "
                       "use a new index folder for the other model")


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest beside the old one, then switch to it in one rename."""
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f"{MANIFEST}.tmp"
    with temporary.open("w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, folder / MANIFEST)


def _remove_stale(folder: Path, keep: set[str]) -> None:
    """Delete BM25 and Qdrant folders the manifest no longer names (left by earlier or failed runs)."""
    for entry in [*folder.glob("bm25-*"), *folder.glob("qdrant-*")]:
        if entry.name not in keep:
            shutil.rmtree(entry, ignore_errors=True)


def _file_hash(path: Path) -> str:
    """SHA-256 of the file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _under(path: Path, roots: Iterable[Path]) -> bool:
    """Whether `path` is one of `roots` or inside one of them."""
    return any(path == root.resolve() or root.resolve() in path.parents for root in roots)


def _listing(folder: Path, limit: int = 5) -> str:
    """A few names in the folder."""
    names = sorted(entry.name for entry in folder.iterdir())
    return (", ".join(names[:limit]) + (" ..." if len(names) > limit else "")) if names else "an empty folder"


def _source_files(paths: list[Path]) -> tuple[dict[str, Path], set[str], list[tuple[str, str]]]:
    """Files to index by resolved path, those named explicitly (a BEIR folder names its corpus), and skipped ones."""
    found, skipped = document_files(paths)
    named = {path.resolve() for path in paths}
    named |= {(path / name).resolve() for path in paths if path.is_dir() for name in BEIR_CORPUS}
    files = {str(path.resolve()): path for path in found}
    return files, {key for key in files if Path(key) in named}, skipped


def _progress(items: Sequence[Any], description: str, show: bool) -> Iterator[Any]:
    """The items, with a transient progress bar when asked."""
    if not show or not items:
        yield from items
        return
    from rich.console import Console
    from rich.progress import track

    # On stderr, so that stdout holds only the results when it is piped.
    yield from track(items, description=description, transient=True, console=Console(stderr=True))


@contextmanager
def _progress_bar(total: int, description: str, show: bool) -> Iterator[Callable[[int], None]]:
    """A function that advances a transient progress bar over `total` items (does nothing when not shown)."""
    if not show or not total:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(transient=True, console=Console(stderr=True)) as bar:  # stderr, as `_progress`
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
