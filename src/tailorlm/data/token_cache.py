"""Memory-mapped token caches: a corpus tokenized once into a flat file of token ids, then streamed during training.

A cache is two files side by side: `NAME.bin`, the token ids of every document one after another (uint16 when the
vocabulary fits, else uint32; no padding), and `NAME.json`, its sidecar (dtype, token count, the files and their
SHA-256, the tokenizer's fingerprint, the EOS id, the format version). The name carries the cache key, a hash of the
files' bytes (not their names), the tokenizer's fingerprint and the settings that change the tokens, so a second build
with the same corpus and tokenizer returns the existing cache without tokenizing, and a changed file gives a new cache.
The size of the token file is checked against the sidecar whenever a cache is opened; a cache that fails the check is
rebuilt, with a warning.

Documents. A JSON Lines file (.jsonl, .ndjson) holds one document per row, in its `text` field. Any other file is
UTF-8 text and is one document as a whole: pre-training corpora such as tiny Shakespeare are one continuous work, where
blank lines separate speeches, not documents, and an EOS token after every paragraph would teach a model to stop after
each speech (and would cost about one token in fifty). A corpus of many documents is many files or one JSONL file.
Each document is tokenized without special tokens and followed by the EOS token when `append_eos`; empty and
whitespace-only documents are skipped.

Long documents are tokenized in pieces of bounded size (data/corpus_documents.py).

Building. The pieces are written to an Arrow dataset (`datasets.Dataset.from_generator`), tokenized by
`Dataset.map(batched=True, num_proc=...)` (which sets TOKENIZERS_PARALLELISM=false in its forked workers), and the
token file is written by streaming through the mapped dataset a few rows at a time, into a temporary folder that is
renamed into place at the end: an interrupted build leaves nothing that a later run would trust.

Blocks. `blocks(length)` yields training blocks of `length + 1` tokens (inputs and the targets shifted by one), and
consecutive blocks share one token: block i is `tokens[i * length : i * length + length + 1]`, so every token but the
first is a target exactly once and the blocks joined (each without its last token, plus the last token of the last
block) give back the token stream up to `num_blocks(length) * length + 1`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import os
import pickle
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tailorlm import __version__
from tailorlm.data import corpus_documents as documents
from tailorlm.errors import ConfigError, DataError, TailorError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent builds of one cache there are not protected
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

FORMAT = "tailorlm-token-cache"
FORMAT_VERSION = 1
PARALLEL_BYTES = 32 << 20  # corpora at least this big use several processes by default
MAX_DEFAULT_PROCS = 4
WRITE_ROWS = 4
STALE_SUFFIX = r"-[a-z0-9_]{8}"  # what tempfile.mkdtemp appends


@dataclass
class TokenCache:
    """A tokenized corpus on disk: `tokens` is a read-only memory map, read lazily page by page."""

    path: Path
    """The token file (`.bin`); its sidecar is the same path with `.json`."""
    num_tokens: int
    dtype: np.dtype
    """uint16 when the vocabulary fits, else uint32."""
    info: dict = field(default_factory=dict, repr=False)
    """The sidecar: files and their SHA-256, tokenizer fingerprint, eos id, number of documents."""
    _tokens: np.memmap | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def tokens(self) -> np.memmap:
        """All token ids, memory-mapped read-only."""
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))
        return self._tokens

    def num_blocks(self, length: int) -> int:
        """How many blocks of `length + 1` tokens `blocks(length)` yields (consecutive blocks share one token)."""
        size = _integer(length)
        if size is None or size < 1:
            raise ConfigError("the block length must be a positive integer", key="length", found=repr(length))
        return max(0, (self.num_tokens - 1) // size)

    def blocks(self, length: int, *, start: int = 0) -> Iterator[np.ndarray]:
        """Blocks `tokens[i*length : i*length + length + 1]` as fresh int64 arrays, in order from block `start`."""
        count, first = self.num_blocks(length), _integer(start)
        if first is None or not 0 <= first <= count:
            raise ConfigError(
                "the first block to read is out of range",
                where=str(self.path),
                key="start",
                found=repr(start),
                expected=f"an integer from 0 to {count} (blocks of {length + 1} tokens in {self.num_tokens} tokens)",
            )
        return _blocks(self.tokens, int(length), first, count)  # checked above, at the call, not at the first block

    def __getstate__(self) -> dict:
        # A memory map is re-opened in each process (DataLoader workers) rather than pickled with its contents.
        return {**self.__dict__, "_tokens": None}


def _blocks(tokens: np.ndarray, length: int, first: int, count: int) -> Iterator[np.ndarray]:
    for i in range(first, count):
        yield np.array(tokens[i * length : i * length + length + 1], dtype=np.int64)


def open_token_cache(path: str | Path) -> TokenCache:
    """The token cache at `path` (its `.bin` or `.json`), checked against its sidecar; DataError if incomplete."""
    path = Path(path)
    bin_path, sidecar = path.with_suffix(".bin"), path.with_suffix(".json")
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            "no token cache here: the sidecar is missing",
            where=str(sidecar),
            expected=f"the {sidecar.name} written next to {bin_path.name} by build_token_cache",
            hint="An interrupted build leaves no sidecar; build the cache again",
        ) from None
    except (OSError, ValueError) as err:
        raise DataError("unreadable token cache sidecar", where=str(sidecar), found=str(err)) from None
    if not isinstance(info, dict) or info.get("format") != FORMAT or info.get("version") != FORMAT_VERSION:
        raise DataError(
            "not a token cache of this version",
            where=str(sidecar),
            found=f"format {info.get('format')!r} version {info.get('version')!r}" if isinstance(info, dict) else None,
            expected=f"format {FORMAT!r} version {FORMAT_VERSION}",
            hint="Build the cache again",
        )
    try:
        dtype, num_tokens = np.dtype(info["dtype"]), int(info["num_tokens"])
    except (KeyError, TypeError, ValueError) as err:
        raise DataError("the token cache sidecar is damaged", where=str(sidecar), found=repr(err)) from None
    expected = num_tokens * dtype.itemsize
    found = bin_path.stat().st_size if bin_path.is_file() else None
    if found != expected:
        raise DataError(
            "the token file is truncated or corrupt",
            where=str(bin_path),
            found="no file" if found is None else f"{found:,} bytes",
            expected=f"{expected:,} bytes ({num_tokens:,} {dtype.name} tokens, from {sidecar.name})",
            hint="Delete both files and build the cache again (build_token_cache rebuilds it by itself)",
        )
    return TokenCache(path=bin_path, num_tokens=num_tokens, dtype=dtype, info=info)


def build_token_cache(
    files: Sequence[Path],
    tokenizer: Any,
    *,
    cache_root: Path | None = None,
    num_proc: int | None = None,
    append_eos: bool = True,
    progress: bool = True,
) -> TokenCache:
    """Tokenize text and JSONL files once into a memory-mapped token file, or return the cache of an earlier build.

    `num_proc` tokenizing processes (default: half the CPU cores, at most 4, for corpora of 32 MB or more, else 1);
    the tokenizer must be picklable for more than one (fast tokenizers are). `cache_root` defaults to
    `$TAILORLM_HOME/token-cache`.
    """
    paths = documents.check_files(files)
    eos_id = _eos_id(tokenizer, append_eos)
    if num_proc is not None:
        if _integer(num_proc) is None or num_proc < 1:
            raise ConfigError("num_proc must be a positive integer", key="num_proc", found=repr(num_proc))
        num_proc = _integer(num_proc)
    root = Path(cache_root) if cache_root is not None else _default_root()
    with _Bars(progress) as bars:
        digests = [_sha256(path, bars) for path in paths]
        fingerprint = tokenizer_fingerprint(tokenizer)
        key = _cache_key(digests, paths, fingerprint, append_eos)
        info = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "key": key,
            "dtype": token_dtype(_vocab_limit(tokenizer)).name,
            "append_eos": append_eos,
            "eos_id": eos_id,
            "files": [
                {"path": str(p.absolute()), "sha256": d, "bytes": p.stat().st_size, "kind": documents.kind(p)}
                for p, d in zip(paths, digests)
            ],
            "tokenizer": {
                "fingerprint": fingerprint,
                "name_or_path": str(getattr(tokenizer, "name_or_path", "") or ""),
                "vocab_size": _vocab_limit(tokenizer),
            },
            "window_chars": documents.WINDOW_CHARS,
            "context_chars": documents.CONTEXT_CHARS,
        }
        name = key[:24]  # content-addressed: the same corpus under another file name finds it
        cache = _existing(root / f"{name}.bin", key)
        if cache is not None:
            return cache
        root.mkdir(parents=True, exist_ok=True)
        with _lock(root, name):
            if (root / f"{name}.json").is_file() or (root / f"{name}.bin").is_file():
                cache = _existing(root / f"{name}.bin", key, warn=False)  # built by another process meanwhile?
                if cache is not None:
                    return cache
            _remove_stale(root, name)
            work = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
            try:
                return _build(paths, tokenizer, info, num_proc, root / name, work, bars)
            finally:
                shutil.rmtree(work, ignore_errors=True)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id of a vocabulary of `vocab_size` fits (at most 65,536 ids), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of what decides a tokenizer's ids: its tokenizer.json serialisation (or vocabulary), special tokens."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Vocabulary, merges, normalizer, pre-tokenizer, added tokens: all of it, less the truncation and padding
        # that transformers sets on the backend at each call (the last call's settings, not the tokenizer's).
        if backend.truncation is not None or backend.padding is not None:
            backend = type(backend).from_str(backend.to_str())  # a copy: the caller's tokenizer is left as it is
            backend.no_truncation()
            backend.no_padding()
        digest.update(backend.to_str().encode("utf-8"))
    else:
        digest.update(type(tokenizer).__name__.encode("utf-8"))
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    extra = {
        "special_tokens": {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())},
        "eos_token_id": getattr(tokenizer, "eos_token_id", None),
        "split_special_tokens": bool(getattr(tokenizer, "split_special_tokens", False)),
    }
    digest.update(json.dumps(extra, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()


# --- building ---------------------------------------------------------------------------------------------------


def _build(
    paths: list[Path], tokenizer: Any, info: dict, num_proc: int | None, final: Path, work: Path, bars: _Bars
) -> TokenCache:
    """Tokenize into `work`, then move the token file and, last, its sidecar (`info` completed) to `final`."""
    import datasets

    key, eos_id, dtype = info["key"], info["eos_id"], np.dtype(info["dtype"])

    total_bytes = sum(p.stat().st_size for p in paths)
    if num_proc is None:
        # One process already tokenizes the pieces of a row on the tokenizers' own thread pool, which datasets turns
        # off in its workers; on 2 cores, 2 processes measured 0.88-0.96x the speed of one (bench/token_cache.py).
        num_proc = min(max(1, _cpu_count() // 2), MAX_DEFAULT_PROCS) if total_bytes >= PARALLEL_BYTES else 1
    if num_proc > 1:
        _check_picklable(tokenizer)
    counts = {"documents": 0}
    reading = bars.add("reading", total_bytes)
    features = datasets.Features(
        {
            "texts": datasets.List(datasets.Value("string")),
            "lo": datasets.List(datasets.Value("int64")),
            "hi": datasets.List(datasets.Value("int64")),
            "eos": datasets.List(datasets.Value("bool")),
        }
    )

    def generate() -> Iterator[dict]:
        yield from documents.rows(documents.pieces(paths, reading, offsets=getattr(tokenizer, "is_fast", True)), counts)
        if counts["documents"] == 0:
            raise DataError(
                "the corpus is empty: no document has any text",
                where=", ".join(str(p) for p in paths),
                expected="UTF-8 text files or JSONL files whose `text` fields are not empty",
            )

    with _quiet_datasets():
        try:
            rows = datasets.Dataset.from_generator(
                generate,
                features=features,
                cache_dir=str(work / "text"),
                fingerprint=f"{key[:32]}-text",
                writer_batch_size=WRITE_ROWS,
            )
        except datasets.exceptions.DatasetGenerationError as err:
            raise (err.__cause__ if isinstance(err.__cause__, TailorError) else err) from None
        num_proc = min(num_proc, len(rows))
        done = work / "tokenized-rows"
        done.touch()
        with bars.poll("tokenizing" + (f" ({num_proc} processes)" if num_proc > 1 else ""), len(rows), done):
            tokenized = rows.map(
                documents.tokenize_rows,
                batched=True,
                batch_size=1,
                writer_batch_size=WRITE_ROWS,
                num_proc=num_proc if num_proc > 1 else None,
                remove_columns=rows.column_names,
                features=datasets.Features({"ids": datasets.List(datasets.Value("uint32"))}),
                fn_kwargs={"tokenizer": tokenizer, "eos_id": eos_id, "done_file": str(done)},
                new_fingerprint=f"{key[:32]}-ids",
                cache_file_name=str(work / "ids.arrow"),
            )
        num_tokens, tokens_sha256 = _write_tokens(tokenized, work / "tokens.bin", dtype, bars.add("writing", len(rows)))
    info = {
        **info,
        "num_tokens": num_tokens,
        "documents": counts["documents"],
        "tokens_sha256": tokens_sha256,
        "tailorlm": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    sidecar = work / "tokens.json"
    with open(sidecar, "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    # The sidecar is what makes a cache trusted, so it moves into place last.
    os.replace(work / "tokens.bin", final.with_suffix(".bin"))
    os.replace(sidecar, final.with_suffix(".json"))
    return open_token_cache(final.with_suffix(".bin"))


def _write_tokens(tokenized: Any, out: Path, dtype: np.dtype, advance: Callable[[int], None]) -> tuple[int, str]:
    """Stream the mapped dataset's ids into `out` a few rows at a time; (number of tokens, SHA-256 of the file)."""
    digest, count = hashlib.sha256(), 0
    with open(out, "wb") as fh:
        for table in tokenized.with_format("arrow").iter(batch_size=WRITE_ROWS):
            for chunk in table.column("ids").chunks:
                ids = chunk.flatten().to_numpy()
                if ids.size and dtype == np.uint16 and int(ids.max()) >= 1 << 16:
                    raise DataError(
                        "the tokenizer produced an id beyond its vocabulary size",
                        found=str(int(ids.max())),
                        expected="ids below 65,536 (the vocabulary size said so)",
                    )
                data = ids.astype(dtype, copy=False).tobytes()
                fh.write(data)
                digest.update(data)
                count += ids.size
            advance(table.num_rows)
        fh.flush()
        os.fsync(fh.fileno())
    return count, digest.hexdigest()


