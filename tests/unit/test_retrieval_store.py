"""The chunk stores (LanceDB, and Qdrant when installed): add, search, filters, delete, versions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from _retrieval_fakes import make_chunk, unit
from tailorlm.errors import DataError
from tailorlm.retrieval.store import LanceStore, VectorStore, chunk_tags, filter_tags, open_store

BACKENDS = ["lance", pytest.param("qdrant", marks=pytest.mark.skipif(
    importlib.util.find_spec("qdrant_client") is None, reason="qdrant-client is not installed (optional extra [qdrant])"))]


def writable(backend: str, folder: Path, state: dict | None = None) -> VectorStore:
    """A store ready to change, from `state` (a new one without)."""
    return open_store(backend, folder, state or {}, dimension=3, writable=True)


def sample(store: VectorStore) -> None:
    """Four chunks of three documents with distinct directions and metadata."""
    chunks = [
        make_chunk("a:0", "a", "alpha one", title="Alpha", metadata={"path": "docs/a.md", "source": "CDC", "year": 2020}),
        make_chunk("a:1", "a", "alpha two", title="Alpha", heading="Second", metadata={"path": "docs/a.md", "source": "CDC"}),
        make_chunk("b:0", "b", "beta", title="Beta", page=3, metadata={"path": "docs/b.pdf", "source": "NIH", "reviewed": True}),
        make_chunk("c:0", "c", "gamma", metadata={"path": "docs/c.txt", "tags": ["x", "y"]}),
    ]
    store.add(chunks, np.stack([unit(1, 0, 0), unit(1, 1, 0), unit(0, 1, 0), unit(0, 0, 1)]))


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> VectorStore:
    store = writable(request.param, tmp_path)
    sample(store)
    yield store
    store.close()


def test_search_ranks_by_dot_product_and_scores_the_cosine(store: VectorStore) -> None:
    hits = store.search(unit(1, 0.2, 0), k=3)
    assert [h.chunk_id for h in hits] == ["a:0", "a:1", "b:0"]
    q = unit(1, 0.2, 0)
    assert [h.score for h in hits] == pytest.approx([q @ unit(1, 0, 0), q @ unit(1, 1, 0), q @ unit(0, 1, 0)], abs=1e-5)
    assert store.count() == 4


def test_chunks_come_back_with_every_field(store: VectorStore) -> None:
    chunk = store.search(unit(0, 1, 0), k=1)[0].chunk
    assert (chunk.chunk_id, chunk.doc_id, chunk.text, chunk.title, chunk.page) == ("b:0", "b", "beta", "Beta", 3)
    assert chunk.heading is None
    assert chunk.metadata == {"path": "docs/b.pdf", "source": "NIH", "reviewed": True}
    assert (chunk.start, chunk.end) == (0, 4)
    assert sorted(c.chunk_id for c in store.all_chunks()) == ["a:0", "a:1", "b:0", "c:0"]


@pytest.mark.parametrize("filters, expected", [
    ({"source": "CDC"}, ["a:0", "a:1"]),
    ({"doc_id": "b"}, ["b:0"]),
    ({"title": "Alpha", "heading": "Second"}, ["a:1"]),
    ({"path": "docs/c.txt"}, ["c:0"]),
    ({"year": 2020}, ["a:0"]),
    ({"year": "2020"}, ["a:0"]),
    ({"reviewed": "true"}, ["b:0"]),
    ({"page": 3}, ["b:0"]),
    ({"tags": "y"}, ["c:0"]),
    ({"source": "CDC", "doc_id": "b"}, []),
    ({"source": "it's quoted"}, []),
])
def test_filters_match_metadata_and_chunk_fields_in_search_and_listing(store: VectorStore, filters: dict,
                                                                       expected: list[str]) -> None:
    hits = store.search(unit(0, 0, 1), k=10, filters=filters)
    assert sorted(h.chunk_id for h in hits) == expected
    assert sorted(c.chunk_id for c in store.all_chunks(filters)) == expected


def test_filtered_search_is_exact_among_matching_chunks(store: VectorStore) -> None:
    # The best match overall is c:0, but the filter keeps only CDC chunks: a:1 is the nearest of those.
    hits = store.search(unit(0, 1, 1), k=1, filters={"source": "CDC"})
    assert [h.chunk_id for h in hits] == ["a:1"]


def test_delete_docs_removes_every_chunk_of_the_documents(store: VectorStore) -> None:
    store.delete_docs(["a", "missing"])
    assert store.count() == 2
    assert sorted(c.chunk_id for c in store.all_chunks()) == ["b:0", "c:0"]
    assert [h.chunk_id for h in store.search(unit(1, 0, 0), k=1)] == ["b:0"]


def test_get_and_vectors_follow_the_order_asked(store: VectorStore) -> None:
    assert [c.chunk_id for c in store.get(["c:0", "a:0"])] == ["c:0", "a:0"]
    np.testing.assert_allclose(store.vectors(["b:0", "a:1"]), np.stack([unit(0, 1, 0), unit(1, 1, 0)]), atol=1e-6)
    with pytest.raises(DataError, match="missing from the store"):
        store.get(["a:0", "zz:9"])


def test_vectors_that_do_not_match_the_chunks_are_refused(store: VectorStore) -> None:
    with pytest.raises(DataError, match="vectors do not match"):
        store.add([make_chunk("d:0", "d")], np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(DataError, match="vectors do not match"):
        store.add([make_chunk("d:0", "d")], np.zeros((1, 5), dtype=np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_recorded_state_reads_the_same_data_after_later_writes(backend: str, tmp_path: Path) -> None:
    store = writable(backend, tmp_path)
    sample(store)
    store.finish()
    committed = store.state()
    store.close()
    # A later run changes the data but never records its state (it "crashed").
    later = writable(backend, tmp_path, committed)
    later.delete_docs(["a"])
    later.add([make_chunk("d:0", "d", "delta")], unit(1, 0, 0)[None])
    later.close()
    reader = open_store(backend, tmp_path, committed)
    assert sorted(c.chunk_id for c in reader.all_chunks()) == ["a:0", "a:1", "b:0", "c:0"]
    assert reader.search(unit(1, 0, 0), k=1)[0].chunk_id == "a:0"
    reader.close()
    # The next writer starts from the recorded state, not from the crashed run's data.
    again = writable(backend, tmp_path, committed)
    assert again.count() == 4
    again.close()


def test_lance_store_without_a_table_is_an_error_for_readers(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no chunk table"):
        LanceStore(tmp_path / "store")


def test_tags_of_a_chunk_and_of_filters_agree() -> None:
    chunk = make_chunk("a:0", "a", title="T", page=2, metadata={"ok": False, "n": 1.5, "nested": {"x": 1}, "none": None})
    assert chunk_tags(chunk) == sorted(["doc_id=a", "title=T", "page=2", "ok=false", "n=1.5"])
    assert filter_tags({"ok": False, "page": 2}) == ["ok=false", "page=2"]


def test_a_large_table_gets_an_ann_index_and_still_finds_the_nearest(tmp_path: Path, monkeypatch) -> None:
    import tailorlm.retrieval.store as store_module

    monkeypatch.setattr(store_module, "ANN_THRESHOLD", 500)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((600, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = LanceStore(tmp_path / "store", dimension=16, writable=True)
    store.add([make_chunk(f"c{i}", f"d{i % 7}", metadata={"g": i % 3}) for i in range(600)], vectors)
    store.finish()
    reader = LanceStore(tmp_path / "store", version=store.state()["version"])
    assert reader._has_vector_index()
    query = vectors[5]
    exact = [f"c{i}" for i in np.argsort(-(vectors @ query))]
    assert [h.chunk_id for h in reader.search(query, 3)] == exact[:3]
    assert [h.chunk_id for h in reader.search(query, 3, {"g": 1})] == [c for c in exact if int(c[1:]) % 3 == 1][:3]
    # Rows added after the index was built are searched too, and folded into it by the next finish().
    store.add([make_chunk("new", "dn")], vectors[5:6])
    store.finish()
    reader = LanceStore(tmp_path / "store", version=store.state()["version"])
    assert {h.chunk_id for h in reader.search(query, 2)} == {"c5", "new"}
