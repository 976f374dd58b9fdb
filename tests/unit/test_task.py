"""Tasks from recipes: examples of every answer form, label sets, the rendered messages, and clear errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from tailorlm.errors import ConfigError, DataError
from tailorlm.tasks.task import Task, TaskExample, load_task, task_from_dict

INSTRUCTION = "Classify the sentiment of this financial news tweet."


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_recipe(folder: Path, task: dict, data: dict) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({"task": task, "data": data}), encoding="utf-8")
    return path


@pytest.fixture
def sentiment(tmp_path) -> Path:
    """A recipe over train/valid/test CSVs with labels 0 (bearish), 1 (bullish), 2 (neutral)."""
    write_csv(tmp_path / "train.csv", [(f"train tweet {i}", str(i % 3)) for i in range(12)])
    write_csv(tmp_path / "valid.csv", [("stocks fall", "0"), ("stocks rise", "1")])
    write_csv(tmp_path / "test.csv", [("shares plunge", "0"), ("earnings beat", "1"), ("market flat", "2")])
    task = {"name": "fin", "instruction": INSTRUCTION, "answer": "label", "metric": "macro_f1",
            "labels": {"0": "bearish", "1": "bullish", "2": "neutral"}}
    return write_recipe(tmp_path, task, {"train": "train.csv", "eval": "valid.csv", "test": "test.csv"})


def test_label_task_reads_splits_with_ids_references_and_origin(sentiment):
    task = load_task(sentiment)
    assert (task.name, task.answer, task.metric) == ("fin", "label", "macro_f1")
    assert task.label_words() == ["bearish", "bullish", "neutral"]
    test = task.examples("test")
    assert [(e.id, e.input, e.references) for e in test] == [
        ("test-0", "shares plunge", ["0"]), ("test-1", "earnings beat", ["1"]), ("test-2", "market flat", ["2"])]
    assert test[1].meta["origin"].endswith("test.csv, row 3")
    assert len(task.examples("train")) == 12 and len(task.examples("eval")) == 2
    assert task.examples("test") is test  # read once


def test_messages_render_system_shots_and_the_answer_choices(sentiment):
    task = load_task(sentiment, overrides=["task.system=You are a finance analyst."])
    example, shot = task.examples("test")[0], task.examples("eval")[1]
    user = f"{INSTRUCTION}\n\nshares plunge\n\nAnswer with one of: bearish, bullish, neutral."
    assert task.user_text(example) == user
    assert task.messages(example) == [{"role": "system", "content": "You are a finance analyst."},
                                      {"role": "user", "content": user}]
    assert task.messages(example, [shot]) == [
        {"role": "system", "content": "You are a finance analyst."},
        {"role": "user", "content": f"{INSTRUCTION}\n\nstocks rise\n\nAnswer with one of: bearish, bullish, neutral."},
        {"role": "assistant", "content": "bullish"},
        {"role": "user", "content": user},
    ]
    assert task.answer_text(shot) == "bullish"


def test_label_set_defaults_to_the_sorted_train_labels(tmp_path):
    write_csv(tmp_path / "train.csv", [("a", "10"), ("b", "2"), ("c", "10"), ("d", "2")])
    write_csv(tmp_path / "test.csv", [("e", "2")])
    task = load_task(write_recipe(tmp_path, {"answer": "label", "metric": "accuracy"},
                                  {"train": "train.csv", "test": "test.csv", "split": {}}))
    assert task.label_map() == {"2": "2", "10": "10"}  # numeric labels sort as numbers
    assert task.name == "recipe"
    assert task.user_text(task.examples("test")[0]) == "e\n\nAnswer with one of: 2, 10."


def test_a_label_list_means_value_equals_word(tmp_path):
    write_csv(tmp_path / "train.csv", [("a", "pos"), ("b", "neg"), ("c", "pos"), ("d", "neg")])
    task = load_task(write_recipe(tmp_path, {"answer": "label", "labels": ["pos", "neg"]}, {"train": "train.csv"}))
    assert task.labels == {"pos": "pos", "neg": "neg"} and task.metric == "accuracy"


def test_a_test_label_outside_the_label_set_names_file_and_row(sentiment, tmp_path):
    write_csv(tmp_path / "test.csv", [("shares plunge", "0"), ("what now", "7")])
    task = load_task(sentiment)
    with pytest.raises(DataError) as err:
        task.examples("test")
    message = str(err.value)
    assert "label is not in the label set" in message and "test.csv, row 3" in message and "'7'" in message
    assert "0, 1, 2" in message


def test_a_test_label_unseen_in_train_errors_when_labels_come_from_train(tmp_path):
    write_csv(tmp_path / "train.csv", [("a", "pos"), ("b", "neg"), ("c", "pos"), ("d", "neg")])
    write_csv(tmp_path / "test.csv", [("e", "pos"), ("f", "mixed")])
    task = load_task(write_recipe(tmp_path, {"answer": "label"}, {"train": "train.csv", "test": "test.csv", "split": {}}))
    with pytest.raises(DataError, match=r"test\.csv, row 3.*found 'mixed'; expected one of neg, pos"):
        task.examples("test")


def test_metric_that_does_not_fit_the_answer_form_is_refused(sentiment):
    with pytest.raises(ConfigError) as err:
        load_task(sentiment, overrides=["task.metric=bleu"])
    assert "task.metric" in str(err.value) and "accuracy" in str(err.value) and "macro_f1" in str(err.value)


@pytest.mark.parametrize("task, key, found", [
    ({"answer": "label", "metrik": "accuracy"}, "task.metrik", "metric"),
    ({"answer": "choice"}, "task.answer", "one of label, text, number, code, span"),
    ({"answer": "text", "labels": ["a", "b"]}, "task.labels", "answer: label"),
    ({"answer": "label", "labels": {"0": "up", "1": "up"}}, "task.labels", "two labels share a word"),
])
def test_bad_task_settings_name_the_key(tmp_path, task, key, found):
    write_csv(tmp_path / "train.csv", [("a", "0"), ("b", "1")])
    with pytest.raises(ConfigError) as err:
        task_from_dict({"task": task, "data": {"train": "train.csv"}}, source="r.yaml", base_dir=tmp_path)
    assert f"(key {key!r})" in str(err.value) and found in str(err.value)


def test_missing_task_section_and_missing_split_are_clear(tmp_path, sentiment):
    with pytest.raises(ConfigError, match="no task section"):
        task_from_dict({"data": {"train": "x.csv"}}, source="r.yaml", base_dir=tmp_path)
    write_csv(tmp_path / "only.csv", [(f"t{i}", str(i % 2)) for i in range(10)])
    task = load_task(write_recipe(tmp_path, {"answer": "label"}, {"train": "only.csv"}))
    with pytest.raises(DataError, match=r"no test split.*data\.split: \{test: 0\.2\}"):
        task.examples("test")


def test_carved_test_split_comes_from_train_like_tailor_train(tmp_path):
    write_csv(tmp_path / "train.csv", [(f"tweet {i}", str(i % 2)) for i in range(20)])
    task = load_task(write_recipe(tmp_path, {"answer": "label"}, {"train": "train.csv", "split": {"eval": 0.2, "test": 0.2}}))
    sizes = {split: len(task.examples(split)) for split in ("train", "eval", "test")}
    assert sizes == {"train": 12, "eval": 4, "test": 4}
    inputs = [{e.input for e in task.examples(s)} for s in ("train", "eval", "test")]
    assert not (inputs[0] & inputs[1] or inputs[0] & inputs[2] or inputs[1] & inputs[2])


def test_qa_with_context_keeps_the_passage_apart(tmp_path):
    rows = [{"context": "Paris is in France.", "question": "Where is Paris?", "answer": "France"},
            {"context": "Rome is in Italy.", "question": "Where is Rome?", "answer": "Italy"}]
    write_jsonl(tmp_path / "qa.jsonl", rows)
    task = load_task(write_recipe(tmp_path, {"answer": "span", "metric": "exact_match", "instruction": "Answer briefly."},
                                  {"train": "qa.jsonl", "test": "qa.jsonl", "split": {}}))
    example = task.examples("test")[0]
    assert (example.input, example.context, example.references) == ("Where is Paris?", "Paris is in France.", ["France"])
    assert task.user_text(example) == "Answer briefly.\n\nContext: Paris is in France.\n\nQuestion: Where is Paris?"
    templated = dataclasses.replace(task, input_template="Q: {input}\nPassage: {context}")
    assert templated.user_text(example) == "Answer briefly.\n\nQ: Where is Paris?\nPassage: Paris is in France."


def test_squad_rows_give_every_answer_as_a_reference(tmp_path):
    rows = [{"context": "The cat sat on the mat.", "question": "Where did the cat sit?",
             "answers": {"text": ["on the mat", "the mat", "on the mat"], "answer_start": [8, 11, 8]}}]
    write_jsonl(tmp_path / "squad.jsonl", rows)
    task = load_task(write_recipe(tmp_path, {"answer": "span", "metric": "token_f1"},
                                  {"train": "squad.jsonl", "test": "squad.jsonl", "split": {}}))
    example = task.examples("test")[0]
    assert example.references == ["on the mat", "the mat"] and example.context == "The cat sat on the mat."


def test_chat_rows_give_the_last_user_turn_and_the_last_answer(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a colour."},
                          {"role": "assistant", "content": "Blue."}]}]
    write_jsonl(tmp_path / "chat.jsonl", rows)
    task = load_task(write_recipe(tmp_path, {"answer": "text", "metric": "rougeL"},
                                  {"train": "chat.jsonl", "test": "chat.jsonl", "split": {}}))
    example = task.examples("test")[0]
    assert (example.input, example.references) == ("Name a colour.", ["Blue."])
    assert task.messages(example) == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                                      {"role": "assistant", "content": "Hello!"},
                                      {"role": "user", "content": "Name a colour."}]


def test_number_answers_keep_the_number_as_reference_and_the_solution_for_training(tmp_path):
    write_jsonl(tmp_path / "gsm.jsonl", [{"question": "What is 40 + 2?", "answer": "40 + 2 = 42\n#### 42"},
                                         {"question": "What is 1,000 + 234?", "answer": "#### 1,234"}])
    task = load_task(write_recipe(tmp_path, {"answer": "number"}, {"train": "gsm.jsonl", "test": "gsm.jsonl", "split": {}}))
    first, second = task.examples("test")
    assert task.metric == "numeric_accuracy"
    assert (first.input, first.references, second.references) == ("What is 40 + 2?", ["42"], ["1234"])
    assert task.answer_text(first) == "40 + 2 = 42\n#### 42"


def test_humaneval_rows_become_code_prompts_with_their_test_program(tmp_path):
    row = {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n    \"\"\"Add.\"\"\"\n",
           "canonical_solution": "    return a + b\n", "entry_point": "add",
           "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}
    write_jsonl(tmp_path / "he.jsonl", [row])
    task = load_task(write_recipe(tmp_path, {"answer": "code"}, {"train": "he.jsonl", "test": "he.jsonl", "split": {}}))
    example = task.examples("test")[0]
    assert (task.metric, example.input, example.references) == ("pass_at_1", row["prompt"], [])
    assert example.tests == row["test"] + "\ncheck(add)\n"
    assert example.meta["entry_point"] == "add"
    assert task.answer_text(example) == f"```python\n{row['prompt']}{row['canonical_solution']}```"


def test_shipped_humaneval_slice_reads_as_code_examples():
    root = Path(__file__).resolve().parents[2]
    data = {"train": str(root / "examples/data/code_generation/humaneval/HumanEval.jsonl.gz"), "split": {"test": 0.5}}
    task = task_from_dict({"task": {"answer": "code"}, "data": data}, source="he.yaml", base_dir=root)
    example = task.examples("test")[0]
    assert example.tests and example.tests.rstrip().endswith(f"check({example.meta['entry_point']})")
    assert f"def {example.meta['entry_point']}(" in example.input


def test_a_label_task_refuses_chat_rows(tmp_path):
    write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}, {"question": "r", "answer": "b"}])
    task = load_task(write_recipe(tmp_path, {"answer": "label"}, {"train": "qa.jsonl"}))
    with pytest.raises(DataError, match=r"qa\.jsonl, row 1.*text and label rows"):
        task.examples("train")


def test_task_example_and_task_are_plain_dataclasses(sentiment):
    task = load_task(sentiment)
    copy = dataclasses.replace(task, instruction="Other.")
    assert isinstance(copy, Task) and copy.examples("test") == task.examples("test")
    assert TaskExample("x-0", "text", ["a"]).meta == {}


def test_a_template_gives_a_list_of_passages_one_a_paragraph(tmp_path):
    """PubMedQA: objects keyed by id, the question as text, the abstract's CONTEXTS list filled into the template."""
    rows = {"101": {"QUESTION": "Does aspirin help?", "CONTEXTS": ["Background one.", "Results two."],
                    "final_decision": "yes"},
            "102": {"QUESTION": "Is it safe?", "CONTEXTS": ["Only one part."], "final_decision": "maybe"}}
    (tmp_path / "pqa.json").write_text(json.dumps(rows), encoding="utf-8")
    task = load_task(write_recipe(
        tmp_path, {"answer": "label", "labels": ["yes", "no", "maybe"], "instruction": "Answer from the abstract.",
                   "input_template": "Abstract:\n{CONTEXTS}\n\nQuestion: {input}"},
        {"train": "pqa.json", "test": "pqa.json", "split": {}, "format": "text_label",
         "columns": {"text": "QUESTION", "label": "final_decision"}}))
    first, second = task.examples("test")
    assert (first.references, second.references) == (["yes"], ["maybe"])
    assert task.user_text(first) == ("Answer from the abstract.\n\nAbstract:\nBackground one.\n\nResults two.\n\n"
                                     "Question: Does aspirin help?\n\nAnswer with one of: yes, no, maybe.")
    assert "Abstract:\nOnly one part.\n\nQuestion: Is it safe?" in task.user_text(second)
