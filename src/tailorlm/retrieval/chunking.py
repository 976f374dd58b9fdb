"""Cut documents into chunks that fit the embedding model, counted in that model's own tokens.

Each document is tokenized once (a fast tokenizer, with character offsets, no special tokens); every gap between
two tokens gets a boundary level from the text around it, and chunks are cut by those levels:

- a chunk ends at the last paragraph break (a blank line) in the second half of its token budget, else the last
  sentence end (., ! or ? followed by space and a character that is not a lower-case letter; 。！？), else the last
  line break, else the last space; only a single word longer than the budget is cut inside;
- the next chunk starts up to `overlap` tokens before the end of the previous one, at the best boundary in that
  window (its first half preferred, so the overlap stays close to `overlap`), or right at the end when no
  boundary is there;
- chunk text is `document.text[start:end]` with surrounding whitespace left out, and every chunk is checked by
  tokenizing its own text again: a tokenizer whose tokens change at a cut (byte-level BPE, SentencePiece) has that
  document cut again with a smaller budget, so no chunk is ever longer than `chunk_tokens` tokens.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tailorlm.errors import ConfigError
from tailorlm.retrieval.documents import Document

SPACE, LINE, SENTENCE, PARAGRAPH = 1, 2, 3, 4
DEFAULT_CHUNK_TOKENS = 256
_WS, _END, _CLOSE, _CJK_END, _CJK, _LOWER = 1, 2, 4, 8, 16, 32  # character classes, one bit each


def _char_classes() -> np.ndarray:
    """A table from code point (below 0x10000) to its class bits."""
    table = np.zeros(0x10000, dtype=np.uint8)
    for code in (9, 10, 11, 12, 13, 32, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000):
        table[code] |= _WS
    for chars, bit in ((".!?", _END), ("\"')]”’»", _CLOSE), ("。！？", _CJK_END), ("abcdefghijklmnopqrstuvwxyz", _LOWER)):
        table[[ord(c) for c in chars]] |= bit
    for low, high in ((0x3040, 0x30FF), (0x3400, 0x9FFF), (0xF900, 0xFAFF)):  # kana and CJK ideographs
        table[low:high + 1] |= _CJK
    return table


_CLASSES = _char_classes()
_BATCH_DOCS = 256
_WORD_SPLITTERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}
_plain_tokenizers: dict[int, tuple[Any, Any]] = {}


@dataclass
class Chunk:
    """A piece of one document: `text == document.text[start:end]`, with the heading and page where it starts."""

    chunk_id: str
    """`doc_id:index`, index counting from 0 within the document."""
    doc_id: str
    text: str
    start: int
    end: int
    title: str | None = None
    heading: str | None = None
    """The nearest heading at or before `start` (Markdown, HTML, DOCX)."""
    page: int | None = None
    """The PDF page that `start` lies on."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """The document's metadata and its `path`."""


def chunk_document(doc: Document, tokenizer: Any, *, chunk_tokens: int = DEFAULT_CHUNK_TOKENS, overlap: int = 32) -> list[Chunk]:
    """Cut one document into chunks of at most `chunk_tokens` tokens of `tokenizer` (see the module docstring)."""
    return chunk_documents([doc], tokenizer, chunk_tokens=chunk_tokens, overlap=overlap)


def chunk_documents(docs: Iterable[Document], tokenizer: Any, *, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                    overlap: int = 32) -> list[Chunk]:
    """Cut many documents, tokenizing them in batches (the tokenizer's threads run in parallel)."""
    check_chunk_settings(chunk_tokens, overlap)
    backend = plain_tokenizer(tokenizer)
    # Tokenizers that split words at whitespace and punctuation give a chunk cut there the same tokens it had
    # in the document; only chunks cut inside a word need counting again. Others count every chunk again.
    stable = type(backend.pre_tokenizer).__name__ in _WORD_SPLITTERS
    docs = list(docs)
    chunks: list[Chunk] = []
    for first in range(0, len(docs), _BATCH_DOCS):
        batch = docs[first:first + _BATCH_DOCS]
        offsets = [enc.offsets for enc in backend.encode_batch([doc.text for doc in batch], add_special_tokens=False)]
        levels = [boundary_levels(doc.text, doc_offsets) for doc, doc_offsets in zip(batch, offsets)]
        spans = [_spans(doc_levels, chunk_tokens, overlap) for doc_levels in levels]
        _fit(backend, batch, offsets, levels, spans, chunk_tokens, overlap, stable)
        for doc, doc_offsets, doc_spans in zip(batch, offsets, spans):
            chunks.extend(_chunks(doc, char_ranges(doc.text, doc_offsets, doc_spans)))
    return chunks


