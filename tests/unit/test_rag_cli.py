"""`tailor rag` index, query and eval through the CLI, with a bag-of-words embedder in place of the real model."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from _retrieval_fakes import FakeEmbedder, write_docs
from tailorlm.cli import main

DOCS = {
    "cats.md": "# Cats\n\nCats purr when they are content. A cat sleeps most of the day.",
    "dogs.txt": "Dogs bark at strangers. A dog needs a walk every day.",
    "notes/fish.txt": "Goldfish swim in a bowl. Fish breathe through gills.",
    "notes/birds.txt": "Parrots can imitate speech. Birds build nests in spring.",
}
# A hand-made BEIR set whose rankings are the same in every mode (checked below), so the metrics are worked out by hand.
CORPUS = {"d1": "apple banana cherry", "d2": "dog elephant fox", "d3": "guitar piano violin", "d4": "apple dog guitar"}
QUERIES = {"q1": "apple banana", "q2": "dog elephant", "q3": "guitar piano"}
QRELS = [("q1", "d1", 1), ("q2", "d4", 1), ("q3", "d3", 1), ("q3", "d4", 2)]


@pytest.fixture
def embedders(monkeypatch) -> list[FakeEmbedder]:
    """Every embedder the CLI loads is a FakeEmbedder named as asked; the list holds them in loading order."""
    made: list[FakeEmbedder] = []

    def fake(model_ref: str = "minilm-l6", **_: object) -> FakeEmbedder:
        made.append(FakeEmbedder(model_ref))
        return made[-1]

    monkeypatch.setattr("tailorlm.retrieval.embeddings.Embedder", fake)
    return made


def tailor(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `tailor ARGV...`: exit code, stdout, stderr."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def index_docs(capsys, docs: Path, index: Path, *extra: str) -> tuple[int, str, str]:
    return tailor(capsys, "rag", "index", docs, "--index", index, "--chunk-tokens", "8", "--overlap", "2", *extra)


def write_beir(folder: Path, qrels: list[tuple[str, str, int]] = QRELS) -> Path:
    folder.mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in CORPUS.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in QUERIES.items()))
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels))
    return folder


def test_index_then_query_prints_the_best_chunk_first_with_its_source(tmp_path, capsys, embedders) -> None:
    docs = write_docs(tmp_path / "docs", DOCS)
    code, out, err = index_docs(capsys, docs, tmp_path / "index")
    assert code == 0, err
    assert "files: 4 added, 0 updated, 0 removed, 0 unchanged, 0 skipped" in out
    assert re.search(r"; \d+ chunks in the index, \d+ embedded; [\d.]+ s \(\d+ chunks/s\)$", out.strip()), out

    code, out, err = tailor(capsys, "rag", "query", "why do cats purr", "--index", tmp_path / "index", "--k", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("[1] score ")
    assert str(docs / "cats.md") in lines[0] and "Cats" in lines[0]
    assert "Cats purr when they are" in lines[1]
    assert sum(line.startswith("[") for line in lines) == 2


def test_reindexing_embeds_nothing_when_unchanged_and_only_the_changed_file(tmp_path, capsys, embedders) -> None:
    docs = write_docs(tmp_path / "docs", DOCS)
    index_docs(capsys, docs, tmp_path / "index")
    code, out, _ = index_docs(capsys, docs, tmp_path / "index")
    assert code == 0
    assert "0 added, 0 updated, 0 removed, 4 unchanged" in out and ", 0 embedded; " in out

    (docs / "dogs.txt").write_text("Puppies chew shoes and need training.", encoding="utf-8")
    code, out, _ = index_docs(capsys, docs, tmp_path / "index")
    assert code == 0 and "0 added, 1 updated, 0 removed, 3 unchanged" in out
    re_embedded = embedders[-1].embedded
    assert re_embedded and all(text in "Puppies chew shoes and need training." for text in re_embedded)
    assert f", {len(re_embedded)} embedded; " in out


def test_filter_keeps_only_matching_chunks(tmp_path, capsys, embedders) -> None:
    docs = write_docs(tmp_path / "docs", DOCS)
    index_docs(capsys, docs, tmp_path / "index")
    fish = str(docs / "notes" / "fish.txt")
    code, out, err = tailor(capsys, "rag", "query", "cats purr", "--index", tmp_path / "index", "--mode", "dense",
                            "--filter", f"doc_id={fish}", "--json")
    assert code == 0, err
    hits = json.loads(out)
    assert hits and {hit["doc_id"] for hit in hits} == {fish}


def test_query_json_has_the_fields(tmp_path, capsys, embedders) -> None:
    docs = write_docs(tmp_path / "docs", DOCS)
    index_docs(capsys, docs, tmp_path / "index")
    code, out, err = tailor(capsys, "rag", "query", "cats purr", "--index", tmp_path / "index", "--k", "3", "--json",
                            "--rerank")
    assert code == 0
    hits = json.loads(out)  # only JSON on stdout: the note that no reranker ran goes to stderr
    assert "note: no reranker model available" in err
    assert [hit["rank"] for hit in hits] == [1, 2, 3]
    first = hits[0]
    assert first["doc_id"] == first["path"] == str(docs / "cats.md")
    assert first["title"] == "Cats" and first["source"] == "Cats" and first["page"] is None
    assert "Cats purr" in first["text"] and first["chunk_id"].startswith(first["doc_id"] + ":")
    assert first["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert {"source", "title", "start", "end", "metadata"} <= first.keys()


def test_rerank_without_a_model_says_so_on_stderr(tmp_path, capsys, embedders) -> None:
    docs = write_docs(tmp_path / "docs", DOCS)
    index_docs(capsys, docs, tmp_path / "index")
    code, out, err = tailor(capsys, "rag", "query", "cats purr", "--index", tmp_path / "index", "--rerank")
    assert code == 0 and out.startswith("[1] ")
    assert "note: no reranker model available" in err


def test_eval_matches_hand_computed_metrics_and_writes_per_query_rows(tmp_path, capsys, embedders) -> None:
    beir = write_beir(tmp_path / "beir")
    assert tailor(capsys, "rag", "index", beir, "--index", tmp_path / "index")[0] == 0
    per_query = tmp_path / "per_query.jsonl"
    code, out, err = tailor(capsys, "rag", "eval", "--index", tmp_path / "index", "--queries", beir,
                            "--per-query", per_query)
    assert code == 0, err

    rows = [json.loads(line) for line in per_query.read_text().splitlines()]
    assert sorted((row["mode"], row["query_id"]) for row in rows) == sorted(
        (mode, q) for mode in ("dense", "bm25", "hybrid") for q in QUERIES)
    for row in rows:  # the rankings the hand computation assumes: the judged documents in these places
        expected = {"q1": ["d1", "d4"], "q2": ["d2", "d4"], "q3": ["d3", "d4"]}[row["query_id"]]
        assert row["ranked"][:2] == expected, row
    # q1: d1 first -> r@1 1, MRR 1, nDCG 1.  q2: relevant d4 second -> r@1 0, MRR 1/2, nDCG 1/log2(3).
    # q3: d3 (grade 1) then d4 (grade 2) -> r@1 1/2, MRR 1, nDCG (1 + 2/log2(3)) / (2 + 1/log2(3)).
    ndcg = (1 + 1 / math.log2(3) + (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))) / 3
    expected = {"recall@1": 0.5, "recall@5": 1.0, "recall@10": 1.0, "mrr@10": 2.5 / 3, "ndcg@10": ndcg}
    row = "| {} | 0.500 | 1.000 | 1.000 | 0.833 | " + f"{ndcg:.3f} |"
    assert f"{ndcg:.3f}" == "0.830"
    for mode in ("dense", "bm25", "hybrid"):
        assert row.format(mode) in out
    assert out.index("| dense") < out.index("| bm25") < out.index("| hybrid")

    code, out, _ = tailor(capsys, "rag", "eval", "--index", tmp_path / "index", "--queries", beir / "queries.jsonl",
                          "--qrels", beir / "qrels" / "test.tsv", "--modes", "bm25", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["queries"] == 3 and list(result["metrics"]) == ["bm25"]
    assert result["metrics"]["bm25"] == pytest.approx(expected)


# Bad input: exit code 2 and one paragraph that names the path or key.

def test_query_against_a_missing_index(tmp_path, capsys, embedders) -> None:
    code, out, err = tailor(capsys, "rag", "query", "cats", "--index", tmp_path / "nowhere")
    assert code == 2 and out == ""
    assert err.startswith(f"error: {tmp_path / 'nowhere'}: no index here") and "tailor rag index" in err


def test_a_folder_that_is_not_an_index(tmp_path, capsys, embedders) -> None:
    other = write_docs(tmp_path / "other", {"report.txt": "not an index"})
    code, _, err = tailor(capsys, "rag", "query", "cats", "--index", other)
    assert code == 2 and f"{other}: no index here" in err and "report.txt" in err
    code, _, err = index_docs(capsys, write_docs(tmp_path / "docs", DOCS), other)
    assert code == 2 and f"{other}: the folder exists and is not an index" in err
    assert (other / "report.txt").read_text() == "not an index"


def test_a_qrels_row_that_is_not_three_fields(tmp_path, capsys, embedders) -> None:
    beir = write_beir(tmp_path / "beir")
    tailor(capsys, "rag", "index", beir, "--index", tmp_path / "index")
    qrels = beir / "qrels" / "test.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2 d4 1\n")
    code, _, err = tailor(capsys, "rag", "eval", "--index", tmp_path / "index", "--queries", beir)
    assert code == 2 and f"{qrels}, line 3: wrong number of fields" in err

    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq9\td4\t1\n")
    code, _, err = tailor(capsys, "rag", "eval", "--index", tmp_path / "index", "--queries", beir)
    assert code == 2 and f"{qrels}, row 3: a judged query is not in the queries file (key 'query-id'): found 'q9'" in err

    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\tyes\n")
    code, _, err = tailor(capsys, "rag", "eval", "--index", tmp_path / "index", "--queries", beir)
    assert code == 2 and f"{qrels}, row 2: a relevance score is not an integer (key 'score')" in err

    code, _, err = tailor(capsys, "rag", "eval", "--index", tmp_path / "index", "--queries", beir, "--split", "dev")
    assert code == 2 and "no qrels for this split (key 'split'): found 'dev'; expected one of test" in err

    code, _, err = tailor(capsys, "rag", "eval", "--index", tmp_path / "index", "--queries", beir / "queries.jsonl")
    assert code == 2 and "(key 'qrels')" in err


def test_filter_without_equals_names_the_flag(tmp_path, capsys, embedders) -> None:
    docs = write_docs(tmp_path / "docs", DOCS)
    index_docs(capsys, docs, tmp_path / "index")
    code, out, err = tailor(capsys, "rag", "query", "cats", "--index", tmp_path / "index", "--filter", "sourceCDC")
    assert code == 2 and out == ""
    assert err == "error: bad --filter (key 'filter'): found 'sourceCDC'; expected key=value, e.g. --filter source=CDC.\n"


def test_unknown_file_types_are_skipped_counted_and_warned(tmp_path, capsys, embedders) -> None:
    docs = write_docs(tmp_path / "docs", DOCS)
    (docs / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (docs / "data.xyz").write_text("what is this")
    code, out, err = index_docs(capsys, docs, tmp_path / "index")
    assert code == 0
    assert "files: 4 added, 0 updated, 0 removed, 0 unchanged, 2 skipped" in out
    warnings = [line for line in err.splitlines() if line.startswith("warning: skipped")]
    assert len(warnings) == 2
    assert any(str(docs / "photo.png") in line and "unknown file type" in line for line in warnings)


def test_an_index_built_with_another_embedding_model(tmp_path, capsys, embedders) -> None:
    docs = write_docs(tmp_path / "docs", DOCS)
    index_docs(capsys, docs, tmp_path / "index")
    code, _, err = index_docs(capsys, docs, tmp_path / "index", "--embed-model", "other")
    assert code == 2
    assert f"{tmp_path / 'index'}: the index was built with another embedding model (key 'embed_model')" in err
    assert "--embed-model minilm-l6" in err


def test_ask_help_works_without_loading_a_model(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["rag", "ask", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--index", "--k", "--mode", "--filter", "--rerank", "--reranker", "--min-score",
                 "--max-new-tokens", "--json"):
        assert flag in out


def test_eval_notes_judged_documents_missing_from_the_index_and_refuses_unknown_modes(tmp_path, capsys, embedders) -> None:
    beir = write_beir(tmp_path / "beir", QRELS + [("q1", "d9", 1)])
    tailor(capsys, "rag", "index", beir, "--index", tmp_path / "index")
    code, out, err = tailor(capsys, "rag", "eval", "--index", tmp_path / "index", "--queries", beir, "--modes", "bm25")
    assert code == 0 and "| bm25 |" in out
    assert "note: 1 of 4 relevant documents are not in the index (such as 'd9')" in err

    code, out, err = tailor(capsys, "rag", "eval", "--index", tmp_path / "index", "--queries", beir, "--modes", "dense,sparse")
    assert code == 2 and out == "" and "unknown search mode (key 'modes'): found 'sparse'" in err


def test_ask_and_specialist_pass_only_the_flags_given(tmp_path, capsys, monkeypatch) -> None:
    import tailorlm.strategies.rag as rag

    calls = []

    class Answer:
        sources = ["a hit"]
        notes = ["the answer cites no passage"]

        def sources_text(self) -> str:
            return "Sources:\n[1] Cats"

        def to_dict(self) -> dict:
            return {"text": "They purr [1].", "found": True}

    def ask(question, *, model, index, overrides, on_text):
        calls.append((question, model, index, overrides))
        if on_text:
            on_text("They purr [1].")
        return Answer()

    monkeypatch.setattr(rag, "ask", ask)
    monkeypatch.setattr(rag, "save_rag_specialist", lambda output, **kw: calls.append(kw) or Path(output))
    code, out, err = tailor(capsys, "rag", "ask", "why purr?", "--model", "m", "--index", "idx", "--k", "3",
                            "--filter", "source=CDC", "--reranker", "ce", "--min-score", "0.4")
    assert code == 0 and out == "They purr [1].\n\nSources:\n[1] Cats\n"
    assert "note: the answer cites no passage" in err
    assert calls[-1] == ("why purr?", "m", "idx", {"k": 3, "reranker": "ce", "min_score": 0.4,
                                                   "filters": {"source": "CDC"}, "rerank": True})
    code, out, _ = tailor(capsys, "rag", "ask", "why purr?", "--model", "m", "--json")
    assert code == 0 and json.loads(out) == {"text": "They purr [1].", "found": True}
    assert calls[-1] == ("why purr?", "m", None, {})
    code, out, _ = tailor(capsys, "rag", "specialist", "--model", "m", "--index", "idx", "--output", tmp_path / "s",
                          "--mode", "bm25", "--max-new-tokens", "64")
    assert code == 0 and calls[-1] == {"model": "m", "index": "idx", "overrides": {"mode": "bm25", "max_new_tokens": 64}}
    assert f'tailor rag ask "your question" --model {tmp_path / "s"}' in out
