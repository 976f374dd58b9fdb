"""The memory-mapped token cache: its tokens equal in-memory tokenization, blocks, reuse, atomic builds, bad input."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest

from tailorlm.data import corpus_documents
from tailorlm.data.token_cache import build_token_cache, open_token_cache, token_dtype
from tailorlm.errors import ConfigError, DataError

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared/data/pretraining_text/tiny_shakespeare/input.txt"
FALLBACK = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\n"
)
DOCS = [
    "The quick brown fox jumps over the lazy dog.\n\nA second paragraph of the same document.",
    "Café, naïve, Straße — “quoted” ünïcödé; 中文字符 and an emoji 😀 at the end",
    "Patients with diabetes should check their blood sugar.",
]


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def expected_stream(tokenizer, documents: list[str], *, eos: bool = True) -> np.ndarray:
    """In-memory tokenization: each document's ids, each followed by EOS."""
    stream: list[int] = []
    for doc in documents:
        stream += ids(tokenizer, doc) + ([tokenizer.eos_token_id] if eos else [])
    return np.array(stream)


def corpus_text(chars: int) -> str:
    text = SHAKESPEARE.read_text(encoding="utf-8")[:chars] if SHAKESPEARE.is_file() else FALLBACK * (chars // 100)
    return text + "\n" + DOCS[1] + "\n"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def small_pieces(monkeypatch):
    """Pieces of 300 characters with 64 of context, rows of 1,000 characters and reads of 97 bytes (which cut
    multi-byte characters), so that small files take many pieces and rows."""
    monkeypatch.setattr(corpus_documents, "READ_BYTES", 97)
    monkeypatch.setattr(corpus_documents, "WINDOW_CHARS", 300)
    monkeypatch.setattr(corpus_documents, "CONTEXT_CHARS", 64)
    monkeypatch.setattr(corpus_documents, "ROW_CHARS", 1000)


class Guarded:
    """A tokenizer that counts its calls, or fails when called at all (`fail=True`)."""

    def __init__(self, tokenizer, *, fail: bool = False) -> None:
        self.tokenizer, self.fail, self.calls = tokenizer, fail, 0

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __len__(self) -> int:
        return len(self.tokenizer)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.fail:
            raise RuntimeError("the tokenizer was called")
        return self.tokenizer(*args, **kwargs)


def test_memmap_tokens_equal_in_memory_tokenization(tiny_tokenizer, tmp_path):
    files = [tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.jsonl"]
    files[0].write_text(DOCS[0], encoding="utf-8")
    files[1].write_text(DOCS[1], encoding="utf-8")
    write_jsonl(files[2], [{"text": DOCS[2], "id": 7}, {"text": DOCS[1]}])

    cache = build_token_cache(files, tiny_tokenizer, cache_root=tmp_path / "cache", progress=False)

    expected = expected_stream(tiny_tokenizer, [DOCS[0], DOCS[1], DOCS[2], DOCS[1]])
    assert isinstance(cache.tokens, np.memmap) and not cache.tokens.flags.writeable
    np.testing.assert_array_equal(cache.tokens, expected)
    assert cache.num_tokens == len(expected) and cache.dtype == np.uint16
    assert cache.path.suffix == ".bin" and cache.path.stat().st_size == 2 * len(expected)
    info = json.loads(cache.path.with_suffix(".json").read_text())
    assert info["num_tokens"] == len(expected) and info["documents"] == 4 and info["dtype"] == "uint16"
    assert info["eos_id"] == tiny_tokenizer.eos_token_id
    assert [f["sha256"] for f in info["files"]] == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    assert [f["kind"] for f in info["files"]] == ["text", "text", "jsonl"]
    assert info["tokens_sha256"] == hashlib.sha256(cache.path.read_bytes()).hexdigest()
    assert open_token_cache(cache.path.with_suffix(".json")).num_tokens == cache.num_tokens


def test_long_document_tokenized_in_pieces_equals_whole_document(tiny_tokenizer, tmp_path, small_pieces):
    text = corpus_text(6000)
    path = tmp_path / "long.txt"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n", 3).encode("utf-8"))  # a BOM and some CRLF

    cache = build_token_cache([path], tiny_tokenizer, cache_root=tmp_path / "cache", progress=False)

    whole = path.read_bytes().decode("utf-8-sig")  # the BOM is dropped, line ends are kept as they are
    assert "\r\n" in whole
    np.testing.assert_array_equal(cache.tokens, expected_stream(tiny_tokenizer, [whole]))
    assert cache.info["documents"] == 1


def test_a_long_document_needs_a_tokenizer_with_offsets(tiny_tokenizer, tmp_path, small_pieces):
    class Slow(Guarded):
        is_fast = False

    short, long = tmp_path / "short.txt", tmp_path / "long.txt"
    short.write_text(DOCS[0], encoding="utf-8")
    long.write_text(corpus_text(1000), encoding="utf-8")
    cache = build_token_cache([short], Slow(tiny_tokenizer), cache_root=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(cache.tokens, expected_stream(tiny_tokenizer, [DOCS[0]]))
    with pytest.raises(ConfigError, match="needs a fast tokenizer") as err:
        build_token_cache([short, long], Slow(tiny_tokenizer), cache_root=tmp_path / "cache", progress=False)
    assert err.value.where == str(long)


def test_without_eos_documents_are_joined_directly(tokenizer, tmp_path):
    tokenizer.eos_token = None
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for path, doc in zip(files, DOCS):
        path.write_text(doc, encoding="utf-8")
    with pytest.raises(ConfigError, match="EOS") as err:
        build_token_cache(files, tokenizer, cache_root=tmp_path / "cache", progress=False)
    assert err.value.key == "append_eos"

    cache = build_token_cache(files, tokenizer, cache_root=tmp_path / "cache", append_eos=False, progress=False)
    np.testing.assert_array_equal(cache.tokens, expected_stream(tokenizer, DOCS[:2], eos=False))
    assert cache.info["eos_id"] is None


def test_blocks_overlap_by_one_token_and_resume_from_any_block(tiny_tokenizer, tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text(3000), encoding="utf-8")
    cache = build_token_cache([path], tiny_tokenizer, cache_root=tmp_path / "cache", progress=False)
    tokens, length = np.asarray(cache.tokens, dtype=np.int64), 64

    blocks = list(cache.blocks(length))
    assert cache.num_blocks(length) == len(blocks) == (cache.num_tokens - 1) // length
    assert all(b.shape == (length + 1,) and b.dtype == np.int64 for b in blocks)
    for first, second in zip(blocks, blocks[1:]):
        assert first[-1] == second[0]  # consecutive blocks share one token
    joined = np.concatenate([b[:-1] for b in blocks] + [blocks[-1][-1:]])
    np.testing.assert_array_equal(joined, tokens[: len(blocks) * length + 1])

    for start in (0, 1, np.int64(len(blocks) - 1), len(blocks)):
        resumed = list(cache.blocks(length, start=start))
        assert len(resumed) == len(blocks) - start
        for got, want in zip(resumed, blocks[start:]):
            np.testing.assert_array_equal(got, want)

    assert cache.num_blocks(cache.num_tokens) == 0 and cache.num_blocks(cache.num_tokens - 1) == 1
    with pytest.raises(ConfigError) as err:
        cache.blocks(length, start=len(blocks) + 1)  # refused at the call, before any block is read
    assert err.value.key == "start" and str(len(blocks)) in err.value.expected
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError) as err:
            cache.num_blocks(bad)
        assert err.value.key == "length"


def test_dtype_is_uint16_when_the_vocabulary_fits_else_uint32(tiny_tokenizer, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    assert token_dtype(65_536) == np.uint16 and token_dtype(65_537) == np.uint32
    vocab = {f"w{i}": i for i in range(70_000)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    big = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="w69999")
    path = tmp_path / "big.txt"
    path.write_text("w69998 w5 w65536 w70", encoding="utf-8")

    cache = build_token_cache([path], big, cache_root=tmp_path / "cache", progress=False)
    assert cache.dtype == np.uint32
    np.testing.assert_array_equal(cache.tokens, [69998, 5, 65536, 70, 69999])

    small = build_token_cache([path], tiny_tokenizer, cache_root=tmp_path / "cache", progress=False)
    assert small.dtype == np.uint16 and small.path != cache.path


def test_second_build_reuses_the_cache_without_tokenizing(tiny_tokenizer, tokenizer, tmp_path):
    from conftest import build_tiny_tokenizer

    files = [tmp_path / "a.txt", write_jsonl(tmp_path / "b.jsonl", [{"text": DOCS[1]}])]
    files[0].write_text(DOCS[0], encoding="utf-8")
    counting = Guarded(tiny_tokenizer)
    first = build_token_cache(files, counting, cache_root=tmp_path / "cache", progress=False)
    assert counting.calls > 0

    # Another instance of the same tokenizer, the same contents: found by key, nothing tokenized.
    again = build_token_cache(
        files, Guarded(build_tiny_tokenizer(), fail=True), cache_root=tmp_path / "cache", progress=False
    )
    assert again.path == first.path and again.num_tokens == first.num_tokens
    tokenizer(DOCS[0], truncation=True, max_length=4)  # leaves truncation set on its backend: not part of the key
    reused = build_token_cache(files, Guarded(tokenizer, fail=True), cache_root=tmp_path / "cache", progress=False)
    assert reused.path == first.path
    moved = tmp_path / "moved.txt"
    moved.write_bytes(files[0].read_bytes())  # keyed by content, not by path
    reused = build_token_cache([moved, files[1]], Guarded(tokenizer, fail=True), cache_root=tmp_path / "cache")
    assert reused.path == first.path

    files[0].write_text(DOCS[0] + " Changed.", encoding="utf-8")
    changed = build_token_cache(files, tiny_tokenizer, cache_root=tmp_path / "cache", progress=False)
    assert changed.path != first.path
    np.testing.assert_array_equal(changed.tokens, expected_stream(tiny_tokenizer, [DOCS[0] + " Changed.", DOCS[1]]))
    assert first.path.is_file()  # the old cache stays valid for its own inputs

    other = build_tiny_tokenizer()
    other.add_tokens(["quick brown"])
    assert build_token_cache(files, other, cache_root=tmp_path / "cache", progress=False).path != changed.path
    no_eos = build_token_cache(files, tiny_tokenizer, cache_root=tmp_path / "cache", append_eos=False, progress=False)
    assert no_eos.path != changed.path


def test_two_processes_write_the_same_bytes_as_one(tiny_tokenizer, tmp_path, small_pieces):
    files = [tmp_path / "long.txt", write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in DOCS * 20])]
    files[0].write_text(corpus_text(5000), encoding="utf-8")
    ipc = tiny_tokenizer(DOCS, add_special_tokens=False)  # the parent has used the tokenizer's thread pool
    assert ipc["input_ids"]

    one = build_token_cache(files, tiny_tokenizer, cache_root=tmp_path / "one", num_proc=1, progress=False)
    two = build_token_cache(files, tiny_tokenizer, cache_root=tmp_path / "two", num_proc=2, progress=False)

    assert one.info["documents"] == 61
    assert one.path.read_bytes() == two.path.read_bytes()
    whole = files[0].read_text(encoding="utf-8")
    np.testing.assert_array_equal(two.tokens, expected_stream(tiny_tokenizer, [whole] + DOCS * 20))


def test_a_corrupt_or_half_written_cache_is_rebuilt_with_a_warning(tiny_tokenizer, tmp_path, caplog):
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text(2000), encoding="utf-8")
    cache = build_token_cache([path], tiny_tokenizer, cache_root=tmp_path / "cache", progress=False)
    good = cache.path.read_bytes()

    cache.path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        open_token_cache(cache.path)
    assert err.value.where == str(cache.path) and f"{len(good) // 2:,} bytes" in err.value.found

    counting = Guarded(tiny_tokenizer)
    with caplog.at_level(logging.WARNING, logger="tailorlm.data.token_cache"):
        rebuilt = build_token_cache([path], counting, cache_root=tmp_path / "cache", progress=False)
    assert "truncated or corrupt" in caplog.text and "Rebuilding" in caplog.text
    assert counting.calls > 0 and rebuilt.path == cache.path and rebuilt.path.read_bytes() == good

    cache.path.with_suffix(".json").unlink()  # a token file without its sidecar is never trusted
    with pytest.raises(DataError, match="sidecar is missing"):
        open_token_cache(cache.path)
    counting = Guarded(tiny_tokenizer)
    again = build_token_cache([path], counting, cache_root=tmp_path / "cache", progress=False)
    assert counting.calls > 0 and again.path.read_bytes() == good


