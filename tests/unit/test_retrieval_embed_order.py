"""Embedding in length order: batches of similar token length, vectors stored with their own chunks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _retrieval_fakes import FakeEmbedder, bag_of_words, word_tokenizer, write_docs
from tailorlm.retrieval import index as index_module
from tailorlm.retrieval.embeddings import length_order
from tailorlm.retrieval.index import build_index, open_index


def test_length_order_puts_the_most_tokens_first_and_keeps_ties_in_order() -> None:
    texts = ["one two", "one two three four", "one", "five six", "a b c"]
    assert length_order(word_tokenizer(), texts).tolist() == [1, 4, 0, 3, 2]
    assert length_order(word_tokenizer(), []).tolist() == []


class RecordingEmbedder(FakeEmbedder):
    """The fake embedder, remembering each call's texts."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[str]] = []

    def embed(self, texts, *, progress: bool = False) -> np.ndarray:
        self.calls.append(list(texts))
        return super().embed(texts, progress=progress)


def test_chunks_embedded_longest_first_keep_their_own_vectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "EMBED_BATCH", 3)
    monkeypatch.setattr(index_module, "EMBED_GROUP", 7)
    # One file per document, each one chunk, of 1 to 12 words in a shuffled order.
    lengths = [5, 1, 12, 3, 9, 2, 7, 11, 4, 8, 6, 10]
    docs = write_docs(tmp_path / "docs", {f"d{i:02}.txt": " ".join(f"w{i}x{j}" for j in range(n)) for i, n in enumerate(lengths)})
    embedder = RecordingEmbedder()
    build_index([docs], tmp_path / "index", embedder=embedder, chunk_tokens=16, overlap=0, progress=False)

    # Groups of 7 chunks in storage order, each embedded from its longest chunk down, 3 at a time.
    words = [[len(text.split()) for text in call] for call in embedder.calls]
    assert words == [[12, 9, 7], [5, 3, 2], [1], [11, 10, 8], [6, 4]]
    with open_index(tmp_path / "index", embedder=FakeEmbedder()) as index:
        chunks = list(index.store.all_chunks())
        stored = index.store.vectors([chunk.chunk_id for chunk in chunks])
    assert [len(chunk.text.split()) for chunk in chunks] == lengths  # storage keeps the files' order
    np.testing.assert_allclose(stored, bag_of_words([chunk.text for chunk in chunks], 64), atol=1e-6)
