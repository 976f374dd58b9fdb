"""Retrieval metrics (recall@k, MRR@10, nDCG@10 as BEIR and trec_eval define them), evaluation of an index, and
the queries and relevance judgements (BEIR's queries.jsonl and qrels TSV) it is evaluated on."""

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
QRELS_COLUMNS = ["query-id", "corpus-id", "score"]


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
    notes: list[str] = field(default_factory=list)
    """What users should know about the scores, such as judged documents that are not in the index."""

    def to_dict(self) -> dict:
        """The mean metrics per mode, the number of queries and the notes, for JSON."""
        return {"queries": self.queries, "metrics": self.metrics, "notes": self.notes}

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
        Path(path).parent.mkdir(parents=True, exist_ok=True)
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
    from tailorlm.retrieval.search import MODES, search

    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise ConfigError("unknown search mode", key="modes", found=repr(unknown[0]) if unknown else "no mode",
                          expected="one or more of " + ", ".join(DEFAULT_MODES))
    judged = {qid: q for qid, q in qrels.items() if any(grade > 0 for grade in q.values())}
    missing = [qid for qid in judged if qid not in queries]
    if missing:
        raise DataError("judged queries have no text", found=f"{len(missing)} such as {missing[0]!r}",
                        expected="every query id of the qrels in the queries file")
    qids = list(judged)
    depth = max(max(ks), 10)
    result = IndexEvaluation(metrics={}, queries=len(qids), notes=_unindexed_note(index, judged))
    vectors = index.embedder.embed_queries([queries[qid] for qid in qids]) if set(modes) - {"bm25"} else None
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


@dataclass
class EvalSet:
    """Queries by id, their relevance judgements (qrels[query_id][doc_id] = grade), and the files they came from."""

    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    queries_path: Path
    qrels_path: Path


def read_eval_set(queries: str | Path, qrels: str | Path | None = None, *, split: str = "test") -> EvalSet:
    """Read queries and qrels; a BEIR folder given as `queries` supplies both (its qrels from qrels/<split>.tsv).

    An explicit `qrels` file replaces the folder's. Every query id of the qrels must be in the queries.
    """
    queries_path = Path(queries)
    if queries_path.is_dir():
        folder = queries_path
        queries_path = next((folder / name for name in ("queries.jsonl", "queries.jsonl.gz") if (folder / name).is_file()),
                            folder / "queries.jsonl")
        if not queries_path.is_file():
            raise DataError("no queries in the folder", where=str(folder), found=_listing(folder),
                            expected="a BEIR folder (queries.jsonl and qrels/<split>.tsv) or a queries.jsonl file")
        if qrels is None:
            qrels = folder / "qrels" / f"{split}.tsv"
            if not qrels.is_file():
                splits = sorted(path.stem for path in (folder / "qrels").glob("*.tsv"))
                raise DataError("no qrels for this split", where=str(qrels), key="split", found=repr(split),
                                expected=f"one of {', '.join(splits)}" if splits else "qrels/<split>.tsv in the BEIR folder",
                                hint="Choose the split with --split, or give the file with --qrels")
    elif qrels is None:
        raise ConfigError("relevance judgements are needed", key="qrels", found=f"a queries file ({queries_path}) and no qrels",
                          expected="--qrels FILE.tsv (query-id, corpus-id, score)",
                          hint="Or give a BEIR folder, which holds both, to --queries")
    texts = read_queries(queries_path)
    return EvalSet(texts, read_qrels(qrels, known_queries=texts, queries_path=queries_path), queries_path, Path(qrels))


