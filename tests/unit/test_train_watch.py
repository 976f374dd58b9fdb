"""Watching and sizing a run: metrics.jsonl, TensorBoard events, the progress record, and `tailor estimate`."""

from __future__ import annotations

import json

import pytest
from _train_runs import one_thread, train_args, write_chat

from tailorlm.cli import main
from tailorlm.training.config import resolve_config
from tailorlm.training.estimate import estimate
from tailorlm.training.tracking import read_metrics


def test_metrics_jsonl_and_tensorboard_events(tmp_path, tiny_llama_dir):
    data = write_chat(tmp_path / "chat.jsonl", count=8)
    out = tmp_path / "run"
    args = train_args(tiny_llama_dir, data, out, steps=4, extra=("train.tensorboard=true",))
    with one_thread():
        assert main(["train", *args]) == 0
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert r["loss"] > 0 and r["tokens_per_second"] > 0 and r["trained_tokens"] > 0
        assert r["step_tokens"] >= r["trained_tokens"]
    # warm-up of 2 steps at peak 1e-2: 5e-3, then 1e-2, then cosine decay
    assert [round(r["lr"], 6) for r in records[:2]] == [0.005, 0.01]
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0

    from tensorboard_reader import scalars

    # TensorBoard keeps float32
    assert scalars(events[0], "loss") == pytest.approx([r["loss"] for r in records], rel=1e-6)


def test_estimate_counts_parameters_memory_and_tokens(tmp_path, tiny_llama_dir):
    data = write_chat(tmp_path / "chat.jsonl", count=8)
    config = resolve_config(values={"model": str(tiny_llama_dir), "data": str(data), "objective": "sft",
                                    "method": "lora", "output": str(tmp_path / "never-written")},
                            overrides=["data.split={}", "train.max_length=128", "train.batch_size=2", "lora.r=4"])
    with one_thread():
        result = estimate(config)
    assert not (tmp_path / "never-written").exists()
    # LoRA r=4 on q,k,v,o (32->32, 32->16, 32->16, 32->32), gate, up (32->64), down (64->32), 2 layers
    per_layer = sum(4 * (i + o) for i, o in [(32, 32), (32, 16), (32, 16), (32, 32), (32, 64), (32, 64), (64, 32)])
    assert result.trainable_parameters == 2 * per_layer
    assert result.gradients_bytes == 4 * result.trainable_parameters
    assert result.optimizer_bytes >= 8 * result.trainable_parameters  # exp_avg and exp_avg_sq in fp32
    assert result.weights_bytes == 4 * result.total_parameters
    lines = data.read_text().splitlines()
    assert result.steps_per_epoch >= 1 and result.tokens_per_epoch > len(lines) * 10
    assert 0 < result.trained_tokens_per_epoch < result.tokens_per_epoch
    assert result.seconds_per_step > 0 and result.seconds_per_epoch == result.seconds_per_step * result.steps_per_epoch
    text = result.render()
    assert "trainable" in text and "time per epoch" in text


def test_estimate_cli_json(tmp_path, tiny_llama_dir, capsys):
    data = write_chat(tmp_path / "chat.jsonl", count=4)
    with one_thread():
        code = main(["estimate", *train_args(tiny_llama_dir, data, tmp_path / "x", steps=1), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trainable_parameters"] > 0 and report["device"] == "cpu"
