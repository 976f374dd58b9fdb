"""The tiny-Shakespeare recipe, cut short: a Llama-style model from scratch with the smollm2 tokenizer learns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tailorlm.cli import main
from tailorlm.training.tracking import read_metrics

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "pretraining" / "shakespeare_llama_tiny.yaml"


def test_twenty_steps_of_the_shakespeare_recipe_lower_the_loss(tmp_path, capsys):
    output = tmp_path / "shakespeare"
    code = main(["pretrain", str(RECIPE), "--max-steps", "20", "--output", str(output),
                 "--set", "train.warmup_steps=4", "--set", "train.eval_every=10", "--set", "train.eval_max_batches=2",
                 "--set", "train.batch_size=4", "--set", "train.micro_batch_size=4", "--set", "train.tensorboard=false",
                 "--set", "samples.max_new_tokens=8"])
    assert code == 0
    out = capsys.readouterr().out
    metrics = read_metrics(output)
    losses = [r["loss"] for r in metrics if "loss" in r]
    evals = [r["eval_loss"] for r in metrics if "eval_loss" in r]
    assert len(losses) == 20 and len(evals) == 2
    assert losses[0] > 10.0  # about ln(49,152) = 10.8: random weights, the smollm2 vocabulary
    assert sum(losses[-5:]) / 5 < losses[0] - 1.5, losses
    assert evals[1] < evals[0] < losses[0]
    assert "validation loss: " in out and "--- ROMEO:" in out
    manifest = json.loads((output / "specialist.json").read_text())
    assert manifest["config"]["model"]["architecture"] == "llama" and manifest["steps"] == 20

    assert main(["models", "info", str(output)]) == 0
    info = capsys.readouterr().out
    assert "LlamaForCausalLM (llama)" in info and "vocabulary size  49,152" in info and "layers           4" in info
