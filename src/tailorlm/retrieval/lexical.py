"""Lexical search: BM25 (bm25s) over chunk texts, words lowercased and English stopwords dropped."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from tailorlm.errors import DataError
from tailorlm.retrieval.chunking import Chunk

CHUNK_IDS_FILE = "chunk_ids.json"
_WORD = re.compile(r"\w+")


def _stopwords() -> frozenset[str]:
    """bm25s's English stopword list."""
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


STOPWORDS = _stopwords()


def tokenize(text: str) -> list[str]:
    """Lowercase words without English stopwords.

    >>> tokenize("What is the Treatment of Acanthamoeba keratitis?")
    ['what', 'treatment', 'acanthamoeba', 'keratitis']
    """
    return [word for word in _WORD.findall(text.lower()) if word not in STOPWORDS]


class LexicalIndex:
    """A BM25 index whose documents are chunks, found again by position in `chunk_ids`."""

    def __init__(self, retriever: object | None, chunk_ids: list[str]) -> None:
        self.retriever = retriever
        self.chunk_ids = chunk_ids
        self._position = {chunk_id: i for i, chunk_id in enumerate(chunk_ids)}

    @classmethod
    def build(cls, chunks: Iterable[Chunk]) -> "LexicalIndex":
        """Index the chunks' texts (with their titles and headings, which often carry the topic's words)."""
        import bm25s

        chunk_ids, corpus = [], []
        for chunk in chunks:
            chunk_ids.append(chunk.chunk_id)
            corpus.append(tokenize(" ".join(part for part in (chunk.title, chunk.heading, chunk.text) if part)))
        if not chunk_ids:
            return cls(None, [])
        retriever = bm25s.BM25()
        retriever.index(corpus, show_progress=False)
        return cls(retriever, chunk_ids)

    def save(self, folder: Path) -> None:
        """Write the BM25 matrices and the chunk ids into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        if self.retriever is not None:
            self.retriever.save(str(folder), show_progress=False)
        (folder / CHUNK_IDS_FILE).write_text(json.dumps(self.chunk_ids), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "LexicalIndex":
        """Read an index written by `save`."""
        import bm25s

        ids_path = folder / CHUNK_IDS_FILE
        if not ids_path.is_file():
            raise DataError("the index has no BM25 data", where=str(folder), expected=f"{CHUNK_IDS_FILE} and bm25s files",
                            hint="Index the documents again")
        chunk_ids = json.loads(ids_path.read_text(encoding="utf-8"))
        retriever = bm25s.BM25.load(str(folder), show_progress=False) if chunk_ids else None
        return cls(retriever, chunk_ids)

    def search(self, query: str, k: int, allowed: set[str] | None = None) -> list[tuple[str, float]]:
        """The k best (chunk id, BM25 score) pairs sharing a word with the query, among `allowed` chunk ids."""
        tokens = tokenize(query)
        if self.retriever is None or not tokens or k <= 0:
            return []
        scores = np.asarray(self.retriever.get_scores(tokens), dtype=np.float32)  # (num_chunks,)
        if allowed is not None:
            mask = np.zeros(len(self.chunk_ids), dtype=bool)
            mask[[self._position[cid] for cid in allowed if cid in self._position]] = True
            scores = np.where(mask, scores, 0.0)
        k = min(k, int(np.count_nonzero(scores > 0)))
        if k == 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        # Ties keep index order, so equal scores rank the same way every time.
        top = top[np.lexsort((top, -scores[top]))]
        return [(self.chunk_ids[i], float(scores[i])) for i in top]
