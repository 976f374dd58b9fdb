"""Tokenizers on the real built-in model: extend SmolLM2 with MedQuAD words; the loss per character stays within 5%."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tailorlm.cli import main

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MEDQUAD = sorted((ROOT / "examples" / "data" / "medical_qa" / "medquad").glob("*.jsonl"))


@pytest.fixture(scope="module")
def extended(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smollm2-medquad")
    assert main(["tokenizer", "extend", "smollm2-135m-instruct", "--corpus", *map(str, MEDQUAD), "--column", "answer",
                 "--add", "40", "--loss-texts", "8", "--loss-chars", "600", "--output", str(out), "--overwrite",
                 "--quiet"]) == 0
    return out


def test_extension_keeps_the_loss_per_character_and_lowers_fertility(extended):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tailorlm.models.hub import resolve

    report = json.loads((extended / "tokenizer_extension.json").read_text())
    assert len(report["added"]) == 40 and all(word["uses"] > 0 for word in report["added"])
    assert report["loss_texts"] == 8 and report["loss_text_source"] == "held-out"
    base, ext = report["loss"]["base"], report["loss"]["extended"]
    assert base["chars"] == ext["chars"] and ext["tokens"] <= base["tokens"]
    assert 0.95 <= report["loss_ratio_per_char"] <= 1.05
    for part in ("counted", "held_out"):
        rows = report["fertility"][part]
        assert rows["extended"]["tokens_per_char"] < rows["base"]["tokens_per_char"]

    base_dir = resolve("smollm2-135m-instruct")
    tokenizer, base_tok = AutoTokenizer.from_pretrained(extended), AutoTokenizer.from_pretrained(base_dir)
    assert len(tokenizer) == len(base_tok) + 40 and tokenizer.chat_template == base_tok.chat_template
    model = AutoModelForCausalLM.from_pretrained(extended, dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    grown, old = model.get_input_embeddings().weight, original.get_input_embeddings().weight
    assert torch.equal(grown[: len(base_tok)], old)
    word = report["added"][0]
    assert torch.equal(grown[word["id"]], old[word["pieces"]].mean(dim=0))
    assert model.get_output_embeddings().weight.data_ptr() == grown.data_ptr()


def test_tailor_train_accepts_the_extended_model(extended, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("\n".join(json.loads(line)["answer"] for line in MEDQUAD[0].read_text().splitlines()[:20]) + "\n")
    out = tmp_path / "trained"
    args = ["train", "--model", str(extended), "--data", str(text), "--objective", "pretrain", "--method", "full",
            "--output", str(out), "--max-steps", "2", "--set", "train.batch_size=1", "--set", "train.max_length=64",
            "--set", "train.tensorboard=false"]
    assert main(args + ["--dry-run"]) == 0
    assert main(args) == 0
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 2 and all(0.0 < loss < 10.0 for loss in losses)


def test_shakespeare_tokenizer_fertility_next_to_smollm2(tmp_path, capsys):
    shakespeare = ROOT / "examples" / "data" / "pretraining_text" / "tiny_shakespeare" / "input.txt"
    out = tmp_path / "shakespeare-4k"
    assert main(["tokenizer", "train", str(shakespeare), "--vocab-size", "4096", "--output", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "tokenizer_training.json").read_text())
    fertility = report["held_out_fertility"]
    # every 20th paragraph of the play, never seen in training; SmolLM2's count is fixed by its tokenizer
    assert fertility["smollm2-135m-instruct"] == {"tokens": 14965, "words": 8913, "chars": 49534,
                                                  "tokens_per_word": 1.679, "tokens_per_char": 0.3021}
    assert fertility["trained"]["words"] == 8913 and 1.6 < fertility["trained"]["tokens_per_word"] < 1.8
    assert report["vocab_sizes"] == {"trained": 4096, "smollm2-135m-instruct": 49152}
    assert "│ smollm2-135m-instruct │ 49,152 │ 14,965 │       1.679 │      0.3021 │" in printed
