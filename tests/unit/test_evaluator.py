"""The evaluator on a tiny random Llama: constrained choice against hand-computed log-likelihoods, batched generation
against one-at-a-time generation, the files it writes, and its errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tailorlm.cli import main
from tailorlm.errors import ConfigError, DataError
from tailorlm.evaluation import evaluator
from tailorlm.evaluation.evaluator import evaluate
from tailorlm.tasks.metrics import corpus_score
from tailorlm.tasks.task import load_task

WORDS = {"0": "bearish", "1": "bullish", "2": "neutral"}
TWEETS = ["shares plunge after the earnings report", "stocks rise", "the market is flat today",
          "bank cuts its outlook on the company", "profits soar", "quarterly results in line",
          "bearish analysts downgrade the stock again", "a bullish call"]


@pytest.fixture(scope="module")
def chat_llama_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    """The tiny random Llama with a ChatML chat template, so chat messages can be rendered."""
    from transformers import AutoTokenizer

    from tailorlm.data.templates import ensure_chat_template

    folder = tmp_path_factory.mktemp("chat-llama")
    shutil.copytree(tiny_llama_dir, folder, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ensure_chat_template(tokenizer)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(chat_llama_dir):
    from tailorlm.models.load import load_model

    return load_model(str(chat_llama_dir), device="cpu", progress=False)


def write_recipe(folder: Path, task: dict, files: dict[str, list[tuple[str, str]] | list[dict]]) -> Path:
    data = {"split": {}}
    for split, rows in files.items():
        if rows and isinstance(rows[0], dict):
            path = folder / f"{split}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        else:
            path = folder / f"{split}.csv"
            path.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows), encoding="utf-8")
        data[split] = path.name
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"task": task, "data": data}), encoding="utf-8")
    return recipe


@pytest.fixture
def sentiment(tmp_path):
    rows = [(text, str(i % 3)) for i, text in enumerate(TWEETS)]
    task = {"name": "fin", "instruction": "Classify the tweet.", "answer": "label", "labels": WORDS, "metric": "macro_f1"}
    return load_task(write_recipe(tmp_path, task, {"train": rows, "test": rows}))


def hand_logprob(model, tokenizer, messages, word: str) -> float:
    """log p(word | prompt) from one unpadded forward pass."""
    from tailorlm.models.generate import render_prompt

    prompt = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    word_ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + word_ids])).logits[0].float().log_softmax(-1)
    return sum(float(logits[len(prompt) - 1 + j, t]) for j, t in enumerate(word_ids))


def said(model, tokenizer, messages, word: str) -> float:
    """log p(the answer is `word`): the word as written or capitalised."""
    return math.log(sum(math.exp(hand_logprob(model, tokenizer, messages, w)) for w in (word, word.capitalize())))


def test_constrained_choice_picks_the_word_with_the_highest_hand_computed_likelihood(chat_llama_dir, loaded, sentiment):
    model, tokenizer = loaded
    result = evaluate(str(chat_llama_dir), sentiment, batch_size=3, progress=False, scoring="choice")
    assert result.scoring == "choice" and result.examples == len(TWEETS)
    assert any(len(tokenizer(w, add_special_tokens=False)["input_ids"]) > 1 for w in WORDS.values())  # multi-token
    for example, row in zip(sentiment.examples("test"), result.predictions):
        by_hand = {word: said(model, tokenizer, sentiment.messages(example), word) for word in WORDS.values()}
        assert row["logprobs"] == pytest.approx(by_hand, abs=1e-4)
        best = max(by_hand, key=by_hand.get)
        assert row["prediction"] == next(value for value, word in WORDS.items() if word == best)
        assert row["score"] == float(row["prediction"] == row["reference"])
    assert "generate" not in result.extra


def test_metrics_and_predictions_files_hold_the_measured_values(chat_llama_dir, sentiment, tmp_path):
    out = tmp_path / "eval"
    result = evaluate(str(chat_llama_dir), sentiment, output=out, limit=5, batch_size=2, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and [r["id"] for r in rows] == [f"test-{i}" for i in range(5)]
    assert [r["input"] for r in rows] == TWEETS[:5] and [r["reference"] for r in rows] == ["0", "1", "2", "0", "1"]
    recomputed = corpus_score("macro_f1", [r["prediction"] for r in rows], [r["references"] for r in rows])
    assert metrics["score"] == pytest.approx(recomputed) == pytest.approx(result.score)
    assert metrics["ci_low"] <= metrics["score"] <= metrics["ci_high"]
    assert (metrics["metric"], metrics["examples"], metrics["scoring"], metrics["split"], metrics["task"]) == (
        "macro_f1", 5, "choice", "test", "fin")
    assert metrics["seconds_per_example"] > 0 and metrics["tokens_per_second"] > 0
    generated = metrics["extra"]["generate"]  # label tasks are also answered freely and parsed
    assert generated["parsed"] == pytest.approx(sum(1 for r in rows if r["generated"]) / 5)
    assert all(isinstance(r["output"], str) for r in rows)
    per_class = metrics["extra"]["per_class"]
    assert {v: c["support"] for v, c in per_class.items()} == {"0": 2, "1": 2, "2": 1}
    assert sum(c["predicted"] for c in per_class.values()) == 5
    assert not list(out.glob(".*.tmp"))  # written through temporary files, none left behind


def test_limit_and_batch_size_do_not_change_predictions(chat_llama_dir, sentiment):
    one = evaluate(str(chat_llama_dir), sentiment, batch_size=1, limit=4, scoring="choice", progress=False)
    many = evaluate(str(chat_llama_dir), sentiment, batch_size=4, limit=4, scoring="choice", progress=False)
    assert one.examples == many.examples == 4
    for a, b in zip(one.predictions, many.predictions):
        assert a["prediction"] == b["prediction"]
        assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-4)


def test_batched_generation_matches_one_prompt_at_a_time(chat_llama_dir, loaded, tmp_path):
    from tailorlm.models.generate import generate

    model, tokenizer = loaded
    rows = [{"question": q, "answer": "yes"} for q in ("hello", "what is the capital of France? please answer",
                                                          "thanks", "the quick brown fox jumps over the lazy dog")]
    task = load_task(write_recipe(tmp_path, {"answer": "text", "metric": "exact_match"}, {"train": rows, "test": rows}))
    result = evaluate(str(chat_llama_dir), task, batch_size=4, max_new_tokens=6, progress=False)
    assert result.scoring == "generate" and result.extra["max_new_tokens"] == 6
    for example, row in zip(task.examples("test"), result.predictions):
        alone = generate(model, tokenizer, task.messages(example), max_new_tokens=6)
        assert row["output"] == alone and row["prediction"] == alone.strip()
        assert row["score"] == float(row["prediction"] == "yes")


def test_perplexity_is_the_reference_answers_likelihood(chat_llama_dir, loaded, tmp_path):
    model, tokenizer = loaded
    rows = [{"question": "hello", "answer": "hi thanks"}, {"question": "what is the capital", "answer": "Paris"}]
    task = load_task(write_recipe(tmp_path, {"answer": "text", "metric": "perplexity"}, {"train": rows, "test": rows}))
    result = evaluate(str(chat_llama_dir), task, batch_size=2, progress=False)
    total, count = 0.0, 0
    for example in task.examples("test"):
        total += hand_logprob(model, tokenizer, task.messages(example), task.answer_text(example))
        count += len(tokenizer(task.answer_text(example), add_special_tokens=False)["input_ids"])
    assert result.scoring == "perplexity"
    assert result.score == pytest.approx(float(torch.tensor(-total / count).exp()), rel=1e-4)


def test_code_answers_are_run_against_their_tests(chat_llama_dir, tmp_path, monkeypatch):
    rows = [{"task_id": f"t/{i}", "prompt": "def add(a, b):\n", "canonical_solution": "    return a + b\n",
             "entry_point": "add", "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"} for i in range(2)]
    task = load_task(write_recipe(tmp_path, {"answer": "code"}, {"train": rows, "test": rows}))
    answers = ["```python\ndef add(a, b):\n    return a + b\n```", "```python\ndef add(a, b):\n    return a - b\n```"]
    monkeypatch.setattr(evaluator, "greedy", lambda model, tokenizer, prompts, n, examples=(): [(a, 9) for a in answers])
    result = evaluate(str(chat_llama_dir), task, batch_size=2, progress=False)
    assert (result.metric, result.score) == ("pass_at_1", 0.5)
    assert [r["score"] for r in result.predictions] == [1.0, 0.0]
    assert result.predictions[0]["reason"] == "passed" and "AssertionError" in result.predictions[1]["reason"]


def test_a_predictor_object_supplies_its_own_messages(chat_llama_dir, loaded, sentiment):
    model, tokenizer = loaded
    shots = sentiment.examples("train")[:2]

    class FewShot:
        def __init__(self):
            self.model, self.tokenizer, self.calls = model, tokenizer, 0

        def messages(self, task, example):
            self.calls += 1
            return task.messages(example, shots)

    predictor = FewShot()
    result = evaluate(predictor, sentiment, limit=2, scoring="choice", progress=False)
    example = sentiment.examples("test")[0]
    expected = said(model, tokenizer, sentiment.messages(example, shots), "neutral")
    assert predictor.calls == 2 and result.predictions[0]["logprobs"]["neutral"] == pytest.approx(expected, abs=1e-4)


def test_evaluation_multiplies_through_onednn_and_gives_the_models_layers_back(chat_llama_dir, loaded, sentiment,
                                                                               monkeypatch):
    from tailorlm.training import matmul

    if matmul.onednn_unavailable() is not None:
        pytest.skip(matmul.onednn_unavailable())
    model, tokenizer = loaded
    calls = []
    apply = matmul._OneDnnLinear.apply
    monkeypatch.setattr(matmul._OneDnnLinear, "apply", lambda *a: calls.append(1) or apply(*a))

    class Plain:
        def __init__(self):
            self.model, self.tokenizer = model, tokenizer

        def messages(self, task, example):
            return task.messages(example)

    mine = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    matmul.use_onednn_linear(mine)  # a layer its owner swapped before evaluating stays swapped after
    try:
        fast = evaluate(Plain(), sentiment, limit=3, scoring="choice", progress=False)
        assert len(calls) > 0
        assert [m for m in model.modules() if matmul.uses_onednn(m)] == [mine]
    finally:
        matmul.restore_linear(model)
    calls.clear()
    monkeypatch.setattr(matmul, "onednn_unavailable", lambda: "switched off for this test")
    own = evaluate(Plain(), sentiment, limit=3, scoring="choice", progress=False)
    assert not calls
    for a, b in zip(fast.predictions, own.predictions):
        assert a["prediction"] == b["prediction"] and a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-4)


def test_a_classification_head_specialist_answers_with_its_argmax(tiny_llama_dir, tmp_path, sentiment):
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    from tailorlm.strategies.base import Manifest, save_specialist

    torch.manual_seed(1)
    model = LlamaForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=3)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    manifest = Manifest(base_model="tiny", base_model_path=str(tiny_llama_dir), strategy="full", objective="classify",
                        weights="full", labels=["0", "1", "2"])
    save_specialist(tmp_path / "clf", model, tokenizer, manifest)
    result = evaluate(tmp_path / "clf", sentiment, progress=False)
    model.eval()
    with torch.no_grad():
        expected = [str(int(model(**tokenizer(t, return_tensors="pt")).logits.argmax(-1))) for t in TWEETS]
    assert result.scoring == "head" and [r["prediction"] for r in result.predictions] == expected
    # a recipe's `scoring: choice` (constrained choice for generative models) is what a head does
    chosen = evaluate(tmp_path / "clf", sentiment, scoring="choice", progress=False)
    assert chosen.scoring == "head" and [r["prediction"] for r in chosen.predictions] == expected
    with pytest.raises(ConfigError, match="scoring 'generate' does not fit"):
        evaluate(tmp_path / "clf", sentiment, scoring="generate", progress=False)


def test_scoring_that_does_not_fit_is_refused(chat_llama_dir, tmp_path, sentiment):
    rows = [{"question": "q", "answer": "a"}]
    text_task = load_task(write_recipe(tmp_path, {"answer": "text"}, {"train": rows, "test": rows}))
    with pytest.raises(ConfigError, match="constrained choice needs a label task"):
        evaluate(str(chat_llama_dir), text_task, scoring="choice", progress=False)
    with pytest.raises(ConfigError, match="unknown scoring"):
        evaluate(str(chat_llama_dir), sentiment, scoring="best", progress=False)


def test_a_metric_that_does_not_fit_the_answer_is_refused_before_loading(sentiment):
    sentiment.metric = "rougeL"
    with pytest.raises(ConfigError, match=r"task\.metric.*accuracy, macro_f1"):
        evaluate("no-such-model", sentiment, progress=False)


def test_a_test_label_outside_the_set_names_the_file_and_row(chat_llama_dir, tmp_path):
    rows = [(text, str(i % 3)) for i, text in enumerate(TWEETS)]
    task = load_task(write_recipe(tmp_path, {"answer": "label", "labels": WORDS},
                                  {"train": rows, "test": rows[:2] + [("odd one", "5")]}))
    with pytest.raises(DataError, match=r"test\.csv, row 4.*label is not in the label set.*found '5'"):
        evaluate(str(chat_llama_dir), task, progress=False)


def test_tailor_eval_prints_the_metric_and_writes_the_files(chat_llama_dir, tmp_path, capsys):
    rows = [(text, str(i % 3)) for i, text in enumerate(TWEETS)]
    recipe = write_recipe(tmp_path, {"name": "fin", "answer": "label", "labels": WORDS, "metric": "accuracy"},
                          {"train": rows, "test": rows})
    out = tmp_path / "out"
    code = main(["eval", str(chat_llama_dir), "--task", str(recipe), "--limit", "3", "--output", str(out),
                 "--no-progress", "--set", "task.metric=macro_f1"])
    printed = capsys.readouterr()
    assert code == 0 and printed.err == ""
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "macro_f1" and metrics["examples"] == 3
    assert f"macro_f1 {metrics['score']:.4f} [95% CI {metrics['ci_low']:.4f}-{metrics['ci_high']:.4f}]" in printed.out
    assert code == 0 and len((out / "predictions.jsonl").read_text().splitlines()) == 3
    assert main(["eval", str(chat_llama_dir), "--task", str(recipe), "--limit", "0", "--output", str(out)]) == 2


# -- RAG specialists: sources, citations and whether they name the right document -------------------------------------

QA = [{"question": f"question {i}?", "answer": f"answer {i}", "source": source, "qid": qid}
      for i, (source, qid) in enumerate([("A", "1"), ("A", "2"), ("B", "3"), ("B", "4"), ("C", "5")])]


def hits(*doc_ids):
    from _retrieval_fakes import make_chunk
    from tailorlm.retrieval.store import Hit

    return [Hit(f"{d}:{i}", 1.0, make_chunk(f"{d}:{i}", d, f"passage of {d}")) for i, d in enumerate(doc_ids)]


class FakeRag:
    """A RAG specialist that gives fixed answers in order and records each question and its max_new_tokens."""

    def __init__(self, answers):
        from tailorlm.strategies.rag import RagSettings

        self.settings, self.answers, self.asked, self.closed = RagSettings(), list(answers), [], False

    def ask(self, question):
        self.asked.append((question, self.settings.max_new_tokens))
        return self.answers[len(self.asked) - 1]

    def close(self):
        self.closed = True


def fake_rag_target(monkeypatch, answers):
    from _retrieval_fakes import word_tokenizer

    rag = FakeRag(answers)
    monkeypatch.setattr(evaluator, "load_target", lambda target, progress=True: evaluator.Loaded(
        "fake-rag", None, word_tokenizer(), lambda task, example: task.messages(example), "rag", rag=rag))
    return rag


def test_rag_answers_record_their_sources_and_citations_and_score_them_against_the_gold_document(tmp_path, monkeypatch):
    from tailorlm.retrieval.answer import NOT_FOUND, RagAnswer

    task = load_task(write_recipe(tmp_path, {"answer": "text", "metric": "exact_match"}, {"train": QA, "test": QA}))
    answers = [
        RagAnswer("q0", "A-1 says so [1].", True, hits("A-1", "B-2"), [1]),  # cites the gold document
        RagAnswer("q1", "B-2 says so [1].", True, hits("B-2", "A-2"), [1]),  # the gold was given, another cited
        RagAnswer("q2", "both [1][2]", True, hits("A-1", "A-1"), [1, 2]),  # two passages of one wrong document
        RagAnswer("q3", NOT_FOUND, False),  # refused: nothing given, nothing cited
        RagAnswer("q4", "no citation", True, hits("C-5"), []),  # the gold was given but the answer cites nothing
    ]
    rag = fake_rag_target(monkeypatch, answers)
    result = evaluate("rag-folder", task, max_new_tokens=7, citation_doc="{source}-{qid}", progress=False,
                      output=tmp_path / "eval")
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [r["sources"] for r in rows] == [["A-1", "B-2"], ["B-2", "A-2"], ["A-1", "A-1"], [], ["C-5"]]
    assert [r["cited"] for r in rows] == [["A-1"], ["B-2"], ["A-1"], [], []]
    assert [r["gold_doc"] for r in rows] == ["A-1", "A-2", "B-3", "B-4", "C-5"]
    assert [r["output"] for r in rows] == [a.text for a in answers]
    extra = json.loads((tmp_path / "eval" / "metrics.json").read_text())["extra"]
    assert (extra["citation_rate"], extra["citation_accuracy"], extra["retrieval_hit"]) == (3 / 5, 1 / 5, 3 / 5)
    assert result.extra["citation_accuracy"] == 0.2
    # each question is the rendered user message, asked with the evaluation's max_new_tokens; the settings come back
    assert rag.asked == [(task.messages(e)[-1]["content"], 7) for e in task.examples("test")]
    assert rag.settings.max_new_tokens == 256 and rag.closed

    rag = fake_rag_target(monkeypatch, answers)
    plain = evaluate("rag-folder", task, max_new_tokens=7, progress=False)
    assert plain.extra["citation_rate"] == 3 / 5 and "citation_accuracy" not in plain.extra
    assert "gold_doc" not in plain.predictions[0] and plain.predictions[2]["cited"] == ["A-1"]


def test_a_citation_doc_naming_a_missing_field_names_the_row_and_its_fields(tmp_path, monkeypatch):
    task = load_task(write_recipe(tmp_path, {"answer": "text"}, {"train": QA, "test": QA}))
    monkeypatch.setattr(evaluator, "load_target", lambda *a, **k: pytest.fail("loaded before the check"))
    with pytest.raises(ConfigError) as err:
        evaluate("rag-folder", task, citation_doc="{source}-{id}", progress=False)
    message = str(err.value)
    assert err.value.key == "eval.citation_doc" and "test.jsonl, row 1" in message and "no field 'id'" in message
    assert "fields of the row: source, qid, context, question, answer" in message
    with pytest.raises(ConfigError, match="not a format string"):
        evaluate("rag-folder", task, citation_doc="{source", progress=False)


def test_a_rag_specialist_over_a_beir_corpus_cites_by_the_corpus_ids(tmp_path, monkeypatch, chat_llama_dir):
    from _retrieval_fakes import FakeEmbedder
    from tailorlm.retrieval.index import build_index
    from tailorlm.strategies.rag import save_rag_specialist

    monkeypatch.setattr("tailorlm.retrieval.embeddings.Embedder", lambda model_ref="fake-bow", **kw: FakeEmbedder(model_ref))
    docs = [{"_id": "CDC-7", "title": "Mumps", "text": "mumps swelling glands fever"},
            {"_id": "NINDS-9", "title": "Stroke", "text": "stroke brain blood clot"},
            {"_id": "CDC-8", "title": "Flu", "text": "influenza cough season vaccine"}]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    build_index([tmp_path / "docs" / "corpus.jsonl"], tmp_path / "index", embedder=FakeEmbedder(), progress=False)
    specialist = save_rag_specialist(tmp_path / "rag", model=str(chat_llama_dir), index=tmp_path / "index",
                                     overrides={"k": 2, "mode": "dense", "min_score": -1.0})
    rows = [{"question": "stroke brain clot", "answer": "x", "source": "NINDS", "qid": "9"},
            {"question": "mumps glands", "answer": "y", "source": "CDC", "qid": "7"},
            {"question": "influenza cough", "answer": "z", "source": "CDCFlu", "qid": "8"}]  # no such _id
    task = load_task(write_recipe(tmp_path, {"answer": "text", "instruction": ""}, {"train": rows, "test": rows}))
    result = evaluate(specialist, task, max_new_tokens=3, citation_doc="{source}-{qid}", progress=False)
    assert [r["sources"][0] for r in result.predictions] == ["NINDS-9", "CDC-7", "CDC-8"]  # the BEIR _id is the doc id
    assert all(len(r["sources"]) == 2 and set(r["cited"]) <= set(r["sources"]) for r in result.predictions)
    assert result.extra["retrieval_hit"] == 2 / 3
    assert result.extra["citation_accuracy"] == sum(r["gold_doc"] in r["cited"] for r in result.predictions) / 3
    # a gold id the index does not hold is counted, so a citation_doc that misspells the corpus ids shows
    assert (result.extra["gold_not_indexed"], result.extra["gold_not_indexed_examples"]) == (1, ["CDCFlu-8"])


def test_citations_can_be_matched_on_a_field_of_the_documents(tmp_path, monkeypatch):
    """MedQuAD: the gold is the page the answer comes from (its url), whatever the corpus calls the document."""
    from _retrieval_fakes import make_chunk
    from tailorlm.retrieval.answer import RagAnswer
    from tailorlm.retrieval.store import Hit

    def page(doc, url):
        return Hit(f"{doc}:0", 1.0, make_chunk(f"{doc}:0", doc, "text", metadata={"url": url, "path": "corpus.jsonl"}))

    rows = [{"question": f"q{i}", "answer": "a", "url": f"http://x/{i}"} for i in range(3)]
    task = load_task(write_recipe(tmp_path, {"answer": "text"}, {"train": rows, "test": rows}))
    answers = [RagAnswer("q0", "[1]", True, [page("D7", "http://x/0"), page("D8", "http://x/9")], [1]),
               RagAnswer("q1", "[1][2]", True, [page("D9", "http://x/9"), page("D1", "http://x/1")], [1]),
               RagAnswer("q2", "[1][2]", True, [page("D2", "http://x/2"), page("D3", "http://x/2")], [1, 2])]
    fake_rag_target(monkeypatch, answers)
    result = evaluate("rag-folder", task, citation_doc="{url}", citation_field="url", progress=False)
    rows_out = result.predictions
    assert [r["cited"] for r in rows_out] == [["http://x/0"], ["http://x/9"], ["http://x/2"]]
    assert [r["cited_docs"] for r in rows_out] == [["D7"], ["D9"], ["D2", "D3"]]
    assert [r["source_docs"] for r in rows_out] == [["D7", "D8"], ["D9", "D1"], ["D2", "D3"]]
    assert (result.extra["citation_accuracy"], result.extra["retrieval_hit"]) == (2 / 3, 1.0)
    assert "gold_not_indexed" not in result.extra  # the index's doc ids say nothing about urls
    fake_rag_target(monkeypatch, answers)
    with pytest.raises(ConfigError, match=r"document D7: the passages have no such field.*'page'.*url, path"):
        evaluate("rag-folder", task, citation_doc="{url}", citation_field="page", progress=False)


def test_other_metrics_are_scored_on_the_same_predictions(tmp_path, monkeypatch):
    from tailorlm.retrieval.answer import RagAnswer

    task = load_task(write_recipe(tmp_path, {"answer": "span", "metric": "token_f1"}, {"train": QA, "test": QA}))
    texts = ["answer 0", "answer 1 indeed", "wrong", "nothing", "answer"]
    fake_rag_target(monkeypatch, [RagAnswer(f"q{i}", t, True) for i, t in enumerate(texts)])
    result = evaluate("rag-folder", task, metrics=["exact_match"], progress=False)
    # token F1: 1, 0.8 (precision 2/3, recall 1), 0, 0, 0.667 (precision 1, recall 1/2); exact match: only the first
    assert result.score == pytest.approx((1 + 0.8 + 0 + 0 + 2 / 3) / 5)
    exact = result.extra["metrics"]["exact_match"]
    assert exact["score"] == pytest.approx(0.2) and exact["ci_low"] <= 0.2 <= exact["ci_high"]
    with pytest.raises(ConfigError, match="eval.metrics"):
        evaluate("rag-folder", task, metrics=["macro_f1"], progress=False)
    text_task = load_task(write_recipe(tmp_path, {"answer": "text"}, {"train": QA, "test": QA}))
    with pytest.raises(ConfigError, match="cannot be scored beside another"):
        evaluate("rag-folder", text_task, metrics=["perplexity"], progress=False)