def test_an_interrupted_build_leaves_nothing_behind(tiny_tokenizer, tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(DOCS[0], encoding="utf-8")
    with pytest.raises(RuntimeError, match="tokenizer was called"):
        build_token_cache([path], Guarded(tiny_tokenizer, fail=True), cache_root=tmp_path / "cache", progress=False)
    left = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert all(name.startswith(".lock-") for name in left), left

    cache = build_token_cache([path], tiny_tokenizer, cache_root=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(cache.tokens, expected_stream(tiny_tokenizer, [DOCS[0]]))


def test_default_cache_root_is_under_tailorlm_home(tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("TAILORLM_HOME", str(tmp_path / "home"))
    path = tmp_path / "corpus.txt"
    path.write_text(DOCS[0], encoding="utf-8")
    cache = build_token_cache([path], tiny_tokenizer, progress=False)
    assert cache.path.parent == tmp_path / "home" / "token-cache"


def test_a_cache_pickles_without_its_memory_map(tiny_tokenizer, tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(DOCS[0], encoding="utf-8")
    cache = build_token_cache([path], tiny_tokenizer, cache_root=tmp_path / "cache", progress=False)
    first = cache.tokens[:4].tolist()
    data = pickle.dumps(cache)
    assert len(data) < 4096  # the tokens themselves do not travel
    np.testing.assert_array_equal(pickle.loads(data).tokens, cache.tokens)
    assert first == ids(tiny_tokenizer, DOCS[0])[:4]


def test_progress_bars_name_each_step(tiny_tokenizer, tmp_path, capsys):
    path = tmp_path / "corpus.txt"
    path.write_text(DOCS[0], encoding="utf-8")
    build_token_cache([path], tiny_tokenizer, cache_root=tmp_path / "cache", progress=True)
    err = capsys.readouterr().err
    for step in ("hashing corpus.txt", "reading", "tokenizing", "writing"):
        assert step in err


@pytest.mark.parametrize("read_bytes", [5, 1 << 20])
@pytest.mark.parametrize(
    "name, content, where, found",
    [
        ("model.bin", b"text then \x00\x01\x02 binary", "model.bin:1", "NUL byte"),
        ("latin1.txt", "line one\nCaf\u00e9 au lait\n".encode("latin-1"), "latin1.txt:2", "0xe9"),
        ("cut.txt", "ends in the middle of \u00e9".encode("utf-8")[:-1], "cut.txt:1", "cut short"),
    ],
)
def test_a_file_that_is_not_utf8_text_is_named(
    tiny_tokenizer, tmp_path, monkeypatch, name, content, where, found, read_bytes
):
    monkeypatch.setattr(corpus_documents, "READ_BYTES", read_bytes)
    good, bad = tmp_path / "good.txt", tmp_path / name
    good.write_text(DOCS[0], encoding="utf-8")
    bad.write_bytes(content)
    with pytest.raises(DataError, match="not UTF-8 text") as err:
        build_token_cache([good, bad], tiny_tokenizer, cache_root=tmp_path / "cache", progress=False)
    assert err.value.where.endswith(where) and found in err.value.found
    assert not list((tmp_path / "cache").glob("*.bin"))


def test_an_empty_corpus_is_refused(tiny_tokenizer, tmp_path):
    files = [tmp_path / "empty.txt", tmp_path / "blank.txt", write_jsonl(tmp_path / "e.jsonl", [{"text": ""}])]
    files[0].write_bytes(b"")
    files[1].write_text(" \n\n\t\n", encoding="utf-8")
    with pytest.raises(DataError, match="corpus is empty") as err:
        build_token_cache(files, tiny_tokenizer, cache_root=tmp_path / "cache", progress=False)
    assert "empty.txt" in err.value.where and "e.jsonl" in err.value.where

    files.append(tmp_path / "real.txt")
    files[-1].write_text(DOCS[2], encoding="utf-8")
    cache = build_token_cache(files, tiny_tokenizer, cache_root=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(cache.tokens, expected_stream(tiny_tokenizer, [DOCS[2]]))  # blanks skipped


def test_missing_files_folders_and_no_files_are_refused(tiny_tokenizer, tmp_path):
    with pytest.raises(DataError, match="no such file") as err:
        build_token_cache([tmp_path / "nope.txt"], tiny_tokenizer, cache_root=tmp_path, progress=False)
    assert err.value.where == str(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="is a folder"):
        build_token_cache([tmp_path], tiny_tokenizer, cache_root=tmp_path / "cache", progress=False)
    with pytest.raises(DataError, match="no corpus files"):
        build_token_cache([], tiny_tokenizer, cache_root=tmp_path / "cache", progress=False)
    path = tmp_path / "a.txt"
    path.write_text(DOCS[0], encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        build_token_cache([path], tiny_tokenizer, cache_root=tmp_path / "cache", num_proc=0, progress=False)
    assert err.value.key == "num_proc"


@pytest.mark.parametrize(
    "line, message, key",
    [
        ('{"text": "fine"', "not valid JSON", None),
        ('{"content": "no text field"}', "needs a text field", "text"),
        ('["a", "list"]', "needs a text field", "text"),
        ('{"text": 42}', "must be a string", "text"),
    ],
)
def test_bad_jsonl_rows_are_named_by_line(tiny_tokenizer, tmp_path, line, message, key):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "first"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message) as err:
        build_token_cache([path], tiny_tokenizer, cache_root=tmp_path / "cache", progress=False)
    assert err.value.where == f"{path}:3" and err.value.key == key
