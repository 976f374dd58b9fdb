"""Retrieval metrics against numbers worked out by hand from the formulas (BEIR / trec_eval definitions)."""

from __future__ import annotations

import math

import pytest

from tailorlm.errors import DataError
from tailorlm.retrieval.evaluation import documents_of_hits, query_metrics, retrieval_metrics
from tailorlm.retrieval.store import Hit

from _retrieval_fakes import make_chunk


def test_one_relevant_document_at_rank_three() -> None:
    m = query_metrics(["x", "y", "rel", "z"], {"rel": 1})
    assert m["recall@1"] == 0.0
    assert m["recall@5"] == 1.0
    assert m["recall@10"] == 1.0
    assert m["mrr@10"] == pytest.approx(1 / 3)
    # DCG = 1 / log2(3 + 1) = 0.5; the ideal puts it at rank 1: IDCG = 1 / log2(2) = 1.
    assert m["ndcg@10"] == pytest.approx(0.5)


def test_graded_relevance_uses_linear_gains() -> None:
    # Grades a=3, b=2, c=0 (judged, not relevant), d=1 (never retrieved).
    judged = {"a": 3, "b": 2, "c": 0, "d": 1}
    m = query_metrics(["b", "c", "a", "e"], judged)
    dcg = 2 / math.log2(2) + 0 / math.log2(3) + 3 / math.log2(4)  # 2 + 0 + 1.5 = 3.5
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)  # 3 + 1.26186 + 0.5
    assert dcg == pytest.approx(3.5)
    assert m["ndcg@10"] == pytest.approx(3.5 / 4.7618595, rel=1e-6)
    assert m["ndcg@10"] == pytest.approx(dcg / idcg)
    # Three relevant (a, b, d): b at 1, a at 3.
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@5"] == pytest.approx(2 / 3)
    assert m["mrr@10"] == 1.0


def test_cut_offs_ignore_hits_below_rank_ten() -> None:
    ranked = [f"n{i}" for i in range(10)] + ["rel"]
    m = query_metrics(ranked, {"rel": 1})
    assert m == {"recall@1": 0.0, "recall@5": 0.0, "recall@10": 0.0, "mrr@10": 0.0, "ndcg@10": 0.0}


def test_repeated_documents_count_once() -> None:
    # "x" twice must not push "rel" down: deduplicated ranking is x, rel.
    m = query_metrics(["x", "x", "rel"], {"rel": 1})
    assert m["mrr@10"] == 0.5
    assert m["ndcg@10"] == pytest.approx(1 / math.log2(3))


def test_mean_over_judged_queries_counts_missing_runs_as_zero() -> None:
    ranked = {"q1": ["a", "b"], "q2": ["c", "d"]}
    qrels = {"q1": {"a": 1}, "q2": {"d": 1}, "q3": {"e": 1}, "q4": {"f": 0}}
    m = retrieval_metrics(ranked, qrels, ks=(1,))
    # q4 has nothing relevant and is left out; q3 was not retrieved at all and scores 0.
    assert m["recall@1"] == pytest.approx((1 + 0 + 0) / 3)
    assert m["mrr@10"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 0) / 3)


def test_two_relevant_documents_recall_is_a_fraction() -> None:
    m = query_metrics(["a", "x", "y", "z", "w", "b"], {"a": 1, "b": 1})
    assert m["recall@5"] == 0.5
    assert m["recall@10"] == 1.0
    # DCG = 1/log2(2) + 1/log2(7); IDCG = 1 + 1/log2(3).
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(7)) / (1 + 1 / math.log2(3)))


def test_no_relevant_document_at_all_is_an_error() -> None:
    with pytest.raises(DataError, match="no query has a relevant document"):
        retrieval_metrics({"q": ["a"]}, {"q": {"a": 0}})


def test_a_document_ranks_at_its_best_chunk() -> None:
    hits = [Hit(c, 1.0, make_chunk(c, d)) for c, d in
            [("d2#0", "d2"), ("d1#0", "d1"), ("d2#1", "d2"), ("d3#0", "d3"), ("d1#1", "d1")]]
    assert documents_of_hits(hits) == ["d2", "d1", "d3"]
    assert documents_of_hits(hits, depth=2) == ["d2", "d1"]


def test_evaluate_index_scores_documents_and_writes_per_query_rows(tmp_path) -> None:
    import json

    from _retrieval_fakes import FakeEmbedder
    from tailorlm.retrieval.evaluation import evaluate_index
    from tailorlm.retrieval.index import build_index, open_index

    rows = [{"_id": "d1", "text": "Volcanoes erupt lava and ash."}, {"_id": "d2", "text": "Glaciers move slowly downhill."},
            {"_id": "d3", "text": "Deserts receive little rain."}]
    corpus = tmp_path / "beir" / "corpus.jsonl"
    corpus.parent.mkdir()
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    build_index([corpus.parent], tmp_path / "index", embedder=FakeEmbedder(), chunk_tokens=16, overlap=0, progress=False)
    queries = {"q1": "lava from volcanoes", "q2": "glaciers downhill", "q3": "deserts rain"}
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}}
    with open_index(tmp_path / "index", embedder=FakeEmbedder()) as index:
        result = evaluate_index(index, queries, qrels, modes=("bm25",), keep_per_query=True)
    assert result.metrics["bm25"]["mrr@10"] == 1.0 and result.queries == 3
    assert result.ranked["bm25"]["q1"] == ["d1"]
    assert result.write_per_query(tmp_path / "per_query.jsonl") == 3
    first = json.loads((tmp_path / "per_query.jsonl").read_text().splitlines()[0])
    assert first == {"query_id": "q1", "mode": "bm25", "recall@1": 1.0, "recall@5": 1.0, "recall@10": 1.0,
                     "mrr@10": 1.0, "ndcg@10": 1.0, "ranked": ["d1"]}
    assert "| bm25 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 |" in result.table()
    with pytest.raises(DataError, match="judged queries have no text"):
        evaluate_index(index, {}, qrels, modes=("bm25",))
