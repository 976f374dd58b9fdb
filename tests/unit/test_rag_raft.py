"""RAFT training data: oracle and distractor choice, the oracle share, reproducibility, BEIR and QA inputs, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _retrieval_fakes import FakeEmbedder
from tailorlm.data.checks import check_data
from tailorlm.data.formats import load_examples
from tailorlm.errors import ConfigError, DataError
from tailorlm.retrieval.index import build_index, open_index
from tailorlm.retrieval.prompt import rag_messages
from tailorlm.retrieval.raft import build_training_data, document_text, question_rng

CAPITALS = {
    "france": ("France", "Paris"), "germany": ("Germany", "Berlin"), "italy": ("Italy", "Rome"),
    "spain": ("Spain", "Madrid"), "portugal": ("Portugal", "Lisbon"), "austria": ("Austria", "Vienna"),
    "poland": ("Poland", "Warsaw"), "greece": ("Greece", "Athens"),
}
NILE = ("The Nile flows north through eleven countries of Africa. It ends in a delta on the Mediterranean Sea. "
        "Farmers along the river depend on its yearly flood for water. The Aswan dam now holds that flood back. "
        "Crocodiles and hippos live in its upper reaches.")
ROWS = [{"_id": key, "title": country, "text": f"{city} is the capital of {country}. {city} has a famous old town."}
        for key, (country, city) in CAPITALS.items()] + [{"_id": "nile", "title": "Nile", "text": NILE}]


@pytest.fixture(scope="module")
def beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BEIR folder: the corpus, two answered queries, one answered by its document, one of another split."""
    folder = tmp_path_factory.mktemp("raft") / "beir"
    (folder / "qrels").mkdir(parents=True)
    write_jsonl(folder / "corpus.jsonl", ROWS)
    write_jsonl(folder / "queries.jsonl", [
        {"_id": "q1", "text": "What is the capital of France?", "answers": ["Paris", "paris"]},
        {"_id": "q2", "text": "Which city is the capital of Germany?", "answers": ["Berlin"]},
        {"_id": "q3", "text": "Tell me about the Nile river and its flood."},
        {"_id": "q4", "text": "A query judged in another split", "answers": ["x"]},
    ])
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tfrance\t1\nq2\tgermany\t1\nq3\tnile\t1\n"
                                               "q3\tspain\t0\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def index(beir: Path) -> Path:
    """The corpus indexed with the fake embedder; chunks of at most 24 words, so the Nile spans several."""
    folder = beir.parent / "index"
    build_index([beir / "corpus.jsonl"], folder, embedder=FakeEmbedder(), chunk_tokens=24, overlap=4, progress=False)
    return folder


@pytest.fixture(scope="module")
def chunks(index: Path) -> dict[str, list]:
    """doc id -> its chunks in document order."""
    with open_index(index, embedder=FakeEmbedder()) as opened:
        by_doc: dict[str, list] = {}
        for chunk in opened.store.all_chunks():
            by_doc.setdefault(chunk.doc_id, []).append(chunk)
    return {doc_id: sorted(found, key=lambda c: c.start) for doc_id, found in by_doc.items()}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def qa_file(tmp_path: Path) -> Path:
    """One question per capital, each with its document id."""
    rows = [{"id": f"c-{key}", "question": f"What is the capital city of {country}?", "answer": city, "doc_id": key}
            for key, (country, city) in CAPITALS.items()]
    return write_jsonl(tmp_path / "qa.jsonl", rows)


def build(index: Path, questions: Path, output: Path, **kwargs):
    return build_training_data(index, questions, output, embedder=FakeEmbedder(), progress=False, **kwargs)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("share", [1.0, 0.0])
def test_oracle_in_exactly_the_rows_that_should_have_it_and_distractors_from_other_documents(
        tmp_path, index, chunks, share):
    report = build(index, qa_file(tmp_path), tmp_path / "out.jsonl", distractors=2, oracle_share=share)
    rows = read_rows(tmp_path / "out.jsonl")

    assert (report.rows, report.with_oracle, report.without_oracle) == (8, 8 * (share == 1.0), 8 * (share == 0.0))
    assert report.oracle_by == {"judged": 8, "context": 0, "retrieval": 0} and report.skipped == {}
    for row in rows:
        key = row["question_id"].removeprefix("c-")
        oracle_ids = {c.chunk_id for c in chunks[key]}
        assert row["oracle"] is (share == 1.0) and row["oracle_doc"] == key
        assert (len(oracle_ids & set(row["chunk_ids"])) == 1) is (share == 1.0)
        others = [cid for cid in row["chunk_ids"] if cid not in oracle_ids]
        assert len(others) == (2 if share == 1.0 else 3) and not any(cid.startswith(f"{key}:") for cid in others)
        assert row["messages"][-1] == {"role": "assistant", "content": CAPITALS[key][1]}