def check_chunk_settings(chunk_tokens: int, overlap: int) -> None:
    """ConfigError unless 1 <= chunk_tokens and 0 <= overlap < chunk_tokens."""
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ConfigError("bad chunk size", key="chunk_tokens", found=repr(chunk_tokens), expected="a whole number of tokens, at least 1")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < chunk_tokens:
        raise ConfigError("bad chunk overlap", key="overlap", found=repr(overlap),
                          expected=f"a whole number of tokens from 0 to {chunk_tokens - 1} (less than chunk_tokens {chunk_tokens})")


def default_chunk_tokens(embedder: Any) -> int:
    """256 tokens, or fewer when the model's input (`max_tokens`, special tokens included) is shorter."""
    specials = embedder.tokenizer.num_special_tokens_to_add(pair=False) if hasattr(embedder.tokenizer, "num_special_tokens_to_add") else 0
    return max(1, min(DEFAULT_CHUNK_TOKENS, int(embedder.max_tokens) - specials))


def plain_tokenizer(tokenizer: Any) -> Any:
    """The `tokenizers.Tokenizer` behind a fast tokenizer, copied once when truncation or padding is switched on."""
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if not isinstance(backend, Tokenizer):
        raise ConfigError("chunking needs a fast tokenizer (with character offsets)", found=type(tokenizer).__name__,
                          expected="a transformers fast tokenizer or a tokenizers.Tokenizer")
    if backend.truncation is None and backend.padding is None:
        return backend
    cached = _plain_tokenizers.get(id(backend))
    if cached is None or cached[0] is not backend:
        plain = Tokenizer.from_str(backend.to_str())
        plain.no_truncation()
        plain.no_padding()
        cached = _plain_tokenizers[id(backend)] = (backend, plain)
    return cached[1]