def _eos_id(tokenizer: Any, append_eos: bool) -> int | None:
    if not append_eos:
        return None
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ConfigError(
            "documents are joined with the EOS token, but the tokenizer has none",
            key="append_eos",
            found=f"no eos_token in {getattr(tokenizer, 'name_or_path', None) or type(tokenizer).__name__}",
            hint="Set tokenizer.eos_token, or pass append_eos=False to join documents without a separator",
        )
    return int(eos)


def _vocab_limit(tokenizer: Any) -> int:
    """One more than the largest id the tokenizer can produce."""
    return max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)


def _cache_key(digests: list[str], paths: list[Path], fingerprint: str, append_eos: bool) -> str:
    material = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "files": [[d, documents.kind(p)] for d, p in zip(digests, paths)],  # content and how it is read, not the path
        "tokenizer": fingerprint,
        "append_eos": append_eos,
        "window_chars": documents.WINDOW_CHARS,
        "context_chars": documents.CONTEXT_CHARS,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode("utf-8")).hexdigest()


def _existing(bin_path: Path, key: str, *, warn: bool = True) -> TokenCache | None:
    """The finished cache at `bin_path`, or None (with a warning when something there is incomplete or corrupt)."""
    if not bin_path.with_suffix(".json").is_file() and not bin_path.is_file():
        return None
    try:
        cache = open_token_cache(bin_path)
    except DataError as err:
        if warn:
            log.warning("%s Rebuilding it.", err)
        return None
    if cache.info.get("key") != key:
        if warn:
            log.warning("%s: the token cache belongs to other inputs. Rebuilding it.", bin_path)
        return None
    return cache


