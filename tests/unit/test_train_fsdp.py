"""FSDP on CPU (gloo): `tailor train --nproc 2 --set train.fsdp=true` follows the 1-process run, writes the same
whole-tensor checkpoints and specialist, and resumes exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _train_runs import child_env, losses, one_thread, train_args, write_chat
from tailorlm.cli import main
from tailorlm.strategies.base import load_specialist
from tailorlm.training.checkpoint import list_checkpoints
from tailorlm.training.tracking import read_metrics

FSDP = ("--nproc", "2", "--set", "train.fsdp=true")


def _start_fsdp(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tailorlm", "train", *args, *FSDP], env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(run: subprocess.Popen) -> str:
    _, stderr = run.communicate(timeout=180)
    assert run.returncode == 0, stderr
    assert "Traceback" not in stderr and "destroy_process_group" not in stderr
    return stderr


def _tensors(file: Path) -> dict[str, torch.Tensor]:
    return load_file(str(file))


@pytest.mark.parametrize("method, grad_accum", [("full", 3), ("lora", 2)], ids=["full-uneven-split", "lora"])
def test_fsdp_follows_the_one_process_run_and_saves_whole_tensors(tiny_llama_dir, tmp_path, method, grad_accum):
    data = write_chat(tmp_path / "chat.jsonl")
    extra = (f"train.grad_accum={grad_accum}",)
    fsdp_out, single_out = tmp_path / "fsdp", tmp_path / "single"
    sharded = _start_fsdp(train_args(tiny_llama_dir, data, fsdp_out, method=method, steps=4, extra=extra))
    with one_thread():
        assert main(["train", *train_args(tiny_llama_dir, data, single_out, method=method, steps=4, extra=extra)]) == 0
    stderr = _finish(sharded)

    single, distributed = losses(single_out), losses(fsdp_out)
    assert sorted(distributed) == [1, 2, 3, 4]
    for step, loss in single.items():
        assert distributed[step] == pytest.approx(loss, rel=1e-4), f"step {step}"
    norms = [[r["grad_norm"] for r in read_metrics(out) if "grad_norm" in r] for out in (single_out, fsdp_out)]
    assert norms[1] == pytest.approx(norms[0], rel=1e-4)  # a float: the norm over every process's shards
    assert stderr.count("steps per epoch") == 1  # only the main process reports and writes

    # The checkpoint is the one a single process writes: same files, names and whole shapes (no shards).
    ours, theirs = list_checkpoints(fsdp_out), list_checkpoints(single_out)
    assert [p.name for p in ours] == [p.name for p in theirs] == ["step-0000004"]
    assert sorted(p.name for p in ours[0].iterdir()) == sorted(p.name for p in theirs[0].iterdir())
    for name in ("trainable.safetensors", "optimizer.safetensors"):
        a, b = _tensors(theirs[0] / name), _tensors(ours[0] / name)
        assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}, name
        assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a), name
    state = [json.loads((p / "state.json").read_text()) for p in (theirs[0], ours[0])]
    assert state[0]["optimizer_param_groups"] == state[1]["optimizer_param_groups"]

    # The specialist holds whole weights (tied head written once, as by one process) and loads with the same logits.
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    one, two = _tensors(single_out / weights), _tensors(fsdp_out / weights)
    assert {k: v.shape for k, v in one.items()} == {k: v.shape for k, v in two.items()}
    assert all(torch.allclose(one[k], two[k], rtol=1e-4, atol=1e-5) for k in one)
    assert json.loads((fsdp_out / "specialist.json").read_text())["steps"] == 4
    ids = torch.arange(3, 15)[None]  # (1, 12)
    with torch.no_grad():
        expected = load_specialist(single_out)[0](input_ids=ids).logits
        found = load_specialist(fsdp_out)[0](input_ids=ids).logits
    assert torch.allclose(found, expected, rtol=1e-4, atol=1e-4)


def test_fsdp_resumes_exactly_where_it_stopped(tiny_llama_dir, tmp_path):
    """A run stopped after 3 steps and resumed gives the uninterrupted FSDP run's losses and weights bitwise."""
    data = write_chat(tmp_path / "chat.jsonl")
    # A constant schedule, so that the 3-step run and the 6-step run share their learning rates.
    extra = ("train.grad_accum=3", "train.schedule=constant", "train.save_every=3")
    stopped_out, reference_out = tmp_path / "stopped", tmp_path / "reference"
    reference = _start_fsdp(train_args(tiny_llama_dir, data, reference_out, method="full", steps=6, extra=extra))
    _finish(_start_fsdp(train_args(tiny_llama_dir, data, stopped_out, method="full", steps=3, extra=extra)))
    _finish(reference)
    assert [p.name for p in list_checkpoints(stopped_out)] == ["step-0000003"]

    _finish(_start_fsdp([*train_args(tiny_llama_dir, data, stopped_out, method="full", steps=6, extra=extra),
                         "--resume"]))
    expected, resumed = losses(reference_out), losses(stopped_out)
    assert sorted(resumed) == list(range(1, 7))
    assert {s: resumed[s] for s in (4, 5, 6)} == {s: expected[s] for s in (4, 5, 6)}
    assert resumed[6] != resumed[3]
    a, b = _tensors(reference_out / "model.safetensors"), _tensors(stopped_out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fsdp_with_one_process_is_refused_before_any_work(tiny_llama_dir, tmp_path, capsys):
    data = write_chat(tmp_path / "chat.jsonl")
    output = tmp_path / "run"
    assert main(["train", *train_args(tiny_llama_dir, data, output, extra=("train.fsdp=true",))]) == 2
    message = capsys.readouterr().err
    assert "train.fsdp" in message and "--nproc 2" in message
    assert not output.exists()


def test_each_transformer_block_is_one_fsdp_unit_with_or_without_peft(tiny_llama_dir):
    import peft

    from tailorlm.models.load import load_model
    from tailorlm.training.fsdp import transformer_blocks
    from tailorlm.training.loss import unwrap_model

    model, _ = load_model(str(tiny_llama_dir), dtype=torch.float32, device="cpu")
    assert transformer_blocks(model) == list(model.model.layers)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    assert transformer_blocks(unwrap_model(wrapped)) == list(model.model.layers)
    # A model that names no blocks: the entries of its longest module list.
    plain = torch.nn.Sequential(torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)]), torch.nn.ModuleList([torch.nn.ReLU()]))
    assert transformer_blocks(plain) == list(plain[0])
