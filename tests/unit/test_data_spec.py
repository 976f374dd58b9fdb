"""The recipe's data section: paths, validation with clear errors, given and carved splits."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tailorlm.data.examples import ChatExample, ClassificationExample, Origin
from tailorlm.data.spec import DataSpec, load_data
from tailorlm.errors import ConfigError, DataError


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows), encoding="utf-8")
    return path


def sentiment_rows(n: int) -> list[tuple[str, str]]:
    return [(f"review number {i}", "pos" if i % 2 else "neg") for i in range(n)]


def test_from_dict_resolves_relative_paths_and_keeps_settings(tmp_path):
    spec = DataSpec.from_dict(
        {"train": ["data/a.csv", "/abs/b.csv"], "eval": "data/dev.csv", "format": "text_label",
         "columns": {"text": "sentence"}, "seed": 3, "csv_quoting": "none"},
        source="recipe.yaml", base_dir=tmp_path,
    )
    assert spec.train == [str(tmp_path / "data" / "a.csv"), "/abs/b.csv"]
    assert spec.eval == [str(tmp_path / "data" / "dev.csv")] and spec.test == []
    assert (spec.format, spec.columns, spec.seed, spec.csv_quoting) == ("text_label", {"text": "sentence"}, 3, "none")
    assert spec.ratios() == {}


def test_globs_are_expanded_in_order(tmp_path):
    for name in ("b.jsonl", "a.jsonl"):
        (tmp_path / name).write_text('{"text": "x"}\n', encoding="utf-8")
    spec = DataSpec.from_dict({"train": "*.jsonl"}, source="r.yaml", base_dir=tmp_path)
    assert spec.train == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(ConfigError) as err:
        DataSpec.from_dict({"train": "a.csv", "evaluation": "b.csv"}, source="recipe.yaml", base_dir=Path("."))
    message = str(err.value)
    assert message.startswith("recipe.yaml: unknown key in the data section (key 'data.evaluation')")
    assert "expected one of train, eval, test, format" in message and "Did you mean 'eval'?" in message


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        ({"eval": "b.csv"}, "data.train", "a train path"),
        ({"train": 5}, "data.train", "a path or a list of paths"),
        ({"train": "a.csv", "seed": "zero"}, "data.seed", "an integer"),
        ({"train": "a.csv", "columns": ["text"]}, "data.columns", "a mapping"),
        ({"train": "a.csv", "format": "txt_label"}, "data.format", "one of alpaca"),
        ({"train": "a.csv", "csv_quoting": "never"}, "data.csv_quoting", "one of minimal, none, all"),
        ({"train": "a.csv", "split": {"eval": 0.6, "test": 0.6}}, "data.split", "eval 0.6 + test 0.6 = 1.2"),
        ({"train": "a.csv", "split": {"train": 0.5, "eval": 0.1}}, "data.split", "a total of 1"),
        ({"train": "a.csv", "split": {"dev": 0.1}}, "data.split.dev", "one of train, eval, test"),
        ({"train": "a.csv", "eval": "b.csv", "split": {"eval": 0.1}}, "data.split.eval", "one of the two"),
        ({"train": "nothing*.csv"}, "data.train", "at least one file"),
    ],
)
def test_bad_settings(tmp_path, data, key, expected):
    with pytest.raises(ConfigError) as err:
        DataSpec.from_dict(data, source="recipe.yaml", base_dir=tmp_path)
    assert str(err.value).startswith("recipe.yaml: ") and f"(key {key!r})" in str(err.value)
    assert expected in str(err.value)


def test_default_carves_a_stratified_tenth_for_eval(tmp_path):
    path = write_csv(tmp_path / "train.csv", sentiment_rows(40))
    splits = DataSpec(train=[str(path)]).load_splits()
    assert list(splits) == ["train", "eval"]
    assert {name: Counter(e.label for e in data.examples) for name, data in splits.items()} == {
        "train": {"pos": 18, "neg": 18}, "eval": {"pos": 2, "neg": 2}}
    assert (splits["eval"].format, splits["eval"].kind, splits["eval"].path) == ("text_label", "classification", str(path))
    assert all(e.origin.file == str(path) for e in splits["eval"].examples)


def test_given_eval_file_is_not_carved_and_test_share_is(tmp_path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(20))
    dev = write_csv(tmp_path / "dev.csv", [("fine", "pos"), ("awful", "neg")])
    splits = DataSpec(train=[str(train)], eval=[str(dev)], split={"test": 0.25}, seed=1).load_splits()
    assert {name: len(data.examples) for name, data in splits.items()} == {"train": 15, "eval": 2, "test": 5}
    assert splits["eval"].examples == [ClassificationExample("fine", "pos", Origin(str(dev), 2)),
                                       ClassificationExample("awful", "neg", Origin(str(dev), 3))]


def test_empty_split_mapping_carves_nothing(tmp_path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(4))
    assert {n: len(d.examples) for n, d in DataSpec(train=[str(train)], split={}).load_splits().items()} == {"train": 4}


def test_load_gives_the_examples_of_each_split(tmp_path):
    path = write_csv(tmp_path / "train.csv", sentiment_rows(10))
    spec = DataSpec(train=[str(path)], split={"eval": 0.2, "test": 0.2})
    examples, detailed = spec.load(), spec.load_splits()
    assert list(examples) == ["train", "eval", "test"]
    assert examples == {name: data.examples for name, data in detailed.items()}
    assert [len(examples[name]) for name in examples] == [6, 2, 2]


def test_several_files_in_one_split_are_concatenated(tmp_path):
    a = write_csv(tmp_path / "a.csv", [("x", "pos")])
    b = write_csv(tmp_path / "b.csv", [("y", "neg")])
    train = DataSpec(train=[str(a), str(b)], split={}).load_splits()["train"]
    assert [e.origin for e in train.examples] == [Origin(str(a), 2), Origin(str(b), 2)]
    assert (train.format, train.path) == ("text_label", f"{a}, {b}")


def test_splits_of_different_kinds_are_an_error(tmp_path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(4))
    dev = tmp_path / "dev.jsonl"
    dev.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        DataSpec(train=[str(train)], eval=[str(dev)]).load_splits()
    assert f"{dev}: splits hold different kinds of example (key 'data.eval')" in str(err.value)
    assert "found chat (qa); expected classification" in str(err.value)


def test_train_file_with_one_class_is_an_error(tmp_path):
    train = write_csv(tmp_path / "train.csv", [("a", "pos"), ("b", "pos"), ("c", "pos")])
    dev = write_csv(tmp_path / "dev.csv", [("d", "pos"), ("e", "neg")])
    for spec in (DataSpec(train=[str(train)]), DataSpec(train=[str(train)], eval=[str(dev)])):
        with pytest.raises(DataError) as err:
            spec.load_splits()
        assert f"{train}: only one class 'pos'" in str(err.value) and "(key 'label')" in str(err.value)


def test_too_few_rows_for_a_carved_split(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"question": "q", "answer": "a"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="the eval split is empty"):
        DataSpec(train=[str(train)]).load_splits()


def test_load_data_from_a_recipe(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "qa.jsonl").write_text(
        "".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) + "\n" for i in range(10)), encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: smollm2-135m-instruct\ndata:\n  train: data/qa.jsonl\n  split: {eval: 0.2}\n", encoding="utf-8")
    splits = load_data(recipe)
    assert {name: len(d.examples) for name, d in splits.items()} == {"train": 8, "eval": 2}
    assert splits["train"].format == "qa"
    assert isinstance(splits["eval"].examples[0], ChatExample)


def test_load_data_from_one_file_carves_eval(tmp_path):
    path = write_csv(tmp_path / "train.csv", sentiment_rows(20))
    assert {n: len(d.examples) for n, d in load_data(path).items()} == {"train": 18, "eval": 2}


def test_recipe_errors(tmp_path):
    no_data = tmp_path / "r1.yaml"
    no_data.write_text("model: x\n", encoding="utf-8")
    broken = tmp_path / "r2.yaml"
    broken.write_text("data:\n  train: [a.csv\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"r1.yaml: the recipe has no data section \(key 'data'\)"):
        load_data(no_data)
    with pytest.raises(ConfigError, match=r"r2.yaml, line \d+: malformed YAML"):
        load_data(broken)


def test_dataset_dict_split_suffix(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({
        "train": Dataset.from_dict({"text": ["a", "b", "c", "d"], "label": [0, 1, 0, 1]}),
        "validation": Dataset.from_dict({"text": ["e", "f"], "label": [1, 0]}),
    }).save_to_disk(str(tmp_path / "hf"))
    spec = DataSpec.from_dict({"train": "hf#train", "eval": "hf#validation"}, source="r.yaml", base_dir=tmp_path)
    splits = spec.load_splits()
    assert [e.text for e in splits["train"].examples] == ["a", "b", "c", "d"]
    assert splits["eval"].examples == [ClassificationExample("e", "1", Origin(f"{tmp_path / 'hf'}#validation", 1)),
                                       ClassificationExample("f", "0", Origin(f"{tmp_path / 'hf'}#validation", 2))]
