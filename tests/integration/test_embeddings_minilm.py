"""The built-in minilm-l6 pack as the embedding model: vectors, its tokenizer for chunking, and a real corpus."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tailorlm.retrieval.chunking import chunk_documents, default_chunk_tokens, plain_tokenizer
from tailorlm.retrieval.documents import read_documents
from tailorlm.retrieval.embeddings import Embedder

pytestmark = pytest.mark.integration
MEDQUAD = Path(__file__).resolve().parents[3] / "shared" / "data" / "retrieval" / "medquad_beir" / "corpus.jsonl"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder("minilm-l6", device="cpu")


def test_minilm_facts(embedder: Embedder) -> None:
    assert (embedder.model_ref, embedder.dimension, embedder.max_tokens) == ("minilm-l6", 384, 256)
    assert default_chunk_tokens(embedder) == 254  # 256 minus [CLS] and [SEP]


def test_vectors_are_unit_length_float32_in_input_order(embedder: Embedder) -> None:
    texts = ["A much longer sentence about the treatment of high blood pressure in older adults.", "Short.", "Flu"]
    vectors = embedder.embed(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    one_by_one = np.stack([embedder.embed([text])[0] for text in texts])
    # Batching sorts by length and pads; the order comes back (bfloat16 padding moves the vectors a hair).
    assert np.min(np.sum(vectors * one_by_one, axis=1)) > 0.9995
    assert embedder.embed([]).shape == (0, 384)


def test_a_paraphrase_is_closer_than_an_unrelated_sentence(embedder: Embedder) -> None:
    query = embedder.embed_queries(["How do I lower my blood pressure?"])[0]
    paraphrase, unrelated = embedder.embed(["Ways to reduce high blood pressure.", "The stock market closed higher today."])
    assert query @ paraphrase > 0.6 > 0.2 > query @ unrelated


def test_medquad_chunks_fit_the_model_and_embed(embedder: Embedder) -> None:
    if not MEDQUAD.is_file():
        pytest.skip(f"{MEDQUAD} is not here")
    documents = read_documents(MEDQUAD).documents
    assert len(documents) == 3097
    start = time.perf_counter()
    chunks = chunk_documents(documents, embedder.tokenizer, chunk_tokens=default_chunk_tokens(embedder), overlap=32)
    seconds = time.perf_counter() - start
    assert len(chunks) > len(documents) and seconds < 60
    tokenizer = plain_tokenizer(embedder.tokenizer)
    texts = {doc.doc_id: doc.text for doc in documents}
    counts = [len(e.ids) for e in tokenizer.encode_batch([c.text for c in chunks], add_special_tokens=False)]
    assert max(counts) <= 254
    assert all(texts[c.doc_id][c.start:c.end] == c.text for c in chunks)
    vectors = embedder.embed([c.text for c in chunks[:64]])
    assert vectors.shape == (64, 384)


def test_float32_and_the_auto_dtype_agree(embedder: Embedder) -> None:
    exact = Embedder("minilm-l6", device="cpu", dtype="float32")
    assert exact.dtype == "float32" and embedder.dtype in ("float32", "bfloat16")
    texts = ["Acanthamoeba can infect the eye.", "Shingles causes a painful rash on one side of the body."]
    assert np.min(np.sum(exact.embed(texts) * embedder.embed(texts), axis=1)) > 0.999
