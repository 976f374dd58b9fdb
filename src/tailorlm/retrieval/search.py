"""Search an index: dense, BM25 or hybrid (reciprocal-rank fusion), with filters, MMR diversity and reranking."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from tailorlm.errors import ConfigError, ModelError
from tailorlm.retrieval.store import Hit

if TYPE_CHECKING:
    from tailorlm.retrieval.index import Index

MODES = ("hybrid", "dense", "bm25")
RRF_K = 60
NO_RERANKER = "no reranker model available; pass one with --reranker REF"


class Reranker(Protocol):
    """Anything that scores (query, passage) pairs, as sentence-transformers' CrossEncoder does."""

    def predict(self, pairs: list[tuple[str, str]], **kwargs: Any) -> Sequence[float]:
        """One relevance score per pair, higher is better."""


class Hits(list):
    """Hits, best first, with notes for the user (such as a reranking that could not run)."""

    def __init__(self, hits: Sequence[Hit] = (), notes: Sequence[str] = ()) -> None:
        super().__init__(hits)
        self.notes = list(notes)


def candidate_depth(k: int) -> int:
    """How many hits of each ranking fusion, MMR and reranking look at: max(50, 4k)."""
    return max(50, 4 * k)


def search(
    index: "Index",
    query: str,
    *,
    k: int = 5,
    mode: str = "hybrid",
    filters: Mapping[str, Any] | None = None,
    mmr: float | None = None,
    rerank: bool = False,
    reranker: "str | Path | Reranker | None" = None,
    query_vector: np.ndarray | None = None,
) -> Hits:
    """The k best chunks for `query`, best first.

    Dense scores are cosine similarities, BM25 scores are BM25, hybrid scores are reciprocal-rank-fusion sums
    (each ranking adds 1 / (60 + rank)); reranked scores come from the cross-encoder. `filters` ({"source":
    "CDC"}) keep only chunks whose doc_id, title, heading, page or metadata field equals the value, in every
    mode. `mmr` (lambda in [0, 1]) reorders the candidates for diversity. `query_vector` saves embedding the
    query again when the caller already has it.
    """
    _check(k, mode, mmr)
    notes: list[str] = []
    deep = mode == "hybrid" or mmr is not None or (rerank and reranker is not None)
    depth = candidate_depth(k) if deep else k
    if mode != "bm25" and query_vector is None:
        query_vector = index.embedder.embed_queries([query])[0]
    if mode == "dense":
        hits = index.store.search(query_vector, depth, filters)
    elif mode == "bm25":
        hits = bm25_hits(index, query, depth, filters)
    else:
        dense = index.store.search(query_vector, depth, filters)
        hits = reciprocal_rank_fusion([dense, bm25_hits(index, query, depth, filters)])
    if rerank:
        if reranker is None:
            notes.append(NO_RERANKER)
        else:
            hits = rerank_hits(query, hits, load_reranker(reranker))
    if mmr is not None and hits:
        vectors = index.store.vectors([hit.chunk_id for hit in hits])
        relevance = _relevance(hits, vectors, query_vector, cosine=mode == "dense" and not (rerank and reranker))
        hits = [hits[i] for i in mmr_order(relevance, vectors, mmr, k)]
    return Hits(hits[:k], notes)


def parse_filters(pairs: Sequence[str], *, flag: str = "--filter") -> dict[str, str]:
    """`key=value` texts as search filters; values stay text, which matches numbers and booleans stored as such.

    >>> parse_filters(["source=CDC", "page=3"])
    {'source': 'CDC', 'page': '3'}
    """
    filters: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(f"bad {flag}", key=flag.lstrip("-"), found=repr(pair),
                              expected=f"key=value, e.g. {flag} source=CDC")
        if key in filters and filters[key] != value:
            raise ConfigError(f"two values for one field in {flag}", key=key, found=f"{filters[key]!r} and {value!r}",
                              expected="one value per field (every filter must hold)")
        filters[key] = value
    return filters