def test_oracle_is_the_chunk_holding_the_answer_and_the_prompt_is_the_rag_layout(tmp_path, index, chunks):
    build(index, qa_file(tmp_path), tmp_path / "out.jsonl", distractors=3, oracle_share=1.0)
    row = read_rows(tmp_path / "out.jsonl")[0]

    with open_index(index, embedder=FakeEmbedder()) as opened:
        passages = opened.store.get(row["chunk_ids"])
    assert row["messages"][:-1] == rag_messages("What is the capital city of France?", passages)
    assert chunks["france"][0] in passages and len(passages) == 4
    assert "[1] " in row["messages"][1]["content"] and "Paris is the capital of France." in row["messages"][1]["content"]


def test_half_share_follows_each_questions_random_stream(tmp_path, index):
    report = build(index, qa_file(tmp_path), tmp_path / "out.jsonl", oracle_share=0.5, seed=7)
    rows = read_rows(tmp_path / "out.jsonl")

    expected = [question_rng(7, f"c-{key}").random() < 0.5 for key in CAPITALS]
    assert [row["oracle"] for row in rows] == expected
    assert [any(cid.startswith(row["oracle_doc"] + ":") for cid in row["chunk_ids"]) for row in rows] == expected
    assert {len(row["chunk_ids"]) for row in rows} == {4}
    assert report.with_oracle == sum(expected) and report.without_oracle == 8 - sum(expected)
    assert 0 < sum(expected) < 8  # the seed is one that shows both cases


def test_same_seed_same_bytes_other_seed_other_order(tmp_path, index):
    questions = qa_file(tmp_path)
    build(index, questions, tmp_path / "a.jsonl", seed=3)
    build(index, questions, tmp_path / "b.jsonl", seed=3)
    build(index, questions, tmp_path / "c.jsonl", seed=4, oracle_share=1.0)
    build(index, questions, tmp_path / "d.jsonl", seed=3, oracle_share=1.0)

    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    c, d = read_rows(tmp_path / "c.jsonl"), read_rows(tmp_path / "d.jsonl")
    assert [sorted(r["chunk_ids"]) for r in c] == [sorted(r["chunk_ids"]) for r in d]  # same passages
    assert [r["chunk_ids"] for r in c] != [r["chunk_ids"] for r in d]  # in another order


def test_limit_takes_the_first_questions_and_leaves_their_examples_as_they_were(tmp_path, index):
    questions = qa_file(tmp_path)
    build(index, questions, tmp_path / "all.jsonl")
    report = build(index, questions, tmp_path / "three.jsonl", limit=3)

    assert report.rows == 3
    assert read_rows(tmp_path / "three.jsonl") == read_rows(tmp_path / "all.jsonl")[:3]


@pytest.mark.parametrize("distractors", [0, 4])
def test_distractor_count_is_exact(tmp_path, index, distractors):
    build(index, qa_file(tmp_path), tmp_path / "out.jsonl", distractors=distractors, oracle_share=1.0)
    assert {len(row["chunk_ids"]) for row in read_rows(tmp_path / "out.jsonl")} == {distractors + 1}


def test_too_few_hits_are_filled_with_random_chunks_of_other_documents(tmp_path, index):
    report = build(index, qa_file(tmp_path), tmp_path / "out.jsonl", distractors=3, oracle_share=1.0, candidates=1)
    for row in read_rows(tmp_path / "out.jsonl"):
        others = [cid for cid in row["chunk_ids"] if not cid.startswith(row["oracle_doc"] + ":")]
        assert len(others) == 3 and len(set(others)) == 3
    assert report.few_distractors == 0


def test_an_index_too_small_for_the_distractors_is_counted(tmp_path, index):
    report = build(index, qa_file(tmp_path), tmp_path / "out.jsonl", distractors=40, oracle_share=1.0)
    rows = read_rows(tmp_path / "out.jsonl")
    assert report.few_distractors == 8 and "fewer distractors than asked" in report.summary()
    assert all(len(set(row["chunk_ids"])) == len(row["chunk_ids"]) for row in rows)


