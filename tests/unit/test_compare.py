"""`tailor compare` orchestration with fake fit and evaluate: resume, failure isolation, best, leaderboard fields."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tailorlm.errors import ConfigError
from tailorlm.evaluation import compare as cmp
from tailorlm.evaluation import fitting

ROWS = [("shares fall after weak guidance", 0), ("profit beats estimates, stock jumps", 1),
        ("company schedules earnings call", 2), ("analyst cuts target", 0), ("record revenue", 1),
        ("board meets tuesday", 2)] * 4
# Fake test scores (and CIs) of each strategy; lora is best, few_shot within its CI and cheaper.
SCORES = {"zero_shot": (0.40, 0.30, 0.50), "few_shot": (0.63, 0.55, 0.72), "lora": (0.66, 0.58, 0.74),
          "p_tuning": (0.50, 0.41, 0.60)}


def write_recipe(folder: Path, **extra) -> Path:
    lines = ["text,label"] + [f'"{t}",{y}' for t, y in ROWS]
    (folder / "data.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    recipe = {
        "task": {"name": "toy-sentiment", "instruction": "Classify the sentiment.", "answer": "label",
                 "labels": {"0": "bearish", "1": "bullish", "2": "neutral"}, "metric": "macro_f1"},
        "data": {"train": "data.csv", "split": {"eval": 0.25, "test": 0.25}},
        "base_models": ["tiny"],
        "strategies": {"zero_shot": {}, "few_shot": {"k": 2}, "lora": {"train": {"max_steps": 3}}, "p_tuning": {}},
        "seed": 0,
        **extra,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


class Fakes:
    """Fake fit / evaluate that record their calls; `fail` names entries whose fit raises, `real` strategies fitted
    for real (fitting.fit), and with `chat_manifests` a trained entry's specialist is a manifest with a chat
    tokenizer, as a RAG specialist can wrap."""

    def __init__(self, monkeypatch, fail=(), real=(), chat_manifests=False, extra=None):
        self.fitted: list[str] = []
        self.calls: list[dict] = []
        self.fail, self.real, self.chat_manifests = set(fail), set(real), chat_manifests
        self.extra = extra or {}
        monkeypatch.setattr(cmp, "fit", self.fit)
        monkeypatch.setattr(cmp, "evaluate_specialist", self.evaluate)
        monkeypatch.setattr(cmp, "is_encoder", lambda model: False)
        monkeypatch.setattr(cmp, "is_seq2seq", lambda model: False)
        monkeypatch.setattr(cmp, "full_is_affordable", lambda model: (True, ""))
        monkeypatch.setattr(cmp, "check_inputs", lambda plan, console: None)  # the base models here are fakes

    def fit(self, plan, model, strategy, settings, folder, *, console, name=None, wraps=None):
        self.fitted.append(name)
        self.calls.append({"name": name, "strategy": strategy, "settings": settings, "wraps": wraps})
        if name in self.fail:
            raise RuntimeError(f"{name} exploded")
        if strategy in self.real:
            return fitting.fit(plan, model, strategy, settings, folder, console=console, name=name, wraps=wraps)
        specialist = folder / "specialist"
        specialist.mkdir(parents=True, exist_ok=True)
        trained = strategy in cmp.TRAINED
        if trained and self.chat_manifests:
            write_chat_specialist(specialist, strategy, settings)
        else:
            (specialist / "specialist.json").write_text(json.dumps({"strategy": strategy}), encoding="utf-8")
        return specialist, ({"train_seconds": 100.0, "steps": 3, "trainable_parameters": 4096,
                             "loss_curve": [[1, 2.0], [2, 1.5], [3, 1.1]]} if trained else {"trainable_parameters": 0})

    def evaluate(self, plan, specialist, output):
        strategy = json.loads((specialist / "specialist.json").read_text())["strategy"]
        score, low, high = SCORES.get(strategy, (0.1, 0.0, 0.2))
        test = plan.task.examples("test")
        rows = [{"id": ex.id, "input": ex.input, "reference": ex.references[0],
                 "prediction": ex.references[0] if strategy == "lora" or i % 2 else "0"} for i, ex in enumerate(test)]
        output.mkdir(parents=True, exist_ok=True)
        (output / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return SimpleNamespace(metric="macro_f1", score=score, ci=(low, high), examples=len(test), scoring="choice",
                               seconds_per_example=0.01, tokens_per_second=50.0, extra=self.extra.get(strategy, {}))


def write_chat_specialist(folder: Path, strategy: str, settings: dict) -> None:
    """A stand-in for a trained sft specialist: its manifest and a tokenizer with a chat template (no weights)."""
    from conftest import build_tiny_tokenizer
    from tailorlm.data.templates import CHATML_TEMPLATE
    from tailorlm.strategies.base import Manifest

    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(folder)
    manifest = Manifest(base_model="tiny", base_model_path="tiny", strategy=strategy, objective="sft",
                        weights="adapter", config={"settings": settings})
    (folder / "specialist.json").write_text(json.dumps(manifest.to_dict()), encoding="utf-8")


def test_compare_writes_leaderboard_report_and_best(tmp_path, monkeypatch):
    fakes = Fakes(monkeypatch)
    recipe = write_recipe(tmp_path)
    board = cmp.compare(recipe, output=tmp_path / "out")
    test_size = len(cmp.load_plan(recipe, output=tmp_path / "out").task.examples("test"))
    assert fakes.fitted == ["zero_shot", "few_shot", "lora", "p_tuning"]
    saved = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
    assert [e["strategy"] for e in saved["entries"]] == ["zero_shot", "few_shot", "lora", "p_tuning"]
    lora = board.entry("tiny", "lora")
    assert lora["score"] == 0.66 and lora["ci"] == [0.58, 0.74] and lora["examples"] == saved["examples"] == test_size
    assert lora["train_seconds"] == 100.0 and lora["trainable_parameters"] == 4096
    assert lora["seconds_per_example"] == 0.01 and lora["peak_memory_mb"] > 0 and lora["disk_mb"] > 0
    assert lora["specialist"] == "tiny/lora/specialist"
    # the fake lora predicts every reference: F1 1 for each class of the test split
    assert {w: c["f1"] for w, c in lora["per_class"].items() if c["support"]} == {
        w: 1.0 for w, c in lora["per_class"].items() if c["support"]} != {}
    assert saved["best"]["strategy"] == "lora" and saved["recommendation"]["cheaper"]["strategy"] == "few_shot"
    assert json.loads((tmp_path / "out" / "best" / "specialist.json").read_text()) == {"strategy": "lora"}
    assert saved["metric"] == "macro_f1" and saved["higher_is_better"] is True and saved["labels"]["1"] == "bullish"
    assert saved["disagreements"] and all(len(set(d["predictions"].values())) > 1 for d in saved["disagreements"])
    page = (tmp_path / "out" / "report.html").read_text()
    assert 'id="leaderboard"' in page and "few_shot scores 0.630" in page


def test_a_failing_strategy_is_recorded_and_the_others_go_on(tmp_path, monkeypatch):
    Fakes(monkeypatch, fail={"few_shot"})
    board = cmp.compare(write_recipe(tmp_path), output=tmp_path / "out")
    failed = board.entry("tiny", "few_shot")
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: few_shot exploded"
    assert "Traceback" in (tmp_path / "out" / "tiny" / "few_shot" / "error.txt").read_text()
    assert [e["status"] for e in board.entries] == ["ok", "failed", "ok", "ok"]
    # without few_shot nothing cheaper lies inside lora's CI
    assert board.best["strategy"] == "lora" and board.data["recommendation"]["cheaper"] is None


def test_a_rerun_reuses_finished_strategies_and_retries_failed_ones(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path)
    Fakes(monkeypatch, fail={"p_tuning"})
    cmp.compare(recipe, output=tmp_path / "out")
    again = Fakes(monkeypatch)
    board = cmp.compare(recipe, output=tmp_path / "out")
    assert again.fitted == ["p_tuning"]
    assert all(e["status"] == "ok" for e in board.entries)
    # a changed setting runs that strategy again, and only it
    third = Fakes(monkeypatch)
    cmp.compare(recipe, output=tmp_path / "out", overrides=["strategies.lora.train.max_steps=5"])
    assert third.fitted == ["lora"]


def test_interrupting_a_strategy_leaves_no_result(tmp_path, monkeypatch):
    fakes = Fakes(monkeypatch)
    evaluate = fakes.evaluate

    def interrupted_at_few_shot(plan, specialist, output):
        if json.loads((specialist / "specialist.json").read_text())["strategy"] == "few_shot":
            raise KeyboardInterrupt
        return evaluate(plan, specialist, output)

    monkeypatch.setattr(cmp, "evaluate_specialist", interrupted_at_few_shot)
    recipe = write_recipe(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cmp.compare(recipe, output=tmp_path / "out")
    assert (tmp_path / "out" / "tiny" / "zero_shot" / "result.json").is_file()
    assert not (tmp_path / "out" / "tiny" / "few_shot" / "result.json").exists()
    assert fakes.fitted == ["zero_shot", "few_shot"]
    again = Fakes(monkeypatch)
    cmp.compare(recipe, output=tmp_path / "out")
    assert again.fitted == ["few_shot", "lora", "p_tuning"]  # zero_shot's result is reused


def test_unknown_strategy_lists_the_ones_that_exist(tmp_path, monkeypatch):
    Fakes(monkeypatch)
    recipe = write_recipe(tmp_path, strategies={"lroa": {}})
    with pytest.raises(ConfigError) as err:
        cmp.compare(recipe, output=tmp_path / "out")
    message = str(err.value)
    assert "strategies.lroa" in message and "Did you mean 'lora'?" in message
    assert all(name in message for name in cmp.STRATEGIES)


def test_default_strategies_leave_out_rag_without_corpus_and_unaffordable_full(tmp_path, monkeypatch):
    Fakes(monkeypatch)
    recipe = write_recipe(tmp_path)
    data = yaml.safe_load(recipe.read_text())
    del data["strategies"]
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    plan = cmp.load_plan(recipe, output=tmp_path / "out")
    names, notes = cmp.strategies_for("tiny", plan)
    assert list(names) == ["zero_shot", "few_shot", "prompt_search", "prompt_tuning", "p_tuning", "lora", "full"]
    monkeypatch.setattr(cmp, "full_is_affordable", lambda model: (False, "too big"))
    plan.corpus = ["docs/"]
    names, notes = cmp.strategies_for("tiny", plan)
    assert "full" not in names and "rag" in names and notes == ["full fine-tuning of tiny left out: too big"]
    monkeypatch.setattr(cmp, "is_encoder", lambda model: True)
    names, _ = cmp.strategies_for("tiny", plan)
    assert list(names) == ["prompt_tuning", "p_tuning", "lora"]


def test_full_is_affordable_follows_the_16_bytes_per_parameter_rule(monkeypatch, tiny_llama_dir):
    import os

    ok, why = cmp.full_is_affordable(str(tiny_llama_dir))
    assert ok and why == ""
    monkeypatch.setattr(os, "sysconf", lambda name: 1 if name == "SC_PAGE_SIZE" else 1000)
    ok, why = cmp.full_is_affordable(str(tiny_llama_dir))
    assert not ok and "more than half" in why


def test_quick_merges_its_limit_and_training_settings(tmp_path, monkeypatch):
    Fakes(monkeypatch)
    recipe = write_recipe(tmp_path, eval={"limit": None, "batch_size": 4},
                          quick={"limit": 5, "train": {"max_steps": 2}})
    plan = cmp.load_plan(recipe, output=tmp_path / "out", quick=True)
    assert plan.eval == {"limit": 5, "batch_size": 4} and plan.quick["train"] == {"max_steps": 2}
    assert cmp.load_plan(recipe, output=tmp_path / "out").eval["limit"] is None
    with pytest.raises(ConfigError, match="eval.limt"):
        cmp.load_plan(write_recipe(tmp_path, eval={"limt": 3}), output=tmp_path / "out")


def test_training_data_is_chat_with_the_answer_or_text_label_rows(tmp_path):
    plan = cmp.load_plan(write_recipe(tmp_path), output=tmp_path / "out")
    files = cmp.write_training_data(plan.task, tmp_path / "chat", classify=False, limit=3)
    rows = [json.loads(line) for line in files["train"].read_text().splitlines()]
    assert len(rows) == 3 and set(files) == {"train", "eval"}
    first = plan.task.examples("train")[0]
    assert rows[0]["messages"][-1] == {"role": "assistant", "content": plan.task.answer_text(first)}
    assert rows[0]["messages"][-1]["content"] in ("bearish", "bullish", "neutral")
    assert rows[0]["messages"][-2]["role"] == "user" and first.input in rows[0]["messages"][-2]["content"]
    files = cmp.write_training_data(plan.task, tmp_path / "head", classify=True)
    rows = [json.loads(line) for line in files["train"].read_text().splitlines()]
    assert rows[0] == {"text": first.input, "label": first.references[0]}
    assert len(rows) == len(plan.task.examples("train"))


def test_a_trained_sft_specialist_records_the_task_prompt_it_learned(tmp_path, monkeypatch, tiny_chat_dir):
    from rich.console import Console

    Fakes(monkeypatch)
    plan = cmp.load_plan(write_recipe(tmp_path, base_models=[str(tiny_chat_dir)]), output=tmp_path / "out")
    settings = {"max_examples": 4, "train": {"max_steps": 1, "batch_size": 2}}
    folder, measured = fitting.fit_trained(plan, str(tiny_chat_dir), "lora", settings, tmp_path / "lora",
                                           console=Console(quiet=True))
    saved = json.loads((folder / "specialist.json").read_text(encoding="utf-8"))
    assert measured["steps"] == 1 and saved["strategy"] == "lora" and saved["weights"] == "adapter"
    assert saved["config"]["task"] == {"name": "toy-sentiment", "instruction": "Classify the sentiment.",
                                       "system": None, "answer": "label", "input_template": None,
                                       "labels": {"0": "bearish", "1": "bullish", "2": "neutral"}}


def test_slug_makes_a_folder_name():
    assert cmp.slug("smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert cmp.slug("/models/My Model/") == "My-Model"
    assert cmp.slug("org/name:v1") == "name-v1"


def test_retention_flags_a_rise_beyond_the_margin():
    from tailorlm.evaluation.retention import retention_report

    kept = retention_report(20.0, 21.9, margin=0.1, text="/data/input.txt", tokens=256)
    assert kept == {"text": "input.txt", "tokens": 256, "before": 20.0, "after": 21.9,
                    "change": pytest.approx(0.095), "margin": 0.1, "flagged": False}
    assert retention_report(20.0, 22.2, margin=0.1)["flagged"] is True
    assert retention_report(20.0, 15.0, margin=0.0)["flagged"] is False


def test_retention_settings_name_the_bad_key(tmp_path):
    from tailorlm.evaluation.retention import RetentionSettings

    (tmp_path / "general.txt").write_text("To be, or not to be, that is the question.\n" * 20)
    settings = RetentionSettings.from_dict({"text": "general.txt", "margin": 0.2}, where="r.yaml", base_dir=tmp_path)
    assert settings.text == str(tmp_path / "general.txt") and settings.margin == 0.2
    assert RetentionSettings.from_dict(None, where="r.yaml", base_dir=tmp_path) is None
    with pytest.raises(ConfigError, match="retention.marg"):
        RetentionSettings.from_dict({"text": "general.txt", "marg": 1}, where="r.yaml", base_dir=tmp_path)
    with pytest.raises(ConfigError, match="retention.text"):
        RetentionSettings.from_dict({"text": "missing.txt"}, where="r.yaml", base_dir=tmp_path)
    with pytest.raises(ConfigError, match="retention.margin"):
        RetentionSettings.from_dict({"text": "general.txt", "margin": -1}, where="r.yaml", base_dir=tmp_path)


def test_base_perplexity_is_measured_once_and_cached(tmp_path, tiny_llama_dir, monkeypatch):
    from tailorlm.evaluation import retention
    from tailorlm.models.load import load_model

    (tmp_path / "general.txt").write_text("The quick brown fox jumps over the lazy dog.\n" * 10)
    settings = retention.RetentionSettings(text=str(tmp_path / "general.txt"), max_tokens=64, window=32)
    cache = tmp_path / "base.json"
    value = retention.base_perplexity(str(tiny_llama_dir), settings, cache=cache)
    model, tokenizer = load_model(str(tiny_llama_dir), progress=False)
    direct, tokens = retention.model_perplexity(model, tokenizer, settings)
    assert value == pytest.approx(direct) and tokens == 64 and 1.0 < value < len(tokenizer) * 2
    monkeypatch.setattr("tailorlm.models.load.load_model", lambda *a, **k: pytest.fail("measured again"))
    assert retention.base_perplexity(str(tiny_llama_dir), settings, cache=cache) == value


# -- named variants, rag over a trained entry, citations --------------------------------------------------------------

SYSTEM = "You are an expert Python programmer."


def test_a_named_variant_runs_its_strategy_in_its_own_folder(tmp_path, monkeypatch, tiny_llama_dir):
    fakes = Fakes(monkeypatch, real={"zero_shot"})
    checked = []
    monkeypatch.setattr(cmp, "_retention", lambda plan, model, specialist, console: checked.append(specialist.parent.name)
                        or {"change": 0.01, "flagged": False})
    (tmp_path / "general.txt").write_text("Some general text to measure forgetting on.\n" * 5)
    recipe = write_recipe(tmp_path, base_models=[str(tiny_llama_dir)], retention={"text": "general.txt"},
                          strategies={"zero_shot": {}, "code_prompt": {"strategy": "zero_shot", "system": SYSTEM},
                                      "short_lora": {"strategy": "lora", "train": {"max_steps": 1}}})
    board = cmp.compare(recipe, output=tmp_path / "out")
    # the fitters get the entry's name for their errors, and settings without `strategy`
    assert [(c["name"], c["strategy"], c["settings"]) for c in fakes.calls] == [
        ("zero_shot", "zero_shot", {}), ("code_prompt", "zero_shot", {"system": SYSTEM}),
        ("short_lora", "lora", {"train": {"max_steps": 1}})]
    model = cmp.slug(str(tiny_llama_dir))
    saved = {name: json.loads((tmp_path / "out" / model / name / "specialist" / "specialist.json").read_text())
             for name in ("zero_shot", "code_prompt")}
    assert saved["code_prompt"]["strategy"] == "zero_shot" and saved["code_prompt"]["config"]["system"] == SYSTEM
    assert saved["zero_shot"]["config"]["system"] is None
    assert [(e["strategy"], e["method"]) for e in board.entries] == [
        ("zero_shot", "zero_shot"), ("code_prompt", "zero_shot"), ("short_lora", "lora")]
    variant = json.loads((tmp_path / "out" / model / "code_prompt" / "result.json").read_text())
    assert variant["specialist"] == f"{model}/code_prompt/specialist" and variant["settings"]["system"] == SYSTEM
    # a variant of a trained strategy counts as trained: its forgetting is checked, the prompts' are not
    assert checked == ["short_lora"] and board.entry(str(tiny_llama_dir), "short_lora")["retention"]["change"] == 0.01
    assert "<td>code_prompt</td>" in (tmp_path / "out" / "report.html").read_text()


def test_errors_of_a_variant_name_its_entry(tmp_path, monkeypatch):
    from rich.console import Console

    Fakes(monkeypatch)
    plan = cmp.load_plan(write_recipe(tmp_path), output=tmp_path / "out")
    with pytest.raises(ConfigError) as err:
        fitting.fit(plan, "tiny", "lora", {"lroa": {}}, tmp_path / "a", console=Console(quiet=True), name="short_lora")
    assert err.value.key == "strategies.short_lora.lroa"
    with pytest.raises(ConfigError) as err:
        fitting.fit(plan, "tiny", "zero_shot", {"k": 3}, tmp_path / "b", console=Console(quiet=True), name="code_prompt")
    assert err.value.where == "strategies.code_prompt (strategy zero_shot)" and err.value.key == "k"


def test_over_targets_run_before_the_entries_that_use_them(tmp_path):
    recipe = write_recipe(tmp_path, corpus="docs", strategies={
        "lora_rag": {"strategy": "rag", "over": "lora"}, "zero_shot": {}, "dora_rag": {"strategy": "rag", "over": "big"},
        "lora": {}, "big": {"strategy": "dora"}})
    plan = cmp.load_plan(recipe, output=tmp_path / "out")
    assert list(plan.strategies) == ["lora", "lora_rag", "zero_shot", "big", "dora_rag"]
    assert plan.strategies["lora_rag"] == {"strategy": "rag", "over": "lora"}


@pytest.mark.parametrize("strategies, key, says", [
    ({"code_prompt": {"strategy": "zero_shto"}}, "strategies.code_prompt.strategy", "Did you mean 'zero_shot'?"),
    ({"lora": {"strategy": "dora"}}, "strategies.lora.strategy", "an entry named after a strategy runs that strategy"),
    ({"a/b": {"strategy": "zero_shot"}}, "strategies.a/b", "its folder name"),
    ({"rag": {"over": "lora"}}, "strategies.rag.over", "over names no entry"),
    ({"lora": {}, "rag": {"over": "lroa"}}, "strategies.rag.over", "Did you mean 'lora'?"),
    ({"rag": {"over": "rag"}}, "strategies.rag.over", "cannot answer over itself"),
    ({"zero_shot": {}, "rag": {"over": "zero_shot"}}, "strategies.rag.over", "zero_shot, a zero_shot entry"),
    ({"lora": {}, "lora_rag": {"strategy": "rag", "over": "lora"}, "again": {"strategy": "rag", "over": "lora_rag"}},
     "strategies.again.over", "lora_rag, a rag entry"),
    ({"lora": {}, "dora": {"over": "lora"}}, "strategies.dora.over", "only a rag entry"),
    ({"full": {"models": ["minilm"]}}, "strategies.full.models", "a list drawn from tiny"),
    ({"full": {"models": "tiny"}}, "strategies.full.models", "must list some of the recipe's base_models"),
])
def test_bad_strategy_and_over_values_name_their_key(tmp_path, strategies, key, says):
    with pytest.raises(ConfigError) as err:
        cmp.load_plan(write_recipe(tmp_path, strategies=strategies), output=tmp_path / "out")
    assert err.value.key == key and says in str(err.value)


def write_corpus(folder: Path) -> Path:
    rows = [{"_id": "doc-1", "title": "Earnings", "text": "Shares fall after weak guidance."},
            {"_id": "doc-2", "title": "Revenue", "text": "Record revenue lifts the stock."}]
    corpus = folder / "docs" / "corpus.jsonl"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return corpus


def test_lora_rag_wraps_the_lora_specialist_and_follows_its_fingerprint(tmp_path, monkeypatch):
    from _retrieval_fakes import FakeEmbedder

    monkeypatch.setattr("tailorlm.retrieval.embeddings.Embedder", lambda model_ref="minilm-l6", **kw: FakeEmbedder(model_ref))
    cited = {"citation_rate": 0.5, "citation_accuracy": 0.25, "retrieval_hit": 0.75, "gold_not_indexed": 2,
             "gold_not_indexed_examples": ["MPlusHealthTopics-1"]}
    write_corpus(tmp_path)
    recipe = write_recipe(tmp_path, corpus="docs/corpus.jsonl", strategies={
        "lora_rag": {"strategy": "rag", "over": "lora", "k": 1}, "lora": {"train": {"max_steps": 3}}})
    fakes = Fakes(monkeypatch, real={"rag"}, chat_manifests=True, extra={"lora+rag": cited})
    board = cmp.compare(recipe, output=tmp_path / "out")
    lora = tmp_path / "out" / "tiny" / "lora" / "specialist"
    assert fakes.fitted == ["lora", "lora_rag"] and fakes.calls[1]["wraps"] == lora
    assert fakes.calls[1]["settings"] == {"k": 1}  # neither `strategy` nor `over` reaches the fitter
    manifest = json.loads((tmp_path / "out" / "tiny" / "lora_rag" / "specialist" / "specialist.json").read_text())
    assert (manifest["strategy"], manifest["base_model"]) == ("lora+rag", str(lora.resolve()))
    assert manifest["config"]["retrieval"]["k"] == 1 and manifest["config"]["index"] == str(tmp_path / "out" / "rag-index")
    entry = board.entry("tiny", "lora_rag")
    assert entry["method"] == "rag" and entry["trainable_parameters"] == 4096 and entry["train_seconds"] >= 100.0
    assert entry["extra"] == cited
    page = (tmp_path / "out" / "report.html").read_text()
    row = re.search(r'<table id="citations">.*?<td>lora_rag</td>(.*?)</tr>', page, re.S).group(1)
    assert re.findall(r">([\d.]+%)<", row) == ["50.0%", "25.0%", "75.0%"]
    assert f"lora_rag: 2 of {entry['examples']} right-document ids are not in the index" in page
    assert "&#x27;MPlusHealthTopics-1&#x27;" in page

    def over_fingerprint():
        return json.loads((tmp_path / "out" / "tiny" / "lora_rag" / "result.json").read_text())["fingerprint"]["over"]

    assert over_fingerprint()["settings"] == {"train": {"max_steps": 3}}
    again = Fakes(monkeypatch, real={"rag"}, chat_manifests=True)
    cmp.compare(recipe, output=tmp_path / "out")
    assert again.fitted == []  # both reused
    retrained = Fakes(monkeypatch, real={"rag"}, chat_manifests=True)
    cmp.compare(recipe, output=tmp_path / "out", overrides=["strategies.lora.train.max_steps=5"])
    assert retrained.fitted == ["lora", "lora_rag"]  # a retrained lora invalidates the lora+rag result
    assert over_fingerprint()["settings"] == {"train": {"max_steps": 5}}
    rag_only = Fakes(monkeypatch, real={"rag"}, chat_manifests=True)
    cmp.compare(recipe, output=tmp_path / "out", overrides=["strategies.lora.train.max_steps=5",
                                                             "strategies.lora_rag.k=2"])
    assert rag_only.fitted == ["lora_rag"]


def test_lora_rag_fails_clearly_when_its_lora_failed(tmp_path, monkeypatch):
    fakes = Fakes(monkeypatch, fail={"lora"})
    recipe = write_recipe(tmp_path, corpus="docs", strategies={
        "zero_shot": {}, "lora": {}, "lora_rag": {"strategy": "rag", "over": "lora"}})
    board = cmp.compare(recipe, output=tmp_path / "out")
    assert fakes.fitted == ["zero_shot", "lora"]  # nothing is fitted over a failed lora
    failed = board.entry("tiny", "lora_rag")
    assert failed["status"] == "failed" and failed["method"] == "rag"
    assert "lora_rag answers through lora, which failed" in failed["error"] and "lora exploded" in failed["error"]
    assert board.best["strategy"] == "zero_shot"


def test_a_citation_doc_naming_a_missing_field_stops_the_plan(tmp_path):
    recipe = write_recipe(tmp_path, eval={"citation_doc": "{source}-{qid}"})
    with pytest.raises(ConfigError) as err:
        cmp.load_plan(recipe, output=tmp_path / "out")
    assert err.value.key == "eval.citation_doc" and "data.csv, row" in str(err.value)
    assert "no field 'source'" in str(err.value)


def test_each_base_model_runs_the_entries_that_fit_it_and_notes_the_others(tmp_path, monkeypatch):
    """An encoder skips prompting (and what wraps a skipped entry); `models:` keeps an entry to some base models."""
    recipe = write_recipe(tmp_path, base_models=["enc", "tiny"], corpus="docs", strategies={
        "zero_shot": {}, "code_prompt": {"strategy": "zero_shot", "system": "Be exact."},
        "full": {"models": ["enc"]}, "lora": {}, "lora_rag": {"strategy": "rag", "over": "lora", "models": ["tiny"]}})
    fakes = Fakes(monkeypatch)
    monkeypatch.setattr(cmp, "is_encoder", lambda model: model == "enc")
    board = cmp.compare(recipe, output=tmp_path / "out")
    ran = [(e["model"], e["strategy"]) for e in board.entries]
    assert ran == [("enc", "full"), ("enc", "lora"), ("tiny", "zero_shot"), ("tiny", "code_prompt"), ("tiny", "lora"),
                   ("tiny", "lora_rag")]
    assert fakes.calls[0]["settings"] == {}  # models: is the recipe's business, not the fitter's
    notes = board.data["notes"]
    assert "zero_shot left out for enc: an encoder classifies with a trained head, and zero_shot needs a model that " \
           "writes text" in notes
    assert "code_prompt left out for enc: an encoder classifies with a trained head, and zero_shot needs a model " \
           "that writes text" in notes
    assert "lora_rag left out for enc: the recipe runs it only for tiny" in notes
    assert "full left out for tiny: the recipe runs it only for enc" in notes
    assert len(notes) == 4
