"""A recipe's `model:` mapping: every bad shape is refused with its key before anything is built or trained."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import tailorlm.models.build as build
from conftest import build_tiny_tokenizer
from tailorlm.cli import main
from tailorlm.errors import ConfigError
from tailorlm.training.config import resolve_config

SHAPE = {"architecture": "llama", "layers": 2, "heads": 4, "kv_heads": 2, "hidden_size": 32, "context_length": 64}


@pytest.fixture
def tokenizer_dir(tmp_path) -> Path:
    """A tokenizer folder as `tailor tokenizer train` writes it: tokenizer files, no model."""
    folder = tmp_path / "tok"
    build_tiny_tokenizer().save_pretrained(folder)
    return folder


def write_recipe(tmp_path: Path, model: dict, **top) -> Path:
    (tmp_path / "corpus.txt").write_text("to be or not to be\n" * 20, encoding="utf-8")
    recipe = {"model": model, "objective": "pretrain", "method": "full", "output": str(tmp_path / "run"),
              "data": "corpus.txt",
              "train": {"max_length": 32}, **top}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.fixture
def nothing_built(monkeypatch):
    """Fail the test if a model is built or its parameters counted (the errors must come first)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the configuration was checked")

    monkeypatch.setattr(build, "build_model", refuse)
    monkeypatch.setattr(build, "parameter_count", refuse)


@pytest.mark.parametrize("change, key, words", [
    ({"heads": 5}, "model.heads", ["heads do not divide the hidden size", "5 heads for hidden_size 32", "e.g. 4 or 8"]),
    ({"heads": 4, "kv_heads": 3}, "model.kv_heads", ["key-value heads do not divide the heads", "3 kv_heads for 4 heads",
                                                     "expected a divisor of heads, e.g. 2 or 4"]),
    ({"architecture": "lama"}, "model.architecture", ["unknown architecture", "one of llama, gpt2",
                                                      "Did you mean 'llama'?"]),
    ({"architecture": "gpt2", "kv_heads": 2}, "model.kv_heads", ["kv_heads applies to llama only"]),
    ({"layers": 0}, "model.layers", ["must be a positive whole number"]),
    ({"hidden_sise": 64}, "model.hidden_sise", ["unknown setting", "Did you mean 'hidden_size'?"]),
    ({"dropout": 1.5}, "model.dropout", ["must be in [0, 1)"]),
])
def test_bad_model_shapes_are_refused_before_any_compute(tmp_path, capsys, nothing_built, change, key, words):
    recipe = write_recipe(tmp_path, {**SHAPE, **change})
    assert main(["pretrain", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"recipe.yaml: " in err and f"(key {key!r})" in err
    for word in words:
        assert word in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_missing_size_names_the_key(tmp_path):
    shape = {k: v for k, v in SHAPE.items() if k != "hidden_size"}
    with pytest.raises(ConfigError) as err:
        resolve_config(write_recipe(tmp_path, shape))
    assert err.value.key == "model.hidden_size" and "missing setting" in str(err.value)


@pytest.mark.parametrize("objective, method, key", [("sft", "full", "objective"), ("pretrain", "lora", "method")])
def test_a_model_from_scratch_is_only_pre_trained_in_full(tmp_path, objective, method, key):
    with pytest.raises(ConfigError) as err:
        resolve_config(write_recipe(tmp_path, SHAPE, objective=objective, method=method))
    assert err.value.key == key
    assert "random weights" in str(err.value) and "objective: pretrain and method: full" in str(err.value)


def test_max_length_beyond_the_context_is_refused(tmp_path):
    with pytest.raises(ConfigError) as err:
        resolve_config(write_recipe(tmp_path, {**SHAPE, "context_length": 16}))
    assert err.value.key == "train.max_length" and "model.context_length (16)" in str(err.value)


def test_defaults_fill_in_and_the_scratch_learning_rate_applies(tmp_path):
    config = resolve_config(write_recipe(tmp_path, {"architecture": "gpt2", "layers": 2, "heads": 2,
                                                    "hidden_size": 48}))
    assert config.model == {"architecture": "gpt2", "layers": 2, "heads": 2, "hidden_size": 48, "ffn_size": 192,
                            "context_length": 1024, "tokenizer": "smollm2-135m-instruct", "tie_embeddings": True,
                            "dropout": 0.0}
    assert config.train.lr == 1e-3
    llama = resolve_config(write_recipe(tmp_path, {"architecture": "llama", "layers": 2, "heads": 4,
                                                   "hidden_size": 96}))
    assert llama.model["kv_heads"] == 4 and llama.model["ffn_size"] == 256  # 8/3 x 96 = 256, a multiple of 64


def test_dry_run_prints_the_architecture_and_the_parameter_count_of_the_built_model(tmp_path, tokenizer_dir, capsys):
    recipe = write_recipe(tmp_path, {**SHAPE, "tokenizer": str(tokenizer_dir)})
    for verb in (["train"], ["pretrain"]):
        assert main([*verb, str(recipe), "--dry-run"]) == 0
        err = capsys.readouterr().err
        spec = build.model_spec({**SHAPE, "tokenizer": str(tokenizer_dir)}, where="test")
        tokenizer = build.load_spec_tokenizer(spec, base_dir=tmp_path)
        model = build.build_model(spec, tokenizer)
        count = sum(p.numel() for p in model.parameters())
        assert f"new LlamaForCausalLM from scratch: 2 layers, hidden 32, 4 heads" in err
        assert "grouped-query attention (4 heads share 2 key-value heads)" in err
        assert f"{count:,} parameters" in err
        assert "architecture: llama" in err  # the resolved settings show the whole mapping
    assert not (tmp_path / "run").exists()


def test_the_same_seed_builds_the_same_weights(tokenizer_dir):
    import torch

    spec = build.model_spec({**SHAPE, "tokenizer": str(tokenizer_dir)}, where="test")
    tokenizer = build.load_spec_tokenizer(spec, base_dir=Path("."))
    first, again, other = (build.build_model(spec, tokenizer, seed=s) for s in (0, 0, 1))
    for (name, a), b, c in zip(first.named_parameters(), again.parameters(), other.parameters()):
        assert torch.equal(a, b), name
    assert not torch.equal(first.model.embed_tokens.weight, other.model.embed_tokens.weight)
    # the tokenizer sets the vocabulary and the special tokens
    assert first.config.vocab_size == len(tokenizer)
    assert (first.config.eos_token_id, first.config.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert first.lm_head.weight is first.model.embed_tokens.weight  # tied


def test_pretrain_refuses_another_objective(tmp_path, capsys, nothing_built):
    recipe = write_recipe(tmp_path, SHAPE)
    assert main(["pretrain", str(recipe), "--objective", "sft"]) == 2
    err = capsys.readouterr().err
    assert "tailor pretrain always pre-trains (key 'objective'): found 'sft'" in err and "tailor train" in err
    assert "--objective" not in main_help(capsys)


def main_help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    return capsys.readouterr().out