def test_beir_answers_from_answers_and_from_the_judged_document(tmp_path, index, beir, chunks):
    report = build(index, beir, tmp_path / "out.jsonl", distractors=2, oracle_share=1.0)
    rows = {row["question_id"]: row for row in read_rows(tmp_path / "out.jsonl")}

    assert set(rows) == {"q1", "q2", "q3"}  # q4 belongs to another split
    assert rows["q1"]["messages"][-1]["content"] == "Paris" and rows["q2"]["messages"][-1]["content"] == "Berlin"
    assert rows["q1"]["oracle_doc"] == "france" and "france:0" in rows["q1"]["chunk_ids"]
    nile = [c.chunk_id for c in chunks["nile"]]
    assert len(nile) > 1  # the whole document is the answer, and all of it is shown, in order
    assert rows["q3"]["messages"][-1]["content"] == NILE
    start = rows["q3"]["chunk_ids"].index(nile[0])
    assert rows["q3"]["chunk_ids"][start:start + len(nile)] == nile and len(rows["q3"]["chunk_ids"]) == len(nile) + 2
    assert "qrels split test" in report.summary()
    # The queries file beside qrels/ reads the same.
    build(index, beir / "queries.jsonl", tmp_path / "same.jsonl", distractors=2, oracle_share=1.0)
    assert (tmp_path / "same.jsonl").read_bytes() == (tmp_path / "out.jsonl").read_bytes()


def test_document_text_joins_overlapping_chunks(chunks):
    assert document_text(chunks["nile"]) == NILE


def test_context_and_retrieval_oracles(tmp_path, index):
    rows = [
        {"question": "Which city is the capital?", "answer": "Rome", "context": "Rome is the capital of Italy. Rome has a famous old town."},
        {"question": "What is the capital of Spain?", "answer": "Madrid"},
        {"question": "What is the capital of Mars?", "answer": "none", "context": "Olympus Mons towers over red dusty plains."},
    ]
    report = build(index, write_jsonl(tmp_path / "qa.jsonl", rows), tmp_path / "out.jsonl", oracle_share=1.0)
    out = read_rows(tmp_path / "out.jsonl")

    assert [(r["oracle_by"], r["oracle_doc"]) for r in out] == [("context", "italy"), ("retrieval", "spain")]
    assert report.oracle_by == {"judged": 0, "context": 1, "retrieval": 1}
    assert report.skipped == {"context not found in the index": 1}
    assert f"{tmp_path / 'qa.jsonl'}, row 3: skipped, context not found in the index" in report.warnings
    assert "1 top retrieved" in report.summary() and "retrieved oracles are not judged and may be wrong" in report.summary()


def test_rows_without_question_or_answer_and_unknown_documents_are_skipped_with_their_row(tmp_path, index):
    rows = [
        {"question": "What is the capital city of Greece?", "answer": "Athens", "doc_id": "greece"},
        {"question": "  ", "answer": "Nothing"},
        {"question": "What is the capital of Peru?", "answer": ""},
        {"question": "What is the capital of Chile?", "answer": "Santiago", "doc_id": "chile"},
    ]
    report = build(index, write_jsonl(tmp_path / "qa.jsonl", rows), tmp_path / "out.jsonl")

    assert report.rows == 1
    assert report.skipped == {"no question": 1, "no answer": 1, "judged document not in the index": 1}
    where = tmp_path / "qa.jsonl"
    assert report.warnings == [f"{where}, row 2: skipped, no question", f"{where}, row 3: skipped, no answer",
                               f"{where}, row 4: skipped, judged document not in the index"]
    assert "Skipped 3 questions" in report.summary()


def test_no_usable_question_is_an_error_and_writes_nothing(tmp_path, index):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Where?", "reply": "Here"}])
    with pytest.raises(DataError, match=r"qa\.jsonl: no usable questions.*no answer: 1.*row 1") as err:
        build(index, path, tmp_path / "out.jsonl")
    assert "answer/response/output/answers" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qa.jsonl"]


@pytest.mark.parametrize(("settings", "key"), [
    ({"distractors": -1}, "distractors"), ({"oracle_share": 1.5}, "oracle_share"), ({"oracle_share": -0.1}, "oracle_share"),
    ({"limit": 0}, "limit"), ({"candidates": 0}, "candidates"),
])
def test_bad_settings(tmp_path, index, settings, key):
    with pytest.raises(ConfigError) as err:
        build(index, qa_file(tmp_path), tmp_path / "out.jsonl", **settings)
    assert err.value.key == key


