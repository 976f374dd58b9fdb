"""Retrieval metrics (recall@k, MRR@10, nDCG@10 as BEIR and trec_eval define them) and evaluation of an index."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tailorlm.errors import ConfigError, DataError

if TYPE_CHECKING:
    from tailorlm.retrieval.index import Index

DEFAULT_MODES = ("dense", "bm25", "hybrid")


def query_metrics(ranked: Sequence[str], judged: Mapping[str, int], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """One query's recall@k for each k, MRR@10 and nDCG@10; `ranked` is best first, `judged` maps doc id to grade.

    Documents graded 0 or below are not relevant. nDCG uses linear gains (the grade) and a log2(rank + 1)
    discount, normalised by the ideal ordering of the judged grades, as trec_eval's ndcg_cut does.

    >>> query_metrics(["a", "b", "c"], {"b": 1, "z": 1}, ks=(1, 2))
    {'recall@1': 0.0, 'recall@2': 0.5, 'mrr@10': 0.5, 'ndcg@10': 0.38685280723454163}
    """
    ranked = _unique(ranked)
    relevant = {doc for doc, grade in judged.items() if grade > 0}
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"recall@{k}"] = len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0
    first = next((rank for rank, doc in enumerate(ranked[:10], start=1) if doc in relevant), None)
    metrics["mrr@10"] = 1.0 / first if first else 0.0
    dcg = sum(max(judged.get(doc, 0), 0) / math.log2(rank + 1) for rank, doc in enumerate(ranked[:10], start=1))
    ideal_grades = sorted((grade for grade in judged.values() if grade > 0), reverse=True)[:10]
    idcg = sum(grade / math.log2(rank + 1) for rank, grade in enumerate(ideal_grades, start=1))
    metrics["ndcg@10"] = dcg / idcg if idcg else 0.0
    return metrics


def retrieval_metrics(
    ranked: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Mean of `query_metrics` over every query with a relevant document; a query missing from `ranked` scores 0."""
    per_query = per_query_metrics(ranked, qrels, ks)
    if not per_query:
        raise DataError("no query has a relevant document", found=f"{len(qrels)} judged queries",
                        expected="qrels with at least one score above 0")
    names = next(iter(per_query.values())).keys()
    return {name: sum(m[name] for m in per_query.values()) / len(per_query) for name in names}


def per_query_metrics(
    ranked: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, dict[str, float]]:
    """`query_metrics` for each query of `qrels` that has at least one relevant document."""
    return {qid: query_metrics(ranked.get(qid, []), judged, ks)
            for qid, judged in qrels.items() if any(grade > 0 for grade in judged.values())}


def documents_of_hits(hits: Iterable, depth: int = 10) -> list[str]:
    """Document ids in the order of their best-ranked chunk, at most `depth` of them."""
    return _unique((hit.chunk.doc_id for hit in hits), depth)


@dataclass
class IndexEvaluation:
    """Mean metrics per search mode, and optionally each query's metrics and ranked documents per mode."""

    metrics: dict[str, dict[str, float]]
    queries: int
    per_query: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    ranked: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def table(self) -> str:
        """A plain-text table: one row per mode, one column per metric."""
        names = list(next(iter(self.metrics.values())).keys())
        lines = ["| mode | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for mode, values in self.metrics.items():
            lines.append(f"| {mode} | " + " | ".join(f"{values[name]:.3f}" for name in names) + " |")
        return "\n".join(lines)

    def write_per_query(self, path: str | Path) -> int:
        """Write one JSON line per (query, mode): its metrics and ranked document ids; how many lines were written.

        Needs `evaluate_index(..., keep_per_query=True)`.
        """
        if not self.per_query:
            raise ConfigError("no per-query results were kept", hint="Evaluate with keep_per_query=True")
        lines = 0
        with Path(path).open("w", encoding="utf-8") as f:
            for mode, queries in self.per_query.items():
                for qid, metrics in queries.items():
                    row = {"query_id": qid, "mode": mode, **metrics, "ranked": self.ranked[mode].get(qid, [])}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    lines += 1
        return lines


def evaluate_index(
    index: "Index",
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    modes: Sequence[str] = DEFAULT_MODES,
    *,
    ks: Sequence[int] = (1, 5, 10),
    chunks_per_query: int = 30,
    keep_per_query: bool = False,
    progress: bool = False,
) -> IndexEvaluation:
    """Search the index with every judged query in each mode and score the documents of the hits.

    A document's rank is the best rank of any of its chunks; `chunks_per_query` chunks are fetched so that
    documents with several chunks still leave ten distinct documents to score.
    """
    from tailorlm.retrieval.search import search

    judged = {qid: q for qid, q in qrels.items() if any(grade > 0 for grade in q.values())}
    missing = [qid for qid in judged if qid not in queries]
    if missing:
        raise DataError("judged queries have no text", found=f"{len(missing)} such as {missing[0]!r}",
                        expected="every query id of the qrels in the queries file")
    qids = list(judged)
    depth = max(max(ks), 10)
    vectors = index.embedder.embed_queries([queries[qid] for qid in qids]) if set(modes) - {"bm25"} else None
    result = IndexEvaluation(metrics={}, queries=len(qids))
    for mode in modes:
        ranked: dict[str, list[str]] = {}
        for i, qid in enumerate(_progress(qids, f"evaluating {mode}", progress)):
            vector = vectors[i] if vectors is not None else None
            hits = search(index, queries[qid], k=max(chunks_per_query, depth), mode=mode, query_vector=vector)
            ranked[qid] = documents_of_hits(hits, depth)
        result.metrics[mode] = retrieval_metrics(ranked, judged, ks)
        if keep_per_query:
            result.per_query[mode] = per_query_metrics(ranked, judged, ks)
            result.ranked[mode] = ranked
    return result


def _unique(items: Iterable[str], limit: int | None = None) -> list[str]:
    """Items in order with later repeats dropped, at most `limit` of them."""
    seen: dict[str, None] = {}
    for item in items:
        if item not in seen:
            seen[item] = None
            if limit is not None and len(seen) >= limit:
                break
    return list(seen)


def _progress(items: list[str], description: str, show: bool) -> Iterable[str]:
    """The items, with a progress bar when asked."""
    if not show:
        return items
    from rich.progress import track

    return track(items, description=description, transient=True)
