"""Answers with citations from real CDC documents by the built-in smollm2-135m-instruct, retrieved with minilm-l6."""

from __future__ import annotations

from pathlib import Path

import pytest

from tailorlm.retrieval.answer import NOT_FOUND
from tailorlm.retrieval.index import build_index
from tailorlm.strategies.rag import RagSpecialist, save_rag_specialist

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CDC = ROOT / "examples" / "data" / "medical_qa" / "medquad" / "medquad_cdc.jsonl"


@pytest.fixture(scope="module")
def specialist(tmp_path_factory: pytest.TempPathFactory):
    """A RAG specialist over the 75 CDC answers (one document each), asked with greedy decoding."""
    folder = tmp_path_factory.mktemp("rag-smollm2")
    report = build_index([CDC], folder / "index", text_column="answer", id_column="qid", progress=False)
    assert report.added == 1 and report.chunks >= 75
    saved = save_rag_specialist(folder / "specialist", model="smollm2-135m-instruct", index=folder / "index",
                                overrides={"k": 3, "max_new_tokens": 48})
    with RagSpecialist.load(saved, device="cpu") as loaded:
        yield loaded


def test_an_answerable_question_is_answered_from_the_best_chunk(specialist: RagSpecialist) -> None:
    pieces: list[str] = []
    answer = specialist.ask("What are the treatments for Acinetobacter in healthcare settings?", on_text=pieces.append)
    assert answer.found is True and answer.best_score is not None and answer.best_score > 0.5
    assert answer.sources and answer.sources[0].chunk.doc_id == "0000003-5"
    assert "antibiotic" in answer.sources[0].chunk.text
    assert "antibiotic" in answer.text.lower()
    assert "".join(pieces) == answer.text
    assert answer.sources_text().startswith("Sources:\n[1] ")


def test_an_unrelated_question_is_not_answered(specialist: RagSpecialist) -> None:
    pieces: list[str] = []
    answer = specialist.ask("Which club won the football league championship last season?", on_text=pieces.append)
    assert answer.found is False and answer.text == NOT_FOUND and pieces == [NOT_FOUND]
    assert answer.sources == [] and answer.best_score is not None and answer.best_score < 0.2