def test_bad_paths(tmp_path, index, beir):
    questions = qa_file(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        build(index, tmp_path / "missing.jsonl", tmp_path / "out.jsonl")
    with pytest.raises(DataError, match="no index here"):
        build(tmp_path / "no-index", questions, tmp_path / "out.jsonl")
    with pytest.raises(ConfigError, match="overwrite the questions"):
        build(index, questions, questions)
    with pytest.raises(ConfigError, match="overwrite the questions"):
        build(index, beir, beir / "queries.jsonl")
    with pytest.raises(ConfigError, match="JSON Lines"):
        build(index, questions, tmp_path / "out.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a BEIR folder with questions"):
        build(index, tmp_path / "empty", tmp_path / "out.jsonl")


def test_a_beir_folder_from_another_corpus_says_so(tmp_path, index):
    folder = tmp_path / "other"
    (folder / "qrels").mkdir(parents=True)
    write_jsonl(folder / "queries.jsonl", [{"_id": "x", "text": "What?", "answers": ["y"]}])
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nx\tunknown-doc\t1\n", encoding="utf-8")
    with pytest.raises(DataError, match="Was the index built from these documents"):
        build(index, folder, tmp_path / "out.jsonl")


def test_output_is_chat_data_with_loss_on_the_answer_only(tmp_path, index, tokenizer):
    build(index, qa_file(tmp_path), tmp_path / "out.jsonl", oracle_share=1.0)

    loaded = load_examples(tmp_path / "out.jsonl")
    assert (loaded.format, loaded.kind, len(loaded.examples)) == ("messages", "chat", 8)
    first = loaded.examples[0]
    assert [m["role"] for m in first.messages] == ["system", "user", "assistant"]
    assert first.meta["oracle"] is True and first.meta["oracle_doc"] == "france" and first.meta["question_id"] == "c-france"
    report = check_data(tmp_path / "out.jsonl", tokenizer=tokenizer, max_length=4096)
    [split] = report.splits
    assert (split.rows, split.kind, split.assistant_turns) == (8, "chat", 8) and not report.has_errors
    assert split.sample.count("[[") == 1 and "[[Paris<|im_end|>]]" in split.sample


def test_cli_build_training(tmp_path, index, monkeypatch, capsys):
    from tailorlm.cli import main

    monkeypatch.setattr("tailorlm.retrieval.embeddings.Embedder", lambda model_ref, **kwargs: FakeEmbedder(model_ref))
    questions = qa_file(tmp_path)
    code = main(["rag", "build-training", "--index", str(index), "--questions", str(questions),
                 "--output", str(tmp_path / "cli.jsonl"), "--distractors", "2", "--seed", "5", "--limit", "4"])
    assert code == 0 and "Wrote 4 examples" in capsys.readouterr().out
    build(index, questions, tmp_path / "lib.jsonl", distractors=2, seed=5, limit=4)
    assert (tmp_path / "cli.jsonl").read_bytes() == (tmp_path / "lib.jsonl").read_bytes()

    code = main(["rag", "build-training", "--index", str(index), "--questions", str(questions),
                 "--output", str(tmp_path / "bad.jsonl"), "--oracle-share", "2"])
    assert code == 2 and "oracle_share" in capsys.readouterr().err and not (tmp_path / "bad.jsonl").exists()


def test_the_highest_graded_document_is_the_oracle_and_no_judged_document_is_a_distractor(tmp_path, index):
    folder = tmp_path / "graded"
    (folder / "qrels").mkdir(parents=True)
    write_jsonl(folder / "queries.jsonl", [{"_id": "g", "text": "What is the capital of Italy?", "answers": ["Vienna"]}])
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\ng\titaly\t1\ng\taustria\t2\n", encoding="utf-8")
    build(index, folder, tmp_path / "out.jsonl", distractors=4, oracle_share=1.0)
    [row] = read_rows(tmp_path / "out.jsonl")

    assert row["oracle_doc"] == "austria" and "austria:0" in row["chunk_ids"]
    assert not any(cid.startswith("italy:") for cid in row["chunk_ids"]) and len(row["chunk_ids"]) == 5


def test_column_names_of_the_qa_formats(tmp_path, index):
    rows = [{"query": "Capital of Portugal?", "answers": {"text": ["Lisbon"], "answer_start": [0]}, "doc_id": "portugal"},
            {"Question": "Capital of Poland?", "response": "Warsaw", "passage": "Warsaw is the capital of Poland."},
            {"qid": 17, "question": "Capital of Greece?", "output": "Athens", "doc_id": "greece"}]
    build(index, write_jsonl(tmp_path / "qa.jsonl", rows), tmp_path / "out.jsonl", oracle_share=1.0)
    out = read_rows(tmp_path / "out.jsonl")

    assert [r["messages"][-1]["content"] for r in out] == ["Lisbon", "Warsaw", "Athens"]
    assert [(r["question_id"], r["oracle_doc"], r["oracle_by"]) for r in out] == [
        ("qa.jsonl:1", "portugal", "judged"), ("qa.jsonl:2", "poland", "context"), ("17", "greece", "judged")]
