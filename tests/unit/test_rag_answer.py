"""Answers with citations and the rag strategy, on a bag-of-words embedder and a tiny random Llama model."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from _retrieval_fakes import FakeEmbedder, bag_of_words, make_chunk
from tailorlm.errors import ConfigError, DataError, ModelError
from tailorlm.retrieval.answer import (
    DEFAULT_MIN_SCORE, NOT_FOUND, SHORTENED, RagAnswer, answer_question, cited_numbers, context_budget, fit_context,
)
from tailorlm.retrieval.index import build_index, open_index
from tailorlm.retrieval.prompt import rag_messages
from tailorlm.retrieval.store import Hit
from tailorlm.strategies.rag import RagSettings, RagSpecialist, ask, is_rag_specialist, save_rag_specialist

DIMENSION = 1024
ROWS = [
    {"_id": "paris", "title": "France", "text": "Paris is the capital of France. The Seine flows through Paris.", "source": "A"},
    {"_id": "berlin", "title": "Germany", "text": "Berlin is the capital of Germany and its largest city.", "source": "B"},
    {"_id": "fish", "title": "Fish", "text": "Goldfish swim in a bowl and breathe through gills.", "source": "A"},
    {"_id": "cake", "title": "Baking", "text": "Bake the cake for forty minutes at a moderate heat.", "source": "B"},
]
QUESTION = "What is the capital of France?"


class FakeEmbedderFactory:
    """Stands in for `Embedder(model_ref)` so that indexes opened by path embed queries with the fake."""

    def __call__(self, model_ref: str = "fake-bow", **kwargs: object) -> FakeEmbedder:
        return FakeEmbedder(model_ref, dimension=DIMENSION)


class NoModel:
    """A model that fails the test if anything touches it."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the model was used ({name})")


def chat_tokenizer():
    from conftest import build_tiny_tokenizer
    from tailorlm.data.templates import CHATML_TEMPLATE

    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = CHATML_TEMPLATE  # its <|im_start|> and <|im_end|> are special tokens already
    return tokenizer


