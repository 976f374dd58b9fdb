"""Perplexity is exp(mean next-token NLL), and the forgetting check stores before/after numbers in the manifest."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console

import tailorlm.training.loop as loop
from _train_runs import one_thread
from conftest import CORPUS
from tailorlm.errors import ConfigError
from tailorlm.training.config import resolve_config
from tailorlm.training.perplexity import format_forgetting, forgetting_report, perplexity, text_tokens


def hand_nll(model, ids: list[int]) -> float:
    """-sum log p(ids[t+1] | ids[:t+1]) from the model's own full logits."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()  # (T, V)
    logp = torch.log_softmax(logits, dim=-1)
    return -sum(float(logp[t, ids[t + 1]]) for t in range(len(ids) - 1))


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()


def test_perplexity_is_exp_of_the_mean_token_nll_over_windows_that_overlap_by_one(model):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (50,), generator=generator).tolist()
    result = perplexity(model, ids, window=16, batch_size=2)
    # windows [0:16], [15:31], [30:46] and the short tail [45:50]: each token after the first predicted once
    expected = sum(hand_nll(model, ids[s:s + 16]) for s in (0, 15, 30, 45))
    assert result.tokens == 49
    assert result.nll == pytest.approx(expected, rel=1e-5)
    assert result.value == pytest.approx(math.exp(expected / 49), rel=1e-5)
    whole = perplexity(model, ids, window=64)
    assert whole.tokens == 49 and whole.nll == pytest.approx(hand_nll(model, ids), rel=1e-5)
    assert whole.value != pytest.approx(result.value, rel=1e-4)  # context matters: the window is not ignored
    assert model.training is False


def test_a_model_prepared_for_packed_training_measures_the_same(tiny_llama_dir):
    """Several windows per batch, on a model switched to packed attention (as the loop has it before training)."""
    from transformers import AutoModelForCausalLM

    from tailorlm.training.attention import ATTENTION, use_packed_attention

    plain = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    packed = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    assert use_packed_attention(packed)
    ids = torch.randint(0, plain.config.vocab_size, (200,), generator=torch.Generator().manual_seed(1)).tolist()
    expected = perplexity(plain, ids, window=32, batch_size=4)
    measured = perplexity(packed, ids, window=32, batch_size=4)
    assert measured.nll == pytest.approx(expected.nll, rel=1e-6)
    assert packed.config._attn_implementation == ATTENTION  # switched back for training


def test_a_uniform_model_has_the_vocabulary_size_as_perplexity(model):
    import copy

    flat = copy.deepcopy(model)
    with torch.no_grad():
        flat.lm_head.weight.zero_()  # tied: the embedding too, so every logit is 0
    assert perplexity(flat, list(range(30)), window=8).value == pytest.approx(model.config.vocab_size, rel=1e-5)


def test_the_report_flags_a_general_perplexity_rise_beyond_the_margin():
    before = {"general": 20.0, "domain": 40.0}
    kept = forgetting_report(before, {"general": 21.0, "domain": 30.0}, margin=0.1)
    assert kept["general"]["change"] == pytest.approx(0.05) and kept["domain"]["change"] == pytest.approx(-0.25)
    assert kept["forgetting"] is False
    lost = forgetting_report(before, {"general": 23.0, "domain": 30.0}, margin=0.1,
                             labels={"general": "input.txt", "domain": "eval split"})
    assert lost["forgetting"] is True and lost["general"]["change"] == pytest.approx(0.15)
    table = format_forgetting(lost)
    assert "general (input.txt)      20.00      23.00    +15.0%" in table
    assert "domain (eval split)      40.00      30.00    -25.0%" in table
    assert "forgetting: yes - the general perplexity rose 15.0%, more than the 10% margin" in table
    assert "forgetting: no - the general perplexity changed +5.0% (margin 10%)" in format_forgetting(kept)


def write_run(tmp_path: Path, model_dir: Path, method: str = "full", **forgetting) -> Path:
    """Continued pre-training of the tiny model on 'domain' answers, with general text held out to check."""
    answers = [{"question": f"q{i}", "answer": "Patients with diabetes should check their blood sugar."}
               for i in range(8)]
    (tmp_path / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers), encoding="utf-8")
    (tmp_path / "held_out.jsonl").write_text(json.dumps({"answer": CORPUS[2]}) + "\n", encoding="utf-8")
    (tmp_path / "general.txt").write_text("\n".join(CORPUS[:2] + CORPUS[3:]) + "\n", encoding="utf-8")
    recipe = {
        "model": str(model_dir), "objective": "pretrain", "method": method, "output": str(tmp_path / "run"),
        "data": {"train": "answers.jsonl", "eval": "held_out.jsonl", "format": "text", "columns": {"text": "answer"}},
        "train": {"max_steps": 15, "batch_size": 4, "max_length": 32, "lr": 1e-2, "tensorboard": False},
        "forgetting": {"general": "general.txt", "max_tokens": 40, **forgetting},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.mark.parametrize("method", ["full", "lora"])
def test_forgetting_perplexities_before_and_after_are_measured_and_stored_in_the_manifest(tmp_path, tiny_llama_dir,
                                                                                         method):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tailorlm.strategies.base import load_specialist

    config = resolve_config(write_run(tmp_path, tiny_llama_dir, method))
    printed = io.StringIO()
    with one_thread():
        result = loop.train(config, console=Console(file=printed, width=200))
    manifest = json.loads((tmp_path / "run/specialist.json").read_text())
    stored = manifest["metrics"]["forgetting"]
    assert stored == result.forgetting

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    general = text_tokens("general.txt", tokenizer, max_tokens=40, where="test", base_dir=tmp_path, key="general")
    domain = text_tokens({"train": "held_out.jsonl", "format": "text", "columns": {"text": "answer"}}, tokenizer,
                         max_tokens=40, where="test", base_dir=tmp_path, key="domain")
    assert len(general) == 40 and len(domain) < 40  # the held-out answer is one short line (and its EOS)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    trained = load_specialist(tmp_path / "run")[0].eval()
    for name, tokens in (("general", general), ("domain", domain)):
        assert stored[name]["tokens"] == len(tokens)
        assert stored[name]["before"] == pytest.approx(perplexity(base, tokens, window=32).value, rel=5e-7)
        assert stored[name]["after"] == pytest.approx(perplexity(trained, tokens, window=32).value, rel=5e-7)
        assert stored[name]["change"] == pytest.approx(stored[name]["after"] / stored[name]["before"] - 1)
    assert stored["domain"]["after"] < stored["domain"]["before"]  # the held-out domain line was learned
    assert stored["margin"] == 0.1
    assert stored["forgetting"] is (stored["general"]["change"] > 0.1)
    assert stored["general"]["text"] == "general.txt" and stored["domain"]["text"] == "eval split"
    text = printed.getvalue()
    assert f"{stored['general']['before']:>9.2f}  {stored['general']['after']:>9.2f}" in text
    assert "forgetting: " in text


def test_forgetting_needs_a_general_text_and_a_language_model_objective(tmp_path, tiny_llama_dir):
    path = write_run(tmp_path, tiny_llama_dir)
    with pytest.raises(ConfigError) as err:
        resolve_config(path, overrides=["forgetting.general=null"])
    assert err.value.key == "forgetting.general"
    with pytest.raises(ConfigError) as err:
        resolve_config(path, overrides=["objective=classify", "method=lora"])
    assert err.value.key == "forgetting" and "objective pretrain or sft" in str(err.value)
    with pytest.raises(ConfigError) as err:
        resolve_config(path, overrides=["forgetting.margin=-1"])
    assert err.value.key == "forgetting.margin"
