"""Through the whole loop, packed and padded training of the same examples take the same optimizer step.

The loss of a step is the mean over every trained token of all its micro-batches, so how examples are laid out
(packed into shared rows, padded one per row, split over accumulated micro-batches) must not change it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

import tailorlm.training.loop as loop
from tailorlm.training.config import resolve_config

QUESTIONS = ["Hi?", "What is the capital of France, and why is it there?", "Is the dog lazy?",
             "What should patients with diabetes check every single morning?", "Why?", "Say hello."]
ANSWERS = ["Hello.", "Paris is the capital of France.", "The dog is lazy, yes.",
           "Their blood sugar.", "Because the court held that the statement was hearsay.", "hello hi thanks"]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def chat(tmp_path) -> Path:
    """Six conversations of quite different lengths."""
    path = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in zip(QUESTIONS, ANSWERS)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def text(tmp_path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text("\n".join(q + " " + a for q, a in zip(QUESTIONS, ANSWERS)) + "\n", encoding="utf-8")
    return path


def first_step(model: Path, data: Path, output: Path, objective: str, method: str, settings: list[str],
               monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], Any]:
    """Run one optimizer step; returns its logged record and the prepared run (the model after the step)."""
    config = resolve_config(
        values={"model": str(model), "data": str(data), "method": method, "objective": objective,
                "output": str(output)},
        overrides=["data.split={}", "data.text_split=line", "train.max_length=64", "train.max_steps=1",
                   "train.lr=1e-3", "train.tensorboard=false", *settings])
    prepared = []
    real_prepare = loop.prepare
    monkeypatch.setattr(loop, "prepare", lambda *a, **k: prepared.append(real_prepare(*a, **k)) or prepared[-1])
    records: list[dict] = []
    loop.train(config, callbacks=(lambda step, record: records.append(record),), console=Console(quiet=True))
    return records[0], prepared[0]


@pytest.mark.parametrize("objective, method, padded", [
    ("sft", "full", ["train.batch_size=8"]),  # one padded micro-batch of six rows
    ("sft", "lora", ["train.batch_size=2", "train.grad_accum=3"]),  # three accumulated micro-batches of two rows
    ("pretrain", "full", ["train.batch_size=3", "train.grad_accum=2", "train.group_by_length=false"]),
], ids=["sft-full-one-batch", "sft-lora-accumulated", "pretrain-full-accumulated"])
def test_packed_and_padded_training_take_the_same_first_step(tiny_llama_dir, chat, text, tmp_path, monkeypatch,
                                                             objective, method, padded):
    data = chat if objective == "sft" else text
    packed_record, packed = first_step(tiny_llama_dir, data, tmp_path / "packed", objective, method,
                                       ["train.packing=true", "train.batch_size=8"], monkeypatch)
    padded_record, unpacked = first_step(tiny_llama_dir, data, tmp_path / "padded", objective, method,
                                         ["train.packing=false", *padded], monkeypatch)

    # The layouts really differ: all six examples share fewer rows when packed, one row each when padded.
    assert packed.plan.packing and packed.plan.num_rows < len(QUESTIONS) == unpacked.plan.num_rows
    assert packed_record["trained_tokens"] == padded_record["trained_tokens"]
    assert packed_record["step_tokens"] == padded_record["step_tokens"]
    assert abs(packed_record["loss"] - padded_record["loss"]) < 1e-5
    assert abs(packed_record["grad_norm"] - padded_record["grad_norm"]) < 1e-5 * padded_record["grad_norm"]
    after_packed = dict(packed.model.named_parameters())
    # Adam's first step is lr * g / (|g| + eps), which turns a 1e-9 gradient difference in an element whose gradient
    # is near eps into ~1e-6; 1e-5 is still 1% of the step (lr 1e-3).
    for name, value in unpacked.model.named_parameters():
        torch.testing.assert_close(after_packed[name], value, rtol=0, atol=1e-5, msg=name)
    # ... and that step moved the weights far more than the tolerance (LoRA's B starts at zero).
    base = load_file(str(tiny_llama_dir / "model.safetensors"))
    moved = [(value - base[name]).abs().max() if method == "full" else value.abs().max()
             for name, value in after_packed.items() if (name in base if method == "full" else "lora_B" in name)]
    assert moved and min(moved) > 1e-4
