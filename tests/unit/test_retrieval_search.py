"""Search: reciprocal-rank fusion and MMR on hand-computed cases, BM25, filters in every mode, reranking."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest

from _retrieval_fakes import FakeEmbedder, make_chunk, unit, write_docs
from tailorlm.errors import ConfigError
from tailorlm.retrieval.index import build_index, open_index
from tailorlm.retrieval.lexical import tokenize
from tailorlm.retrieval.search import NO_RERANKER, candidate_depth, mmr_order, reciprocal_rank_fusion, search
from tailorlm.retrieval.store import Hit

ROWS = [
    {"_id": "fish", "text": "Goldfish swim in a bowl and breathe through gills.", "source": "A", "kind": "animal"},
    {"_id": "shark", "text": "Sharks are fish that swim fast; sharks have gills.", "source": "B", "kind": "animal"},
    {"_id": "boat", "text": "A boat floats on the water of the lake.", "source": "A", "kind": "thing"},
    {"_id": "lake", "text": "The lake water is cold in winter.", "source": "B", "kind": "place"},
    {"_id": "cake", "text": "Bake the cake for forty minutes.", "source": "A", "kind": "food"},
]


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("search")
    corpus = folder / "docs" / "corpus.jsonl"
    corpus.parent.mkdir()
    corpus.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    build_index([corpus], folder / "index", embedder=FakeEmbedder(dimension=1024), chunk_tokens=32, overlap=0,
                progress=False, embed_model="unused")
    with open_index(folder / "index", embedder=FakeEmbedder(dimension=1024)) as opened:
        yield opened


def hits(*ids: str) -> list[Hit]:
    """Hits in this order, scores falling."""
    return [Hit(cid, 1.0 / (i + 1), make_chunk(cid, cid)) for i, cid in enumerate(ids)]


def test_reciprocal_rank_fusion_sums_one_over_sixty_plus_rank() -> None:
    fused = reciprocal_rank_fusion([hits("A", "B", "C"), hits("C", "A", "D")])
    # A: 1/61 + 1/62 = 0.032522; C: 1/63 + 1/61 = 0.032266; B: 1/62 = 0.016129; D: 1/63 = 0.015873.
    assert [h.chunk_id for h in fused] == ["A", "C", "B", "D"]
    assert [h.score for h in fused] == pytest.approx([1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62, 1 / 63])
    assert fused[0].score == pytest.approx(0.0325224, abs=1e-7)


def test_fusion_ties_keep_first_appearance_and_k_changes_the_weights() -> None:
    # B is first in one list, C first in the other: equal sums, B appeared first.
    assert [h.chunk_id for h in reciprocal_rank_fusion([hits("B", "C"), hits("C", "B")])] == ["B", "C"]
    fused = reciprocal_rank_fusion([hits("X", "Y"), hits("Y")], k=1)
    assert [(h.chunk_id, h.score) for h in fused] == [("Y", pytest.approx(1 / 3 + 1 / 2)), ("X", pytest.approx(1 / 2))]


def test_candidate_depth_is_max_of_fifty_and_four_k() -> None:
    assert (candidate_depth(5), candidate_depth(12), candidate_depth(13)) == (50, 50, 52)


def test_mmr_picks_a_diverse_second_result_on_hand_computed_scores() -> None:
    # d1 and d2 point almost the same way; d3 is less relevant but different.
    vectors = np.stack([unit(1, 0), unit(0.98, 0.2), unit(0.6, 0.8)])
    relevance = np.array([0.9, 0.85, 0.6])
    # lambda 0.5, second pick: d2 -> 0.5*0.85 - 0.5*cos(d1,d2) = 0.425 - 0.5*0.97987 = -0.0649
    #                          d3 -> 0.5*0.60 - 0.5*cos(d1,d3) = 0.300 - 0.5*0.6     =  0.0
    assert float(vectors[0] @ vectors[1]) == pytest.approx(0.98 / math.hypot(0.98, 0.2), abs=1e-6)
    assert mmr_order(relevance, vectors, 0.5, k=3) == [0, 2, 1]
    assert mmr_order(relevance, vectors, 1.0, k=3) == [0, 1, 2]
    assert mmr_order(relevance, vectors, 0.5, k=1) == [0]


def test_mmr_through_search_prefers_a_different_document(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs", {"1.txt": "apple banana", "2.txt": "apple banana banana", "3.txt": "apple cherry"})
    embedder = FakeEmbedder(dimension=4096)
    assert len({zlib.crc32(w.encode()) % 4096 for w in ("apple", "banana", "cherry")}) == 3
    build_index([docs], tmp_path / "index", embedder=embedder, chunk_tokens=16, overlap=0, progress=False)
    index = open_index(tmp_path / "index", embedder=embedder)
    # Cosines with the query (apple + banana): 1.txt 1, 2.txt 3/sqrt(10) = 0.949, 3.txt 0.5.
    plain = search(index, "apple banana", k=3, mode="dense")
    assert [Path(h.chunk.doc_id).name for h in plain] == ["1.txt", "2.txt", "3.txt"]
    assert [h.score for h in plain] == pytest.approx([1.0, 3 / math.sqrt(10), 0.5], abs=1e-5)
    # lambda 0.3, second pick: 2.txt 0.3*0.949 - 0.7*0.949 = -0.379; 3.txt 0.3*0.5 - 0.7*0.5 = -0.2.
    diverse = search(index, "apple banana", k=2, mode="dense", mmr=0.3)
    assert [Path(h.chunk.doc_id).name for h in diverse] == ["1.txt", "3.txt"]
    index.close()


def test_bm25_matches_words_without_stopwords(index) -> None:
    assert tokenize("The lake IS cold, isn't it?") == ["lake", "cold", "isn", "t"]
    found = search(index, "gills of the goldfish", k=5, mode="bm25")
    assert [h.chunk.doc_id for h in found] == ["fish", "shark"]
    assert found[0].score > found[1].score > 0
    assert search(index, "the of and", k=5, mode="bm25") == []


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_filters_apply_in_every_mode(index, mode: str) -> None:
    found = search(index, "fish swim gills water lake", k=5, mode=mode, filters={"source": "B"})
    assert found and all(h.chunk.metadata["source"] == "B" for h in found)
    assert {h.chunk.doc_id for h in found} <= {"shark", "lake"}
    assert search(index, "gills", k=5, mode=mode, filters={"source": "A", "kind": "food", "doc_id": "fish"}) == []
    only = search(index, "water", k=5, mode=mode, filters={"doc_id": "boat"})
    assert [h.chunk.doc_id for h in only] == ["boat"]


def test_hybrid_fuses_dense_and_bm25_rankings(index) -> None:
    query = "sharks swim"
    dense = search(index, query, k=50, mode="dense")
    bm25 = search(index, query, k=50, mode="bm25")
    fused = search(index, query, k=3, mode="hybrid")
    expected = reciprocal_rank_fusion([dense, bm25])[:3]
    assert [h.chunk_id for h in fused] == [h.chunk_id for h in expected]
    assert [h.score for h in fused] == pytest.approx([h.score for h in expected])
    assert fused[0].chunk.doc_id == "shark"


def test_a_given_query_vector_is_used_instead_of_embedding(index) -> None:
    vector = FakeEmbedder(dimension=1024).embed_queries(["cake"])[0]
    assert search(index, "ignored words", k=1, mode="dense", query_vector=vector)[0].chunk.doc_id == "cake"


def test_rerank_without_a_model_returns_the_hits_with_a_note(index) -> None:
    plain = search(index, "lake water", k=3)
    reranked = search(index, "lake water", k=3, rerank=True)
    assert [h.chunk_id for h in reranked] == [h.chunk_id for h in plain]
    assert reranked.notes == [NO_RERANKER] and plain.notes == []


class WordCountReranker:
    """Scores a pair by how often the word 'cold' occurs in the passage."""

    def predict(self, pairs, **kwargs):
        return [passage.lower().count("cold") for _, passage in pairs]


def test_rerank_orders_candidates_by_the_reranker(index) -> None:
    found = search(index, "water", k=2, mode="bm25", rerank=True, reranker=WordCountReranker())
    assert [h.chunk.doc_id for h in found] == ["lake", "boat"]
    assert [h.score for h in found] == [1.0, 0.0]


def tiny_cross_encoder(folder: Path) -> Path:
    """A random one-layer BERT sequence classifier with a word-piece tokenizer: a cross-encoder in miniature."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = sorted({w for row in ROWS for w in tokenize(row["text"])} | {"water", "lake"})
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(vocab_size=5 + len(words), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=64, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def test_a_cross_encoder_folder_reranks(index, tmp_path: Path) -> None:
    from sentence_transformers import CrossEncoder

    folder = tiny_cross_encoder(tmp_path / "reranker")
    candidates = search(index, "lake water", k=5, mode="hybrid")
    found = search(index, "lake water", k=5, mode="hybrid", rerank=True, reranker=str(folder))
    scores = CrossEncoder(str(folder), device="cpu").predict([("lake water", h.chunk.text) for h in candidates])
    expected = sorted(zip(candidates, scores), key=lambda pair: -pair[1])
    assert [h.chunk_id for h in found] == [h.chunk_id for h, _ in expected]
    assert [h.score for h in found] == pytest.approx([float(s) for _, s in expected], abs=1e-5)


@pytest.mark.parametrize("kwargs, key", [({"mode": "sparse"}, "mode"), ({"k": 0}, "k"), ({"mmr": 1.5}, "mmr")])
def test_bad_settings_are_config_errors(index, kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        search(index, "water", **kwargs)