def token_spans(text: str, offsets: Sequence[tuple[int, int]], chunk_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """Chunks of one tokenized text as token ranges [a, b): cut at the best boundaries, overlapping by about `overlap`."""
    return _spans(boundary_levels(text, offsets), chunk_tokens, overlap)


def _spans(levels: np.ndarray, chunk_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """Token ranges [a, b) of the chunks of a text whose boundary levels are `levels`."""
    n = len(levels)
    if n == 0:
        return []
    spans, a = [], 0
    while n - a > chunk_tokens:
        b = _cut(levels, a, a + chunk_tokens)
        spans.append((a, b))
        a = _next_start(levels, a, b, overlap)
    spans.append((a, n))
    return spans


def boundary_levels(text: str, offsets: Sequence[tuple[int, int]]) -> np.ndarray:
    """levels[i]: how good a cut between token i-1 and token i is (0 inside a word ... PARAGRAPH); levels[0] = 0."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # (L,) code points
    classes = _CLASSES[np.minimum(codes, 0xFFFF)]  # (L,) class bits
    starts = np.fromiter((s for s, _ in offsets), dtype=np.int64, count=len(offsets))
    c = np.minimum(starts[1:], codes.size - 1)  # (n-1,) where each token after the first starts
    solid = np.flatnonzero((classes & _WS) == 0)  # positions of characters that are not whitespace
    k = np.searchsorted(solid, c)
    right = np.where(k < solid.size, solid[np.minimum(k, solid.size - 1)], codes.size)  # first non-space at or after c
    left = np.where(k > 0, solid[np.maximum(k - 1, 0)] + 1, 0)  # just after the last non-space before c
    newlines = np.flatnonzero(codes == 10)
    breaks = np.searchsorted(newlines, right) - np.searchsorted(newlines, left)
    spaced = right > left
    before, before2 = classes[np.maximum(left - 1, 0)], classes[np.maximum(left - 2, 0)]
    after = classes[np.minimum(right, codes.size - 1)]
    ends_sentence = ((before & _END) > 0) | (((before & _CLOSE) > 0) & ((before2 & _END) > 0))
    ends_sentence &= spaced & (left > 0) & ((after & _LOWER) == 0)
    previous, current = classes[np.maximum(c - 1, 0)], classes[c]
    levels = np.zeros(len(offsets), dtype=np.int8)
    levels[1:] = np.select(
        [breaks >= 2, ends_sentence | ((previous & _CJK_END) > 0), breaks == 1, spaced | (((previous | current) & _CJK) > 0)],
        [PARAGRAPH, SENTENCE, LINE, SPACE], 0)
    return levels


def _cut(levels: np.ndarray, a: int, limit: int) -> int:
    """Where a chunk starting at token a ends: the last best boundary in the second half of its budget."""
    for low, high in ((a + max(1, (limit - a) // 2), limit + 1), (a + 1, a + max(1, (limit - a) // 2))):
        window = levels[low:high]
        if window.size and (best := window.max()) > 0:
            return low + int(np.flatnonzero(window == best)[-1])
    return limit  # a single word longer than the budget


def _next_start(levels: np.ndarray, a: int, b: int, overlap: int) -> int:
    """Where the chunk after [a, b) starts: the best boundary in the last `overlap` tokens, early ones preferred."""
    low = max(a + 1, b - overlap)
    for high in (max(low + 1, b - overlap // 2 + 1), b):
        window = levels[low:high]
        if window.size and (best := window.max()) > 0:
            return low + int(np.flatnonzero(window == best)[0])
    return b


def _fit(backend: Any, docs: list[Document], offsets: list[list[tuple[int, int]]], levels: list[np.ndarray],
         spans: list[list[tuple[int, int]]], chunk_tokens: int, overlap: int, stable: bool) -> None:
    """Tokenize chunks' own text again; cut a document again, with a smaller budget, while a chunk is too long."""
    budgets = [chunk_tokens] * len(docs)
    todo = list(range(len(docs)))
    while todo:
        texts, owners = [], []
        for i in todo:
            n = len(levels[i])
            ranges = char_ranges(docs[i].text, offsets[i], spans[i])
            for (a, b), (start, end) in zip(spans[i], ranges):
                if not stable or (a > 0 and levels[i][a] == 0) or (b < n and levels[i][b] == 0):
                    texts.append(docs[i].text[start:end])
                    owners.append(i)
        excess: dict[int, int] = {}
        for i, encoding in zip(owners, backend.encode_batch(texts, add_special_tokens=False)):
            if len(encoding.ids) > chunk_tokens:
                excess[i] = max(excess.get(i, 0), len(encoding.ids) - chunk_tokens)
        todo = []
        for i, over in sorted(excess.items()):
            if budgets[i] == 1:  # one token that reads as several on its own: there is nothing smaller to cut
                continue
            budgets[i] = max(1, budgets[i] - over)
            spans[i] = _spans(levels[i], budgets[i], min(overlap, budgets[i] - 1))
            todo.append(i)


def char_ranges(text: str, offsets: Sequence[tuple[int, int]], spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Character ranges of token ranges, with whitespace at either end left out."""
    ranges = []
    for a, b in spans:
        start, end = offsets[a][0], offsets[b - 1][1]
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        ranges.append((start, end))
    return ranges


def _chunks(doc: Document, ranges: list[tuple[int, int]]) -> list[Chunk]:
    """Chunk objects for a document's character ranges, with the heading and page each one starts in."""
    heading_offsets = [offset for offset, _ in doc.headings]
    page_offsets = [offset for _, offset in doc.pages]
    metadata = {"path": doc.path, **doc.metadata}
    chunks = []
    for start, end in ranges:
        if start >= end:
            continue
        h = bisect.bisect_right(heading_offsets, start) - 1
        p = bisect.bisect_right(page_offsets, start) - 1
        chunks.append(Chunk(chunk_id=f"{doc.doc_id}:{len(chunks)}", doc_id=doc.doc_id, text=doc.text[start:end],
                            start=start, end=end, title=doc.title, heading=doc.headings[h][1] if h >= 0 else None,
                            page=doc.pages[p][0] if p >= 0 else None, metadata=dict(metadata)))
    return chunks
