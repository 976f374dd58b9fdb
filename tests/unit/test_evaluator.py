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