@pytest.fixture(scope="module")
def chat_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a 1024-token context and a ChatML template (the RAG system prompt alone is ~160 tokens)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = chat_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("chat-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(chat_llama_dir: Path):
    from tailorlm.models.load import load_model

    return load_model(str(chat_llama_dir), device="cpu")


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rag")
    corpus = folder / "docs" / "corpus.jsonl"
    corpus.parent.mkdir()
    corpus.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    build_index([corpus], folder / "index", embedder=FakeEmbedder(dimension=DIMENSION), chunk_tokens=64, overlap=0,
                progress=False)
    return folder / "index"


@pytest.fixture
def index(index_dir: Path):
    with open_index(index_dir, embedder=FakeEmbedder(dimension=DIMENSION)) as opened:
        yield opened


@pytest.fixture
def fake_embedder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tailorlm.retrieval.embeddings.Embedder", FakeEmbedderFactory())


def prompt_length(tokenizer, question: str, hits: list[Hit]) -> int:
    """Tokens of the chat-rendered RAG prompt, counted independently of answer.py."""
    text = tokenizer.apply_chat_template(rag_messages(question, [h.chunk for h in hits]), tokenize=False,
                                         add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def ranked(*texts: str) -> list[Hit]:
    return [Hit(f"d{i}:0", 1.0 - i / 10, make_chunk(f"d{i}:0", f"d{i}", text, title=f"Doc {i}"))
            for i, text in enumerate(texts)]


# --- fit_context -----------------------------------------------------------------------------------------------------

PASSAGES = ("Paris is the capital of France.", "The Seine flows through Paris in the north of the country.",
            "Goldfish swim in a bowl.", "Bake the cake for forty minutes.")


def test_fit_context_keeps_every_hit_when_the_budget_is_large() -> None:
    tokenizer, hits = chat_tokenizer(), ranked(*PASSAGES)
    context = fit_context(QUESTION, hits, tokenizer, 10_000)
    assert [h.chunk_id for h in context.hits] == ["d0:0", "d1:0", "d2:0", "d3:0"]
    assert context.dropped == [] and context.notes == []
    assert context.prompt_tokens == prompt_length(tokenizer, QUESTION, hits)


@pytest.mark.parametrize("room", [0, 1])
def test_fit_context_drops_exactly_the_lowest_ranked_hits(room: int) -> None:
    tokenizer, hits = chat_tokenizer(), ranked(*PASSAGES)
    lengths = [prompt_length(tokenizer, QUESTION, hits[:n]) for n in range(1, 5)]
    assert lengths == sorted(lengths) and len(set(lengths)) == 4
    budget = lengths[1] + room  # two passages fit, three need more (at least one more token)
    assert lengths[2] > budget
    context = fit_context(QUESTION, hits, tokenizer, budget)
    assert [h.chunk_id for h in context.hits] == ["d0:0", "d1:0"]
    assert [h.chunk_id for h in context.dropped] == ["d2:0", "d3:0"]
    assert context.prompt_tokens == lengths[1]
    assert context.notes == [f"2 lower-ranked passage(s) left out to fit the model's context ({budget} prompt tokens)"]


def test_fit_context_shortens_and_marks_a_best_hit_that_does_not_fit() -> None:
    tokenizer = chat_tokenizer()
    long_text = " ".join(f"Paris fact number {i} is about the capital of France." for i in range(40))
    hits = ranked(long_text, "Goldfish swim in a bowl.")
    budget = prompt_length(tokenizer, QUESTION, []) + 60
    assert prompt_length(tokenizer, QUESTION, hits[:1]) > budget

    context = fit_context(QUESTION, hits, tokenizer, budget)
    assert [h.chunk_id for h in context.dropped] == ["d1:0"]
    (kept,) = context.hits
    assert kept.chunk_id == "d0:0" and kept.chunk.text.endswith(SHORTENED)
    prefix = kept.chunk.text[: -len(SHORTENED)]
    assert long_text.startswith(prefix) and 0 < len(prefix) < len(long_text)
    assert kept.chunk.end == kept.chunk.start + len(prefix)
    assert context.prompt_tokens == prompt_length(tokenizer, QUESTION, [kept]) <= budget
    # the cut is at a token boundary and as late as fits: one more token would not fit
    offsets = [end for _, end in tokenizer(long_text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
    assert any(long_text[:end].rstrip() == prefix for end in offsets)
    following = min(end for end in offsets if len(long_text[:end].rstrip()) > len(prefix))
    longer = Hit("d0:0", 1.0, make_chunk("d0:0", "d0", long_text[:following].rstrip() + SHORTENED, title="Doc 0"))
    assert prompt_length(tokenizer, QUESTION, [longer]) > budget
    assert any("shortened to" in note and "Doc 0" in note for note in context.notes)
    assert "1 lower-ranked passage(s) left out" in context.notes[-1]
    # the original hit is untouched
    assert hits[0].chunk.text == long_text


def test_fit_context_refuses_a_question_that_alone_does_not_fit() -> None:
    tokenizer = chat_tokenizer()
    with pytest.raises(ConfigError, match="question alone does not fit") as err:
        fit_context(QUESTION, ranked("Paris."), tokenizer, prompt_length(tokenizer, QUESTION, []) - 1)
    assert err.value.key == "question"


def test_context_budget_is_the_context_less_new_tokens(loaded) -> None:
    model, tokenizer = loaded
    assert context_budget(model, tokenizer, 64) == 1024 - 64  # the tokenizer's 1e30 limit is not a real one

    class Short:
        model_max_length = 300

    assert context_budget(model, Short(), 100) == 200
    with pytest.raises(ConfigError, match="leaves no room") as err:
        context_budget(model, tokenizer, 1024)
    assert err.value.key == "max_new_tokens"


# --- citations and sources -------------------------------------------------------------------------------------------

def test_cited_numbers_keep_existing_sources_sorted() -> None:
    assert cited_numbers("see [2] and [1][3]", 2) == [1, 2]
    assert cited_numbers("as [3, 1] says, and [1]", 3) == [1, 3]
    assert cited_numbers("no citations [0] or [x]", 4) == []


def test_sources_text_lists_sources_in_citation_order_and_marks_cited() -> None:
    first = make_chunk("corpus.jsonl#3:0", "paris", "Paris is the capital.", title="France",
                       metadata={"path": "/docs/corpus.jsonl"})
    second = make_chunk("/docs/notes.md:1", "/docs/notes.md", "The Seine.", heading="Rivers", page=None,
                        metadata={"path": "/docs/notes.md"})
    answer = RagAnswer("Q?", "Paris [2].", True, [Hit(first.chunk_id, 0.03, first), Hit(second.chunk_id, 0.02, second)],
                       cited=[2], best_score=0.71)
    assert answer.sources_text() == ("Sources:\n"
                                     "[1] France (paris)\n"
                                     "[2] /docs/notes.md — Rivers (cited)")
    data = json.loads(json.dumps(answer.to_dict()))
    assert data["found"] is True and data["cited"] == [2] and data["best_score"] == 0.71
    assert [(s["number"], s["cited"], s["doc_id"], s["path"]) for s in data["sources"]] == [
        (1, False, "paris", "/docs/corpus.jsonl"), (2, True, "/docs/notes.md", "/docs/notes.md")]
    assert RagAnswer("Q?", NOT_FOUND, False).sources_text() == ""


# --- answer_question -------------------------------------------------------------------------------------------------

def test_not_found_returns_the_fixed_text_without_calling_the_model(index) -> None:
    question = "Which striker scored the winning goal in the football final?"
    texts = [row["text"] for row in ROWS]
    expected = float(np.max(bag_of_words(texts, DIMENSION) @ bag_of_words([question], DIMENSION)[0]))
    pieces: list[str] = []
    answer = answer_question(index, question, NoModel(), NoModel(), k=4, on_text=pieces.append)
    assert answer.found is False and answer.text == NOT_FOUND and pieces == [NOT_FOUND]
    assert answer.sources == [] and answer.cited == [] and answer.dropped == []
    assert answer.best_score == pytest.approx(expected, abs=1e-6) and expected < DEFAULT_MIN_SCORE
    assert any("below min_score" in note for note in answer.notes)


def test_not_found_compares_cosine_not_the_fused_score(index) -> None:
    # The hybrid (RRF) score of the top hit is ~0.033 whatever the question; the cosine decides.
    answer = answer_question(index, QUESTION, NoModel(), NoModel(), k=2, mode="hybrid", min_score=0.9)
    cosine = float(bag_of_words([ROWS[0]["text"]], DIMENSION)[0] @ bag_of_words([QUESTION], DIMENSION)[0])
    assert answer.found is False and answer.best_score == pytest.approx(cosine, abs=1e-6)
    assert 0.3 < cosine < 0.9


def test_filters_that_match_nothing_answer_not_found(index) -> None:
    answer = answer_question(index, QUESTION, NoModel(), NoModel(), filters={"source": "Z"})
    assert answer.found is False and answer.best_score is None and answer.notes == ["no chunk matched the filters"]


def test_an_answer_gives_the_model_the_ranked_passages_and_streams(index, loaded) -> None:
    from tailorlm.models.generate import generate
    from tailorlm.retrieval.search import search

    model, tokenizer = loaded
    pieces: list[str] = []
    answer = answer_question(index, QUESTION, model, tokenizer, k=2, mode="dense", max_new_tokens=12,
                             on_text=pieces.append)
    expected_hits = search(index, QUESTION, k=2, mode="dense")
    assert answer.found is True and [h.chunk_id for h in answer.sources] == [h.chunk_id for h in expected_hits]
    assert answer.sources[0].chunk.doc_id == "paris" and answer.best_score == pytest.approx(expected_hits[0].score, abs=1e-5)
    # exactly the text the model gives for THE prompt layout
    expected = generate(model, tokenizer, rag_messages(QUESTION, [h.chunk for h in expected_hits]), max_new_tokens=12)
    assert answer.text == expected and "".join(pieces) == expected
    assert answer.cited == cited_numbers(expected, 2)


def test_reranking_without_a_reranker_says_so(index, loaded) -> None:
    model, tokenizer = loaded
    answer = answer_question(index, QUESTION, model, tokenizer, k=1, rerank=True, max_new_tokens=2)
    assert any("no reranker" in note for note in answer.notes)


# --- streaming -------------------------------------------------------------------------------------------------------

def test_streamed_pieces_join_to_the_returned_text(loaded) -> None:
    from tailorlm.models.generate import generate

    model, tokenizer = loaded
    messages = [{"role": "user", "content": "Hello, what is the capital of France?"}]
    pieces: list[str] = []
    text = generate(model, tokenizer, messages, max_new_tokens=24, on_text=pieces.append)
    assert text == generate(model, tokenizer, messages, max_new_tokens=24)  # streaming changes nothing
    assert len(pieces) > 1 and all(pieces) and "".join(pieces) == text


def test_a_split_multibyte_character_waits_for_its_last_byte(tokenizer) -> None:
    import torch

    from tailorlm.models.generate import TextPieces

    ids = tokenizer("é🙂 ok", add_special_tokens=False)["input_ids"]  # byte-level: the emoji spans several tokens
    pieces: list[str] = []
    streamer = TextPieces(tokenizer, pieces.append)
    streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt: skipped
    for token in ids:
        streamer.put(torch.tensor([token]))
    streamer.end()
    assert "".join(pieces) == "é🙂 ok" and all("\ufffd" not in piece for piece in pieces)


# --- RagSettings -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("k", 0), ("k", True), ("mode", "fuzzy"), ("mmr", 1.5), ("min_score", 2.0), ("max_new_tokens", 0),
    ("filters", {"": "x"}), ("filters", ["source=A"]), ("rerank", "yes"), ("reranker", ""),
])
def test_rag_settings_name_the_bad_key(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        RagSettings(**{field: value})
    assert err.value.key == field


def test_rag_settings_from_dict_refuses_unknown_keys_and_keeps_defaults() -> None:
    with pytest.raises(ConfigError, match="unknown RAG setting") as err:
        RagSettings.from_dict({"topk": 3}, where="specialist.json")
    assert err.value.key == "topk" and "k, mode, filters" in str(err.value) and "specialist.json" in str(err.value)
    settings = RagSettings.from_dict({"k": 3, "mmr": 1})
    assert (settings.k, settings.mmr, settings.mode, settings.min_score) == (3, 1.0, "hybrid", DEFAULT_MIN_SCORE)
    assert settings.updated({"mode": "bm25"}) == RagSettings(k=3, mmr=1.0, mode="bm25")


# --- the rag strategy ------------------------------------------------------------------------------------------------

SETTINGS = {"k": 2, "mode": "dense", "filters": {"source": "A"}, "min_score": 0.1, "max_new_tokens": 8}


def test_save_and_load_round_trip_the_settings_and_the_index(tmp_path, chat_llama_dir, index_dir, fake_embedder) -> None:
    folder = save_rag_specialist(tmp_path / "spec", model=str(chat_llama_dir), index=index_dir, overrides=SETTINGS)
    assert sorted(p.name for p in folder.iterdir()) == ["specialist.json"] and is_rag_specialist(folder)
    manifest = json.loads((folder / "specialist.json").read_text())
    assert (manifest["strategy"], manifest["weights"], manifest["base_model"]) == ("rag", "none", str(chat_llama_dir))
    assert manifest["config"] == {"index": str(index_dir.resolve()), "embed_model": "fake-bow",
                                  "retrieval": asdict(RagSettings(**SETTINGS))}
    with RagSpecialist.load(folder) as specialist:
        assert specialist.settings == RagSettings(**SETTINGS)
        assert specialist.index.folder == index_dir.resolve() and len(specialist.index) == 4
    with RagSpecialist.load(folder, overrides={"k": 1, "mode": "bm25"}) as specialist:
        assert specialist.settings == RagSettings(**{**SETTINGS, "k": 1, "mode": "bm25"})
    assert not is_rag_specialist(chat_llama_dir) and not is_rag_specialist(tmp_path / "nowhere")


def test_save_refuses_a_missing_index_a_used_folder_and_a_model_without_chat_template(
        tmp_path, chat_llama_dir, tiny_llama_dir, index_dir) -> None:
    with pytest.raises(DataError, match="no index here"):
        save_rag_specialist(tmp_path / "a", model=str(chat_llama_dir), index=tmp_path / "missing")
    assert not (tmp_path / "a").exists()
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty") as err:
        save_rag_specialist(used, model=str(chat_llama_dir), index=index_dir)
    assert "notes.txt" in str(err.value)
    with pytest.raises(ModelError, match="no chat template"):
        save_rag_specialist(tmp_path / "b", model=str(tiny_llama_dir), index=index_dir)
    with pytest.raises(ConfigError) as err:
        save_rag_specialist(tmp_path / "c", model=str(chat_llama_dir), index=index_dir, overrides={"k": -1})
    assert err.value.key == "k"
    spec = save_rag_specialist(tmp_path / "d", model=str(chat_llama_dir), index=index_dir)
    with pytest.raises(ConfigError, match="already a RAG specialist"):
        save_rag_specialist(tmp_path / "e", model=str(spec), index=index_dir)


def test_ask_with_a_rag_specialist_uses_its_settings_and_the_overrides(tmp_path, chat_llama_dir, index_dir,
                                                                       fake_embedder) -> None:
    folder = save_rag_specialist(tmp_path / "spec", model=str(chat_llama_dir), index=index_dir, overrides=SETTINGS)
    answer = ask(QUESTION, model=folder)
    # filters source=A keep paris and fish; k=2 gives both, best first
    assert answer.found is True and [h.chunk.doc_id for h in answer.sources] == ["paris", "fish"]
    plain = ask(QUESTION, model=str(chat_llama_dir), index=index_dir, overrides=SETTINGS)
    assert plain.text == answer.text and [h.chunk_id for h in plain.sources] == [h.chunk_id for h in answer.sources]

    one = ask(QUESTION, model=folder, overrides={"k": 1})
    assert [h.chunk.doc_id for h in one.sources] == ["paris"]
    refused = ask(QUESTION, model=folder, overrides={"min_score": 0.95})
    assert refused.found is False and refused.text == NOT_FOUND
    unfiltered = ask(QUESTION, model=folder, overrides={"filters": {}, "k": 4})
    assert {h.chunk.doc_id for h in unfiltered.sources} == {"paris", "berlin", "fish", "cake"}
    with pytest.raises(ConfigError) as err:
        ask(QUESTION, model=folder, overrides={"mode": "fuzzy"})
    assert err.value.key == "mode"


def test_ask_without_an_index_or_with_a_vanished_one_says_what_to_do(tmp_path, chat_llama_dir, index_dir) -> None:
    import shutil

    with pytest.raises(ConfigError, match="no index to answer from") as err:
        ask(QUESTION, model=str(chat_llama_dir))
    assert err.value.key == "index" and "tailor rag specialist" in str(err.value)
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    folder = save_rag_specialist(tmp_path / "spec", model=str(chat_llama_dir), index=copy)
    shutil.rmtree(copy)
    with pytest.raises(DataError, match="no index here") as err:
        ask(QUESTION, model=folder)
    assert f"tailor rag index DOCS --index {copy}" in str(err.value)


def test_generate_answers_the_last_user_message_with_sources(tmp_path, chat_llama_dir, index_dir, fake_embedder) -> None:
    folder = save_rag_specialist(tmp_path / "spec", model=str(chat_llama_dir), index=index_dir, overrides=SETTINGS)
    with RagSpecialist.load(folder) as specialist:
        answer = specialist.ask(QUESTION)
        messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": QUESTION}]
        assert specialist.generate(messages) == f"{answer.text}\n\n{answer.sources_text()}"
        assert specialist.generate(QUESTION, with_sources=False) == answer.text
        assert specialist.settings.max_new_tokens == 8
        shorter = specialist.generate(QUESTION, max_new_tokens=2, with_sources=False)
        assert specialist.settings.max_new_tokens == 8
        with pytest.raises(DataError, match="no user message"):
            specialist.generate([{"role": "system", "content": "x"}])
    assert shorter == ask(QUESTION, model=folder, overrides={"max_new_tokens": 2}).text != answer.text


def test_lora_plus_rag_wraps_a_trained_specialist(tmp_path, chat_llama_dir, index_dir, fake_embedder) -> None:
    import peft
    import torch

    from tailorlm.models.load import load_model
    from tailorlm.strategies.base import Manifest, save_specialist

    base, tokenizer = load_model(str(chat_llama_dir), device="cpu")
    torch.manual_seed(1)
    lora = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    trained = tmp_path / "lora"
    save_specialist(trained, lora, tokenizer, Manifest(base_model=str(chat_llama_dir), base_model_path=str(chat_llama_dir),
                                                       strategy="lora", objective="sft", weights="adapter"))
    folder = save_rag_specialist(tmp_path / "spec", model=str(trained), index=index_dir, overrides=SETTINGS)
    manifest = json.loads((folder / "specialist.json").read_text())
    assert (manifest["strategy"], manifest["base_model"]) == ("lora+rag", str(trained.resolve()))
    with RagSpecialist.load(folder) as specialist:
        assert isinstance(specialist.model, peft.PeftModel)
        ids = tokenizer("Paris", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            assert torch.equal(specialist.model(ids).logits, lora.eval()(ids).logits)


# --- the CLI ---------------------------------------------------------------------------------------------------------

def test_cli_specialist_then_ask_streams_the_answer_and_lists_sources(tmp_path, chat_llama_dir, index_dir, fake_embedder,
                                                                      capsys) -> None:
    from tailorlm.cli import main

    folder = tmp_path / "spec"
    assert main(["rag", "specialist", "--model", str(chat_llama_dir), "--index", str(index_dir), "--output", str(folder),
                 "--k", "2", "--mode", "dense", "--filter", "source=A", "--min-score", "0.1", "--max-new-tokens", "8"]) == 0
    assert f"saved the RAG specialist to {folder}" in capsys.readouterr().out
    assert RagSpecialist.load(folder).settings == RagSettings(**SETTINGS)

    assert main(["rag", "ask", QUESTION, "--model", str(folder), "--k", "1"]) == 0
    expected = ask(QUESTION, model=folder, overrides={"k": 1})
    assert capsys.readouterr().out == f"{expected.text}\n\n{expected.sources_text()}\n"
    assert expected.sources_text().startswith("Sources:\n[1] France (paris)")

    assert main(["rag", "ask", "football striker goal", "--model", str(folder), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["found"] is False and data["text"] == NOT_FOUND and data["sources"] == []


def test_cli_ask_reports_a_missing_index_as_one_line(tmp_path, chat_llama_dir, capsys) -> None:
    from tailorlm.cli import main

    assert main(["rag", "ask", QUESTION, "--model", str(chat_llama_dir)]) == 2
    assert "no index to answer from" in capsys.readouterr().err
    assert main(["rag", "ask", QUESTION, "--model", str(chat_llama_dir), "--index", str(tmp_path / "none")]) == 2
    assert "no index here" in capsys.readouterr().err