def bm25_hits(index: "Index", query: str, k: int, filters: Mapping[str, Any] | None = None) -> list[Hit]:
    """The k best chunks by BM25 among those matching `filters`."""
    allowed = {chunk.chunk_id for chunk in index.store.all_chunks(filters)} if filters else None
    scored = index.lexical.search(query, k, allowed)
    chunks = index.store.get([chunk_id for chunk_id, _ in scored])
    return [Hit(chunk.chunk_id, score, chunk) for (_, score), chunk in zip(scored, chunks)]


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Hit]], k: int = RRF_K) -> list[Hit]:
    """Hits of several rankings by the sum of 1 / (k + rank) over the rankings that hold them (rank from 1).

    Ties keep the order in which hits first appear (the first ranking first), so fusion is deterministic.
    """
    scores: dict[str, float] = {}
    first: dict[str, Hit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (k + rank)
            first.setdefault(hit.chunk_id, hit)
    order = sorted(first, key=lambda chunk_id: -scores[chunk_id])
    return [Hit(chunk_id, scores[chunk_id], first[chunk_id].chunk) for chunk_id in order]


def mmr_order(relevance: np.ndarray, vectors: np.ndarray, lam: float, k: int) -> list[int]:
    """Maximal marginal relevance: pick in turn the candidate maximising lam * relevance - (1 - lam) * max similarity
    to those already picked (similarity = dot product of the normalised vectors). Returns candidate positions."""
    similarity = vectors @ vectors.T  # (N, N)
    chosen: list[int] = []
    left = list(range(len(relevance)))
    while left and len(chosen) < k:
        redundancy = similarity[np.ix_(left, chosen)].max(axis=1) if chosen else np.zeros(len(left))
        gains = lam * relevance[left] - (1.0 - lam) * redundancy
        chosen.append(left.pop(int(np.argmax(gains))))
    return chosen


def _relevance(hits: Sequence[Hit], vectors: np.ndarray, query_vector: np.ndarray, *, cosine: bool) -> np.ndarray:
    """MMR's relevance: the cosine for dense search, else the mode's scores scaled to [0, 1] over the candidates."""
    if cosine:
        return vectors @ np.asarray(query_vector, dtype=np.float32)
    scores = np.array([hit.score for hit in hits], dtype=np.float64)
    spread = scores.max() - scores.min()
    return (scores - scores.min()) / spread if spread > 0 else np.ones_like(scores)


def rerank_hits(query: str, hits: Sequence[Hit], reranker: Reranker) -> list[Hit]:
    """The hits rescored by the reranker on (query, chunk text) pairs, best first; ties keep their order."""
    if not hits:
        return []
    scores = np.asarray(reranker.predict([(query, hit.chunk.text) for hit in hits]), dtype=np.float64).reshape(-1)
    order = sorted(range(len(hits)), key=lambda i: -scores[i])
    return [Hit(hits[i].chunk_id, float(scores[i]), hits[i].chunk) for i in order]


_RERANKERS: dict[str, Reranker] = {}


def load_reranker(reranker: "str | Path | Reranker") -> Reranker:
    """A reranker object as given, or a sentence-transformers CrossEncoder loaded (once) from a model reference."""
    if hasattr(reranker, "predict"):
        return reranker  # type: ignore[return-value]
    from tailorlm.models.hub import resolve

    folder = resolve(str(reranker))
    key = str(folder.resolve())
    if key not in _RERANKERS:
        from sentence_transformers import CrossEncoder

        try:
            _RERANKERS[key] = CrossEncoder(str(folder), local_files_only=True, device=None if _has_cuda() else "cpu")
        except (OSError, ValueError, KeyError) as err:
            raise ModelError("cannot load the reranker", where=str(folder), found=f"{type(err).__name__}: {err}",
                             expected="a cross-encoder folder (a sequence-classification model and its tokenizer)") from None
    return _RERANKERS[key]


def _has_cuda() -> bool:
    """Whether torch sees a GPU."""
    import torch

    return torch.cuda.is_available()


def _check(k: int, mode: str, mmr: float | None) -> None:
    """ConfigError for a setting outside what search allows."""
    if mode not in MODES:
        raise ConfigError("unknown search mode", key="mode", found=repr(mode), expected=" | ".join(MODES))
    if not isinstance(k, int) or k < 1:
        raise ConfigError("k must be a positive number of hits", key="k", found=repr(k), expected="1 or more")
    if mmr is not None and not 0.0 <= mmr <= 1.0:
        raise ConfigError("the MMR lambda is out of range", key="mmr", found=repr(mmr),
                          expected="a number from 0 (most diverse) to 1 (most relevant)")
