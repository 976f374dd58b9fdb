"""Checkpoints and resume: a run killed or interrupted mid-way and resumed matches an uninterrupted run exactly."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from _train_runs import losses, one_thread, start_script, train_args, write_chat
from tailorlm.cli import main
from tailorlm.training.checkpoint import TrainState, list_checkpoints, load_checkpoint, save_checkpoint
from tailorlm.training.optim import build_scheduler


def _weights(output: Path) -> dict[str, torch.Tensor]:
    files = sorted(output.glob("*.safetensors"))
    assert files, f"no weights in {output}"
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(str(f)).items()}


@pytest.mark.parametrize("method, extra", [
    ("lora", ("lora.dropout=0.1",)),  # dropout makes the result depend on the restored RNG state
    ("full", ("train.packing=false", "train.grad_accum=2")),  # length-grouped batches, accumulation
], ids=["lora-packed", "full-padded"])
def test_sigkill_then_resume_gives_the_same_loss_at_every_step_bitwise(tiny_llama_dir, tmp_path, method, extra):
    data = write_chat(tmp_path / "chat.jsonl")
    extra = (*extra, "train.save_every=3")
    killed_out, reference_out = tmp_path / "killed", tmp_path / "reference"
    killed_args = train_args(tiny_llama_dir, data, killed_out, method=method, extra=extra)
    # The crash runs in a subprocess while the uninterrupted reference runs here.
    killed = start_script("kill", 7, killed_args)
    with one_thread():
        assert main(["train", *train_args(tiny_llama_dir, data, reference_out, method=method, extra=extra)]) == 0
    _, stderr = killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL, stderr

    assert [p.name for p in list_checkpoints(killed_out)] == ["step-0000003", "step-0000006"]
    assert not (killed_out / "specialist.json").exists()
    position = json.loads((killed_out / "checkpoints/step-0000006/state.json").read_text())["train_state"]
    assert position["epoch"] >= 1 and position["batch_index"] > 0, "the kill should land mid-epoch after the first"
    # A save that was cut short must never be loaded.
    torn = killed_out / "checkpoints" / ".tmp-step-0000009-deadbeef"
    torn.mkdir()
    (torn / "state.json").write_text("{torn", encoding="utf-8")

    with one_thread():
        assert main(["train", *killed_args, "--resume"]) == 0

    reference, resumed = losses(reference_out), losses(killed_out)
    assert sorted(resumed) == list(range(1, 13))
    assert {s: resumed[s] for s in range(7, 13)} == {s: reference[s] for s in range(7, 13)}
    assert resumed[12] != resumed[6]  # training moved: equal curves are not two copies of a constant
    ref_weights, res_weights = _weights(reference_out), _weights(killed_out)
    assert ref_weights.keys() == res_weights.keys()
    assert all(torch.equal(ref_weights[k], res_weights[k]) for k in ref_weights)
    assert not torn.exists()  # the next save cleaned it up


def test_ctrl_c_checkpoints_prints_how_to_resume_and_exits_130(tiny_llama_dir, tmp_path):
    data = write_chat(tmp_path / "chat.jsonl")
    output = tmp_path / "run"
    args = train_args(tiny_llama_dir, data, output, steps=8)
    run = start_script("sleep", 0.5, args)
    deadline = time.monotonic() + 90
    for line in run.stdout:  # "step N" after each step
        if line.strip() == "step 2" or time.monotonic() > deadline:
            break
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "--resume" in stderr
    saved = list_checkpoints(output)
    assert len(saved) == 1
    stopped_at = int(saved[0].name.split("-")[1])
    assert 2 <= stopped_at < 8  # it finished the step it was in, then stopped
    assert max(losses(output)) == stopped_at
    assert not (output / "specialist.json").exists()

    with one_thread():
        assert main(["train", *args, "--resume"]) == 0
    assert sorted(losses(output)) == list(range(1, 9))
    assert json.loads((output / "specialist.json").read_text())["steps"] == 8


def test_resuming_a_finished_run_changes_nothing_and_reports_it(tiny_llama_dir, tmp_path, capsys):
    data = write_chat(tmp_path / "chat.jsonl", count=8)
    args = train_args(tiny_llama_dir, data, tmp_path / "run", steps=2, extra=("train.save_every=1",))
    with one_thread():
        assert main(["train", *args]) == 0
    checkpoints = {p: (p / "trainable.safetensors").read_bytes() for p in list_checkpoints(tmp_path / "run")}
    assert [p.name for p in checkpoints] == ["step-0000001", "step-0000002"]
    capsys.readouterr()
    with one_thread():
        assert main(["train", *args, "--resume"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert {p: (p / "trainable.safetensors").read_bytes() for p in list_checkpoints(tmp_path / "run")} == checkpoints


def _tiny_training_objects(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=True)
    scheduler = build_scheduler(optimizer, total_steps=10, warmup_steps=2, schedule="cosine")
    return model, optimizer, scheduler


def _step(model, optimizer, scheduler) -> float:
    loss = model(torch.randn(8, 4)).pow(2).mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return float(loss.detach())


def test_checkpoint_round_trip_restores_weights_optimizer_scheduler_and_rng(tmp_path):
    model, optimizer, scheduler = _tiny_training_objects()
    for _ in range(3):
        _step(model, optimizer, scheduler)
    state = TrainState(step=3, epoch=1, batch_index=2, tokens_seen=99)
    path = save_checkpoint(tmp_path, model, optimizer, scheduler, state, keep_last=2)
    expected = [_step(model, optimizer, scheduler) for _ in range(3)]

    model2, optimizer2, scheduler2 = _tiny_training_objects(seed=1)
    torch.manual_seed(123)
    restored = load_checkpoint(path, model2, optimizer2, scheduler2)
    assert (restored.step, restored.epoch, restored.batch_index, restored.tokens_seen) == (3, 1, 2, 99)
    assert [_step(model2, optimizer2, scheduler2) for _ in range(3)] == expected
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))


def test_housekeeping_keeps_the_last_k_and_the_best(tmp_path):
    model, optimizer, scheduler = _tiny_training_objects()
    for step in range(1, 7):
        save_checkpoint(tmp_path, model, optimizer, scheduler, TrainState(step=step, best_step=2), keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000002", "step-0000005", "step-0000006"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == \
        ["step-0000002", "step-0000005", "step-0000006"]


def test_a_save_that_fails_leaves_no_checkpoint_and_the_old_ones_intact(tmp_path, monkeypatch):
    import tailorlm.training.checkpoint as checkpoint

    model, optimizer, scheduler = _tiny_training_objects()
    save_checkpoint(tmp_path, model, optimizer, scheduler, TrainState(step=1), keep_last=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints/step-0000001").iterdir()}
    calls = []

    def failing_save(tensors, filename, *a, **k):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError("disk full")
        return save_file(tensors, filename, *a, **k)

    monkeypatch.setattr(checkpoint, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, model, optimizer, scheduler, TrainState(step=2), keep_last=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000001"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints/step-0000001").iterdir()} == before


def test_incomplete_checkpoint_folders_are_never_listed(tmp_path):
    model, optimizer, scheduler = _tiny_training_objects()
    save_checkpoint(tmp_path, model, optimizer, scheduler, TrainState(step=4), keep_last=2)
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-0000009-0badc0de").mkdir()
    (root / ".tmp-step-0000009-0badc0de" / "state.json").write_text("{}")
    (root / "step-0000008").mkdir()  # a folder without state.json is not a checkpoint
    assert list_checkpoints(tmp_path) == [root / "step-0000004"]