def _default_root() -> Path:
    from tailorlm.models.hub import tailorlm_home

    return tailorlm_home() / "token-cache"


def _sha256(path: Path, bars: _Bars) -> str:
    advance = bars.add(f"hashing {path.name}", path.stat().st_size)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(documents.READ_BYTES), b""):
            digest.update(block)
            advance(len(block))
    return digest.hexdigest()


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _check_picklable(tokenizer: Any) -> None:
    try:
        pickle.dumps(tokenizer)
    except Exception as err:  # any pickling failure means the same thing here
        raise ConfigError(
            "tokenizing in several processes needs a picklable tokenizer",
            key="num_proc",
            found=f"{type(tokenizer).__name__}: {err}",
            hint="Pass num_proc=1, or use a fast (Rust) tokenizer",
        ) from None


def _remove_stale(root: Path, name: str) -> None:
    pattern = re.compile(r"^\.tmp-" + re.escape(name) + STALE_SUFFIX + "$")
    for entry in root.iterdir():
        if entry.is_dir() and pattern.match(entry.name):
            shutil.rmtree(entry, ignore_errors=True)


@contextmanager
def _lock(root: Path, name: str) -> Iterator[None]:
    """One builder of a cache at a time; the others wait, then find it built."""
    with open(root / f".lock-{name}", "a") as fh:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """datasets' own tqdm bars off while ours show (restored afterwards)."""
    import datasets

    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def _integer(value: Any) -> int | None:
    """`value` as an int when it is an integer of any kind (numpy's too), else None; bools are not integers here."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


class _Bars:
    """Rich progress bars on stderr, one per step; every method is a no-op when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )

    def __enter__(self) -> _Bars:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def add(self, description: str, total: int) -> Callable[[int], None]:
        """A new bar; the returned function advances it."""
        if self.progress is None:
            return lambda n: None
        task = self.progress.add_task(description, total=max(total, 1))
        return lambda n: self.progress.advance(task, n)

    @contextmanager
    def poll(self, description: str, total: int, done_file: Path) -> Iterator[None]:
        """A bar that follows the size of `done_file` (one byte per finished row, written by worker processes)."""
        if self.progress is None:
            yield
            return
        task = self.progress.add_task(description, total=max(total, 1))
        stop = threading.Event()

        def follow() -> None:
            while not stop.wait(0.2):
                self.progress.update(task, completed=done_file.stat().st_size)

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.progress.update(task, completed=done_file.stat().st_size)