def read_queries(path: str | Path) -> dict[str, str]:
    """Query text by id from a JSON Lines file with `_id` and `text` on each line (BEIR's queries.jsonl)."""
    from tailorlm.data.loaders import read_records

    queries: dict[str, str] = {}
    for record in read_records(path):
        for key in ("_id", "text"):
            if key not in record.fields:
                raise DataError("a query lacks a field", where=str(record.origin), key=key,
                                found="fields " + ", ".join(record.fields), expected='{"_id": "q1", "text": "the question"}')
        qid, text = str(record.fields["_id"]), record.fields["text"]
        if not isinstance(text, str) or not text.strip():
            raise DataError("a query has no text", where=str(record.origin), key="text", found=repr(text),
                            expected="the question as text")
        if qid in queries:
            raise DataError("a query id appears twice", where=str(record.origin), key="_id", found=repr(qid),
                            expected="each query id once")
        queries[qid] = text
    if not queries:
        raise DataError("no queries", where=str(path), found="no lines", expected="one JSON object per line with _id and text")
    return queries


def read_qrels(path: str | Path, *, known_queries: Mapping[str, str] | None = None,
               queries_path: str | Path | None = None) -> dict[str, dict[str, int]]:
    """Relevance judgements from a BEIR qrels TSV: query-id, corpus-id, integer score, after a header line.

    With `known_queries`, a row naming a query that is not among them is a DataError naming the row.
    """
    from tailorlm.data.loaders import read_records

    qrels: dict[str, dict[str, int]] = {}
    for record in read_records(path, csv_delimiter="\t", csv_columns=QRELS_COLUMNS):
        qid, doc_id, score = (record.fields[name].strip() for name in QRELS_COLUMNS)
        try:
            grade = int(score)
        except ValueError:
            raise DataError("a relevance score is not an integer", where=str(record.origin), key="score",
                            found=repr(score), expected="an integer such as 1 (0 or below: not relevant)") from None
        if not qid or not doc_id:
            raise DataError("a qrels row lacks an id", where=str(record.origin), key="query-id" if not qid else "corpus-id",
                            found="an empty cell", expected="query-id<TAB>corpus-id<TAB>score")
        if known_queries is not None and qid not in known_queries:
            raise DataError("a judged query is not in the queries file", where=str(record.origin), key="query-id",
                            found=repr(qid), expected=f"a query id of {queries_path or 'the queries'}")
        qrels.setdefault(qid, {})[doc_id] = grade
    if not any(grade > 0 for judged in qrels.values() for grade in judged.values()):
        raise DataError("no relevant document in the qrels", where=str(path),
                        found=f"{sum(map(len, qrels.values()))} judgements, none with a score above 0",
                        expected="query-id<TAB>corpus-id<TAB>score rows, at least one with score 1 or more")
    return qrels


def _unindexed_note(index: "Index", judged: Mapping[str, Mapping[str, int]]) -> list[str]:
    """A note when relevant documents are not in the index; DataError when none of them is (another corpus)."""
    indexed = {doc_id for entry in index.manifest.get("files", {}).values() for doc_id in entry.get("docs", {})}
    relevant = {doc_id for q in judged.values() for doc_id, grade in q.items() if grade > 0}
    absent = sorted(relevant - indexed)
    if not absent:
        return []
    if len(absent) == len(relevant):
        raise DataError("none of the judged documents is in the index", where=str(index.folder),
                        found=f"{len(relevant)} relevant ids such as {absent[0]!r}; the index holds ids such as "
                        f"{next(iter(sorted(indexed)), 'none')!r}",
                        expected="an index of the corpus the qrels judge", hint="Index the BEIR folder itself, "
                        "or its corpus.jsonl, so that document ids are the corpus _id values")
    return [f"{len(absent)} of {len(relevant)} relevant documents are not in the index (such as {absent[0]!r}); "
            "queries judged on them cannot score fully"]


def _listing(folder: Path, limit: int = 5) -> str:
    """A few names in the folder."""
    names = sorted(entry.name for entry in folder.iterdir())
    return (", ".join(names[:limit]) + (" ..." if len(names) > limit else "")) if names else "an empty folder"


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
    from rich.console import Console
    from rich.progress import track

    # On stderr, so that stdout holds only the results (a table, JSON) when it is piped.
    return track(items, description=description, transient=True, console=Console(stderr=True))
