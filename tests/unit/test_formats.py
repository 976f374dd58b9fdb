"""Converting records into canonical examples: every format, detection, column mapping and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tailorlm.data.examples import ChatExample, ClassificationExample, Origin, PreferenceExample, TextExample
from tailorlm.data.formats import FORMATS, LoadedData, convert, detect_format, load_examples
from tailorlm.data.loaders import Record
from tailorlm.errors import ConfigError, DataError


def recs(*rows: dict, file: str = "d.jsonl") -> list[Record]:
    """Records numbered from row 1, as if read from `file`."""
    return [Record(fields, Origin(file, n)) for n, fields in enumerate(rows, start=1)]


def chat(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in turns]


def write_jsonl(path: Path, *rows: dict) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- one test per format ------------------------------------------------------------------------------------


def test_alpaca_joins_instruction_and_input_and_keeps_other_fields():
    records = recs(
        {"instruction": "Translate.", "input": "Bonjour", "output": "Hello", "id": 7},
        {"instruction": "Say hi.", "input": "", "output": "Hi", "system": "Be brief."},
    )
    assert convert(records, format="alpaca", where="d.jsonl") == [
        ChatExample(chat(("user", "Translate.\n\nBonjour"), ("assistant", "Hello")), Origin("d.jsonl", 1), {"id": 7}),
        ChatExample(chat(("system", "Be brief."), ("user", "Say hi."), ("assistant", "Hi")), Origin("d.jsonl", 2), {}),
    ]


def test_sharegpt_maps_roles():
    records = recs({"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                                      {"from": "gpt", "value": "A"}, {"from": "human", "value": "Q2"},
                                      {"from": "gpt", "value": "A2"}]})
    assert convert(records, format="sharegpt", where="d") == [ChatExample(
        chat(("system", "S"), ("user", "Q"), ("assistant", "A"), ("user", "Q2"), ("assistant", "A2")), Origin("d.jsonl", 1))]


def test_openai_messages_with_text_parts():
    records = recs({"messages": [{"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}]})
    assert convert(records, format="messages", where="d") == [
        ChatExample(chat(("user", "Hi"), ("assistant", "Hello")), Origin("d.jsonl", 1))]


def test_prompt_completion():
    assert convert(recs({"prompt": "2+2=", "completion": "4"}), format="prompt_completion", where="d") == [
        ChatExample(chat(("user", "2+2="), ("assistant", "4")), Origin("d.jsonl", 1))]


def test_qa_with_and_without_context_keeps_the_parts_in_meta():
    records = recs({"question": "Why?", "answer": "Because.", "context": "Ctx."}, {"question": "How many?", "answer": 4})
    assert convert(records, format="qa", where="d") == [
        ChatExample(chat(("user", "Ctx.\n\nWhy?"), ("assistant", "Because.")), Origin("d.jsonl", 1),
                    {"context": "Ctx.", "question": "Why?", "answer": "Because."}),
        ChatExample(chat(("user", "How many?"), ("assistant", "4")), Origin("d.jsonl", 2),
                    {"context": "", "question": "How many?", "answer": "4"}),
    ]


def test_source_target_with_several_references():
    records = recs({"source": "Long text.", "target": "Short."}, {"source": ["One.", "Two."], "target": ["Ref A.", "Ref B."]})
    assert convert(records, format="source_target", where="d") == [
        ChatExample(chat(("user", "Long text."), ("assistant", "Short.")), Origin("d.jsonl", 1),
                    {"source": "Long text.", "target": "Short."}),
        ChatExample(chat(("user", "One. Two."), ("assistant", "Ref A.")), Origin("d.jsonl", 2),
                    {"source": "One. Two.", "target": "Ref A.", "references": ["Ref A.", "Ref B."]}),
    ]


def test_text_label_stringifies_labels():
    records = recs({"text": "a", "label": 0}, {"text": "b", "label": True}, {"text": "c", "label": " bullish "},
                   {"text": "d", "label": 2.0}, file="d.csv")
    assert convert(records, format="text_label", where="d.csv") == [
        ClassificationExample("a", "0", Origin("d.csv", 1)), ClassificationExample("b", "true", Origin("d.csv", 2)),
        ClassificationExample("c", "bullish", Origin("d.csv", 3)), ClassificationExample("d", "2", Origin("d.csv", 4)),
    ]


def test_text():
    assert convert(recs({"text": "Once upon a time.", "source": "book"}), format="text", where="d") == [
        TextExample("Once upon a time.", Origin("d.jsonl", 1), {"source": "book"})]


def test_preference_with_and_without_prompt():
    records = recs({"prompt": "P", "chosen": "good", "rejected": "bad"}, {"chosen": "H: x A: good", "rejected": "H: x A: bad"})
    assert convert(records, format="preference", where="d") == [
        PreferenceExample("P", "good", "bad", Origin("d.jsonl", 1)),
        PreferenceExample("", "H: x A: good", "H: x A: bad", Origin("d.jsonl", 2)),
    ]


def test_squad_takes_the_first_answer_and_keeps_all_in_meta():
    records = recs(
        {"id": "q1", "title": "T", "context": "Paris is in France.", "question": "Where?",
         "answers": [{"text": "France", "answer_start": 12}, {"text": "in France", "answer_start": 9}]},
        {"context": "C.", "question": "Q?", "answers": {"text": ["A"], "answer_start": [0]}},  # Hugging Face layout
    )
    assert convert(records, format="squad", where="d") == [
        ChatExample(chat(("user", "Paris is in France.\n\nWhere?"), ("assistant", "France")), Origin("d.jsonl", 1),
                    {"id": "q1", "title": "T", "context": "Paris is in France.", "question": "Where?",
                     "answers": ["France", "in France"], "answer_start": [12, 9]}),
        ChatExample(chat(("user", "C.\n\nQ?"), ("assistant", "A")), Origin("d.jsonl", 2),
                    {"context": "C.", "question": "Q?", "answers": ["A"], "answer_start": [0]}),
    ]


# --- detection and column mapping ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["instruction", "input", "output"], "alpaca"),
        (["conversations"], "sharegpt"),
        (["messages"], "messages"),
        (["prompt", "completion"], "prompt_completion"),
        (["question", "answer"], "qa"),
        (["qid", "question", "answer", "focus"], "qa"),
        (["context", "question", "answer"], "qa"),
        (["source", "target"], "source_target"),
        (["text", "label"], "text_label"),
        (["sentence", "label"], "text_label"),
        (["reviews", "sentiment"], "text_label"),
        (["Text", "Label"], "text_label"),
        (["index", "answer", "text", "slice"], "text_label"),  # LegalBench train.tsv: the label is `answer`
        (["label", "answer", "text"], "text_label"),
        (["_id", "title", "text"], "text"),
        (["chosen", "rejected"], "preference"),
        (["prompt", "chosen", "rejected"], "preference"),
        (["id", "title", "context", "question", "answers"], "squad"),
        (["instruction", "context", "response"], "alpaca"),
    ],
)
def test_detect_format(columns, expected):
    assert detect_format(columns, where="d") == expected


def test_detect_format_failure_lists_columns_and_formats():
    with pytest.raises(DataError) as err:
        detect_format(["task_id", "prompt", "test"], where="HumanEval.jsonl")
    message = str(err.value)
    assert message.startswith("HumanEval.jsonl: cannot tell the data format")
    assert "found columns task_id, prompt, test" in message
    assert "text_label (text, label)" in message and "alpaca (instruction, output; optional input, system)" in message


def test_aliases_and_case_are_used_when_converting():
    assert convert(recs({"Sentence": "nice", "Sentiment": 1}), where="d") == [
        ClassificationExample("nice", "1", Origin("d.jsonl", 1))]


def test_a_label_column_wins_over_an_answer_column():
    assert convert(recs({"text": "t", "label": "Yes", "answer": "No"}), where="d")[0].label == "Yes"
    assert convert(recs({"index": 0, "answer": "No", "text": "t"}), where="d")[0].label == "No"


def test_column_mapping_and_dotted_paths(tmp_path):
    path = write_jsonl(tmp_path / "seed.jsonl", {"instruction": "Add.", "instances": [{"input": "1 1", "output": "2"}], "id": "s0"})
    data = load_examples(path, columns={"input": "instances.0.input", "output": "instances.0.output"})
    assert data == LoadedData([ChatExample(chat(("user", "Add.\n\n1 1"), ("assistant", "2")), Origin(str(path), 1), {"id": "s0"})],
                              "alpaca", str(path), "chat")


def test_mapping_detects_the_format(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("sentence,polarity\ngood,pos\nbad,neg\n", encoding="utf-8")
    data = load_examples(path, columns={"label": "polarity"})
    assert (data.format, data.kind) == ("text_label", "classification")
    assert data.examples == [ClassificationExample("good", "pos", Origin(str(path), 2)),
                             ClassificationExample("bad", "neg", Origin(str(path), 3))]


def test_load_examples_from_a_beir_folder(tmp_path):
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "title": "Flu", "text": "Flu is a virus."}\n', encoding="utf-8")
    data = load_examples(tmp_path)
    assert (data.format, data.kind) == ("text", "text")
    assert data.examples == [TextExample("Flu is a virus.", Origin(str(tmp_path / "corpus.jsonl"), 1), {"_id": "d1", "title": "Flu"})]


def test_every_format_has_a_kind():
    assert {f.kind for f in FORMATS.values()} == {"text", "chat", "classification", "preference"}


# --- bad input ----------------------------------------------------------------------------------------------


def test_unknown_format_name_lists_the_formats():
    with pytest.raises(ConfigError) as err:
        convert(recs({"text": "a"}), format="alpacca", where="d.jsonl")
    message = str(err.value)
    assert "d.jsonl: unknown data format (key 'format'): found 'alpacca'" in message
    assert "alpaca, sharegpt, messages" in message and "Did you mean 'alpaca'" in message


def test_misspelled_column_suggests_the_closest():
    with pytest.raises(DataError) as err:
        convert(recs({"text": "a", "lable": 1}, file="train.csv"), format="text_label", where="train.csv")
    message = str(err.value)
    assert "train.csv, row 1: missing column for the text_label format (key 'label')" in message
    assert "found columns text, lable" in message and "expected a column 'label'" in message
    assert "Did you mean 'lable'?" in message


def test_mapped_column_missing_from_a_later_row():
    records = recs({"sentence": "a", "polarity": 1}, {"sentence": "b", "polarity_": 0})
    with pytest.raises(DataError) as err:
        convert(records, format="text_label", columns={"text": "sentence", "label": "polarity"}, where="d")
    assert "d.jsonl, row 2: missing column" in str(err.value) and "(key 'polarity')" in str(err.value)
    assert "Did you mean 'polarity_'" in str(err.value)


def test_unknown_canonical_name_in_the_mapping():
    with pytest.raises(ConfigError) as err:
        convert(recs({"text": "a", "label": 1}), format="text_label", columns={"lable": "label"}, where="recipe.yaml")
    assert "(key 'columns.lable')" in str(err.value) and "expected one of text, label" in str(err.value)


@pytest.mark.parametrize(
    ("fields", "key", "found", "expected"),
    [
        ({"messages": "hi"}, "messages", "the string 'hi'", "a non-empty list of messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "the number 5", "a string"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content", "null", "a string"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "'tool'", "one of system, user, assistant"),
        ({"messages": ["hi"]}, "messages[0]", "the string 'hi'", "an object with a role"),
    ],
)
def test_bad_messages(fields, key, found, expected):
    with pytest.raises(DataError) as err:
        convert(recs({"messages": [{"role": "user", "content": "ok"}]}, fields), format="messages", where="d")
    message = str(err.value)
    assert message.startswith("d.jsonl, row 2:") and f"(key {key!r})" in message
    assert f"found {found}" in message and f"expected {expected}" in message


def test_bad_sharegpt_role():
    with pytest.raises(DataError) as err:
        convert(recs({"conversations": [{"from": "bot", "value": "x"}]}), format="sharegpt", where="d")
    assert "(key 'conversations[0].from')" in str(err.value) and "human, user, gpt" in str(err.value)


@pytest.mark.parametrize(("label", "found"), [(None, "null"), ("", "an empty string"), (["a", "b"], "a list of 2 items")])
def test_missing_or_wrong_label(label, found):
    with pytest.raises(DataError) as err:
        convert(recs({"text": "ok", "label": "1"}, {"text": "a", "label": label}, file="s.csv"), format="text_label", where="s.csv")
    message = str(err.value)
    assert message.startswith("s.csv, row 2: wrong type (key 'label')")
    assert f"found {found}" in message and "expected one label" in message


def test_text_that_is_not_a_string():
    with pytest.raises(DataError) as err:
        convert(recs({"text": {"a": 1}}), format="text", where="d")
    assert "d.jsonl, row 1: wrong type (key 'text'): found an object with keys a; expected a string" in str(err.value)


def test_squad_without_answers():
    with pytest.raises(DataError) as err:
        convert(recs({"context": "c", "question": "q", "answers": []}), format="squad", where="d")
    assert "d.jsonl, row 1: no usable answer (key 'answers')" in str(err.value)


def test_load_examples_with_no_rows(tmp_path):
    path = tmp_path / "header_only.csv"
    path.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_examples(path)
    assert f"{path}: no rows" in str(err.value) and "expected at least one row" in str(err.value)
