"""Index folders: incremental re-indexing, model checks, folders that are not indexes, and crash safety."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from _retrieval_fakes import FakeEmbedder, write_docs
from tailorlm.errors import ConfigError, DataError
from tailorlm.retrieval.index import MANIFEST, build_index, open_index
from tailorlm.retrieval.search import search

BACKENDS = ["lance", pytest.param("qdrant", marks=pytest.mark.skipif(
    importlib.util.find_spec("qdrant_client") is None, reason="qdrant-client is not installed (optional extra [qdrant])"))]
DOCS = {
    "cats.md": "# Cats\n\nCats purr when they are content. A cat sleeps most of the day.",
    "dogs.txt": "Dogs bark at strangers. A dog needs a walk every day.",
    "notes/fish.txt": "Goldfish swim in a bowl. Fish breathe through gills.",
    "notes/birds.txt": "Parrots can imitate speech. Birds build nests in spring.",
}


def build(docs: Path, index: Path, embedder: FakeEmbedder | None = None, **kwargs):
    """Index with the fake embedder, small chunks and no progress bar."""
    kwargs = {"chunk_tokens": 8, "overlap": 2, "progress": False, **kwargs}
    return build_index([docs], index, embedder=embedder or FakeEmbedder(), **kwargs)


def snapshot(index_dir: Path) -> dict[str, tuple[str, np.ndarray]]:
    """chunk id -> (text, vector) of every chunk in the index."""
    index = open_index(index_dir, embedder=FakeEmbedder())
    chunks = list(index.store.all_chunks())
    vectors = index.store.vectors([c.chunk_id for c in chunks])
    index.store.close()
    return {c.chunk_id: (c.text, v) for c, v in zip(chunks, vectors)}


def answers(index_dir: Path, queries=("cats purr", "dog walk", "fish gills", "parrots nests")) -> list[list[str]]:
    """Hit ids of a few queries in every mode."""
    index = open_index(index_dir, embedder=FakeEmbedder())
    result = [[h.chunk_id for h in search(index, q, k=3, mode=mode)] for q in queries for mode in ("dense", "bm25", "hybrid")]
    index.store.close()
    return result


@pytest.mark.parametrize("backend", BACKENDS)
def test_changing_one_file_re_embeds_only_its_chunks(tmp_path: Path, backend: str) -> None:
    docs = write_docs(tmp_path / "docs", DOCS)
    first = build(docs, tmp_path / "index", backend=backend)
    assert (first.added, first.updated, first.removed, first.unchanged) == (4, 0, 0, 0)
    before = snapshot(tmp_path / "index")

    (docs / "dogs.txt").write_text("Dogs bark at strangers. Puppies chew shoes and need training.", encoding="utf-8")
    embedder = FakeEmbedder()
    report = build(docs, tmp_path / "index", embedder, backend=backend)
    after = snapshot(tmp_path / "index")

    assert (report.added, report.updated, report.removed, report.unchanged) == (0, 1, 0, 3)
    dogs = str(docs / "dogs.txt")
    assert report.embedded == len(embedder.embedded) == sum(cid.startswith(dogs) for cid in after)
    assert {after[cid][0] for cid in after if cid.startswith(dogs)} == set(embedder.embedded)
    others_before = {cid: v for cid, v in before.items() if not cid.startswith(dogs)}
    others_after = {cid: v for cid, v in after.items() if not cid.startswith(dogs)}
    assert others_after.keys() == others_before.keys()
    for cid, (text, vector) in others_before.items():
        assert others_after[cid][0] == text
        np.testing.assert_array_equal(others_after[cid][1], vector)
    assert any("Puppies" in text for text, _ in after.values())
    assert not any("walk every day" in text for text, _ in after.values())
    index = open_index(tmp_path / "index", embedder=FakeEmbedder())
    assert search(index, "puppies shoes", k=1, mode="bm25")[0].chunk.doc_id == dogs


@pytest.mark.parametrize("backend", BACKENDS)
def test_deleting_and_adding_files(tmp_path: Path, backend: str) -> None:
    docs = write_docs(tmp_path / "docs", DOCS)
    build(docs, tmp_path / "index", backend=backend)
    (docs / "notes" / "fish.txt").unlink()
    write_docs(docs, {"notes/snakes.txt": "Snakes shed their skin."})
    embedder = FakeEmbedder()
    report = build(docs, tmp_path / "index", embedder, backend=backend)
    assert (report.added, report.updated, report.removed, report.unchanged) == (1, 0, 1, 3)
    assert embedder.embedded == ["Snakes shed their skin."]
    chunks = snapshot(tmp_path / "index")
    assert not any("fish.txt" in cid for cid in chunks)
    index = open_index(tmp_path / "index", embedder=FakeEmbedder())
    assert search(index, "goldfish gills", k=5, mode="bm25") == []
    assert index.manifest["counts"] == {"files": 4, "documents": 4, "chunks": len(chunks)}
    assert str((docs / "notes" / "fish.txt").resolve()) not in index.manifest["files"]


def test_unchanged_folder_embeds_nothing_and_keeps_the_manifest(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs", DOCS)
    build(docs, tmp_path / "index")
    manifest = (tmp_path / "index" / MANIFEST).read_text()
    embedder = FakeEmbedder()
    report = build(docs, tmp_path / "index", embedder)
    assert (report.unchanged, report.embedded, embedder.embedded) == (4, 0, [])
    assert (tmp_path / "index" / MANIFEST).read_text() == manifest


def test_one_changed_row_of_a_jsonl_file_re_embeds_only_that_row(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "text": f"Row {i} talks about topic {i}.", "source": "S"} for i in range(5)]
    corpus = tmp_path / "docs" / "rows.jsonl"
    corpus.parent.mkdir()
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    build(corpus.parent, tmp_path / "index")
    rows[2]["text"] = "Row 2 now talks about something else."
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    embedder = FakeEmbedder()
    report = build(corpus.parent, tmp_path / "index", embedder)
    assert (report.updated, report.embedded) == (1, 1)
    assert embedder.embedded == ["Row 2 now talks about something else."]
    assert len(snapshot(tmp_path / "index")) == 5


def test_new_chunk_settings_re_chunk_everything(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs", DOCS)
    build(docs, tmp_path / "index")
    report = build(docs, tmp_path / "index", chunk_tokens=64, overlap=0)
    assert report.updated == 4
    assert len(snapshot(tmp_path / "index")) == 4  # each short file is now one chunk


def test_files_indexed_from_another_folder_are_kept(tmp_path: Path) -> None:
    first = write_docs(tmp_path / "first", {"a.txt": "Apples are red."})
    second = write_docs(tmp_path / "second", {"b.txt": "Bananas are yellow."})
    build(first, tmp_path / "index")
    report = build(second, tmp_path / "index")
    assert (report.added, report.removed) == (1, 0)
    assert {c.split(":")[0] for c in snapshot(tmp_path / "index")} == {str(first / "a.txt"), str(second / "b.txt")}


def test_another_embedding_model_is_refused_naming_both(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs", DOCS)
    build(docs, tmp_path / "index", FakeEmbedder("fake-a"))
    with pytest.raises(ConfigError, match="another embedding model") as err:
        build(docs, tmp_path / "index", FakeEmbedder("fake-b"))
    assert "'fake-a'" in str(err.value) and "'fake-b'" in str(err.value)
    with pytest.raises(ConfigError, match="'fake-a'.*minilm-l6|minilm-l6.*'fake-a'"):
        build_index([docs], tmp_path / "index", embed_model="minilm-l6", progress=False)
    with pytest.raises(ConfigError, match="another embedding model"):
        open_index(tmp_path / "index", embedder=FakeEmbedder("fake-b"))
    with pytest.raises(ConfigError, match="embedding width"):
        open_index(tmp_path / "index", embedder=FakeEmbedder("fake-a", dimension=32))


def test_folders_that_are_not_indexes(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs", DOCS)
    with pytest.raises(DataError, match="not an index") as err:
        build(docs, docs)
    assert "cats.md" in str(err.value)
    with pytest.raises(DataError, match="no index here"):
        open_index(docs)
    with pytest.raises(DataError, match="no index here.*no such folder"):
        open_index(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MANIFEST).write_text("{not json")
    with pytest.raises(DataError, match="damaged"):
        open_index(tmp_path / "bad")


def test_an_empty_folder_becomes_an_index(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs", DOCS)
    (tmp_path / "index").mkdir()
    assert build(docs, tmp_path / "index").added == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_crash_mid_run_leaves_the_previous_index_answering(tmp_path: Path, backend: str) -> None:
    docs = write_docs(tmp_path / "docs", DOCS)
    build(docs, tmp_path / "index", backend=backend)
    manifest = (tmp_path / "index" / MANIFEST).read_text()
    expected = answers(tmp_path / "index")
    chunks = snapshot(tmp_path / "index")

    (docs / "cats.md").write_text("# Cats\n\nLions roar loudly in the savanna at night.", encoding="utf-8")
    (docs / "dogs.txt").unlink()
    write_docs(docs, {f"more/{i}.txt": f"Extra document number {i} about volcanoes and lava." for i in range(6)})
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(docs, tmp_path / "index", FakeEmbedder(fail_after=4), backend=backend)

    assert (tmp_path / "index" / MANIFEST).read_text() == manifest
    assert answers(tmp_path / "index") == expected
    assert snapshot(tmp_path / "index").keys() == chunks.keys()
    report = build(docs, tmp_path / "index", backend=backend)
    assert (report.added, report.updated, report.removed, report.unchanged) == (6, 1, 1, 2)
    index = open_index(tmp_path / "index", embedder=FakeEmbedder())
    assert index.store.count() == len(snapshot(tmp_path / "index"))
    assert search(index, "lions roar", k=1, mode="bm25")[0].chunk.doc_id == str(docs / "cats.md")
    assert search(index, "strangers", k=1, mode="bm25") == []


def test_a_crash_in_the_first_run_leaves_a_folder_the_next_run_can_use(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs", {f"{i}.txt": f"Document {i} text here." for i in range(8)})
    with pytest.raises(RuntimeError):
        build(docs, tmp_path / "index", FakeEmbedder(fail_after=3))
    with pytest.raises(DataError, match="no index here"):
        open_index(tmp_path / "index")
    assert build(docs, tmp_path / "index").added == 8


def test_an_unreadable_file_named_explicitly_is_an_error_and_changes_nothing(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs", DOCS)
    build(docs, tmp_path / "index")
    manifest = (tmp_path / "index" / MANIFEST).read_text()
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match="bad.txt"):
        build_index([docs, bad], tmp_path / "index", embedder=FakeEmbedder(), chunk_tokens=8, overlap=2, progress=False)
    assert (tmp_path / "index" / MANIFEST).read_text() == manifest


def test_an_unreadable_file_in_a_folder_is_skipped_and_its_old_chunks_go(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs", DOCS)
    build(docs, tmp_path / "index")
    (docs / "dogs.txt").write_bytes(b"")
    report = build(docs, tmp_path / "index")
    assert report.skipped == 1 and any("dogs.txt: empty document" in w for w in report.warnings)
    assert not any("dogs.txt" in cid for cid in snapshot(tmp_path / "index"))


def test_the_same_document_id_from_two_files_is_an_error(tmp_path: Path) -> None:
    for name in ("one", "two"):
        write_docs(tmp_path / "docs" / name, {"corpus.jsonl": json.dumps({"_id": "d1", "text": f"text {name}"}) + "\n"})
    with pytest.raises(DataError, match="same document id"):
        build(tmp_path / "docs", tmp_path / "index")


def test_a_folder_without_documents_is_an_error(tmp_path: Path) -> None:
    write_docs(tmp_path / "docs", {"image.png": "not a document"})
    with pytest.raises(DataError, match="no documents to index"):
        build(tmp_path / "docs", tmp_path / "index")


def test_a_second_writer_is_refused_while_one_holds_the_lock(tmp_path: Path) -> None:
    fcntl = pytest.importorskip("fcntl")
    from tailorlm.retrieval.index import LOCK

    docs = write_docs(tmp_path / "docs", DOCS)
    build(docs, tmp_path / "index")
    with (tmp_path / "index" / LOCK).open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DataError, match="another indexing run"):
            build(docs, tmp_path / "index")
    assert build(docs, tmp_path / "index").unchanged == 4
