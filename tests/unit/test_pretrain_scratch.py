"""Tiny Llama- and GPT-2-style models pre-trained from scratch memorise a short text, through `tailor pretrain`.

The saved result is an ordinary model folder: transformers loads it, and `tailor models info` shows what it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from _pretrain_fakes import TEXT, token_cache  # noqa: F401 (fixture)
from _train_runs import one_thread
from conftest import build_tiny_tokenizer
from tailorlm.cli import main
from tailorlm.training.tracking import read_metrics

SHAPES = {
    "llama": {"architecture": "llama", "layers": 2, "heads": 4, "kv_heads": 2, "hidden_size": 64, "context_length": 64},
    "gpt2": {"architecture": "gpt2", "layers": 2, "heads": 4, "hidden_size": 64, "context_length": 64},
}
STEPS = 40


def pretrain_recipe(tmp_path: Path, shape: dict, *, data: dict | None = None, steps: int = STEPS) -> Path:
    """A recipe that pre-trains `shape` on three lines repeated ten times (the last fifth held out for evaluation),
    with a tokenizer folder."""
    build_tiny_tokenizer().save_pretrained(tmp_path / "tok")
    (tmp_path / "corpus.txt").write_text(TEXT * 10, encoding="utf-8")
    recipe = {
        "model": {**shape, "tokenizer": "tok"},
        "objective": "pretrain", "method": "full", "output": str(tmp_path / "run"),
        "data": data or {"train": "corpus.txt", "split": {"eval": 0.2}},
        "train": {"max_steps": steps, "batch_size": 4, "max_length": 32, "lr": 1e-2, "warmup_steps": 2,
                  "eval_every": 10, "tensorboard": False, "micro_batch_size": 4},
        "samples": {"prompts": ["The quick", "Patients"], "max_new_tokens": 12, "temperature": 0.8},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.mark.parametrize("name, data", [
    ("llama", None),  # streamed from the token cache
    ("gpt2", None),
    # lines in memory, packed; evaluated on the training text (a carved split would hold other lines: duplicates
    # always land in one split)
    ("gpt2", {"train": "corpus.txt", "eval": "corpus.txt", "text_split": "line"}),
], ids=["llama-streamed", "gpt2-streamed", "gpt2-packed-lines"])
def test_a_tiny_model_from_scratch_memorises_a_short_text(tmp_path, token_cache, capsys, name, data):
    recipe = pretrain_recipe(tmp_path, SHAPES[name], data=data)
    with one_thread():
        assert main(["pretrain", str(recipe)]) == 0
    out = capsys.readouterr().out
    output = tmp_path / "run"
    metrics = read_metrics(output)
    losses = [r["loss"] for r in metrics if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in metrics if "eval_loss" in r]
    assert len(losses) == STEPS
    assert losses[0] > 5.0  # about ln(vocabulary) for random weights
    assert losses[-1] < 0.15 * losses[0], losses
    assert [s for s, _ in evals] == [10, 20, 30, 40]
    assert evals[-1][1] < 0.5 * evals[0][1]  # the held-out copies are memorised too
    # the command ends with the curve's endpoints (the numbers of metrics.jsonl) and samples of each prompt
    assert f"validation loss: {evals[0][1]:.4f} at step 10 -> {evals[-1][1]:.4f} at step 40" in out
    assert "--- The quick" in out and "--- Patients" in out

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(output).eval()
    expected = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}[name]
    assert type(model).__name__ == expected
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    if name == "llama":
        assert model.config.num_key_value_heads == 2
    # what was memorised is in the saved weights: the rest of a line, greedily
    tokenizer = AutoTokenizer.from_pretrained(output)
    prompt = "What is the capital of France? Paris"
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert tokenizer.decode(generated[0, ids.shape[1]:]).startswith(" is the capital")

    assert main(["models", "info", str(output)]) == 0
    info = capsys.readouterr().out
    assert f"architecture     {expected} ({name})" in info
    assert "layers           2" in info and "hidden size      64" in info and "context length   64" in info
    manifest = json.loads((output / "specialist.json").read_text())
    assert manifest["weights"] == "full" and manifest["config"]["model"]["architecture"] == name
