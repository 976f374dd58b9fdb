"""DDP on CPU (gloo): `tailor train --nproc 2` follows the 1-process loss curve for the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from _train_runs import child_env, losses, one_thread, train_args, write_chat
from tailorlm.cli import main
from tailorlm.training.checkpoint import list_checkpoints


@pytest.mark.parametrize("method, grad_accum", [("lora", 3), ("full", 2)], ids=["lora-uneven-split", "full"])
def test_two_processes_follow_the_one_process_loss_curve(tiny_llama_dir, tmp_path, method, grad_accum):
    data = write_chat(tmp_path / "chat.jsonl")
    extra = (f"train.grad_accum={grad_accum}",)
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    ddp = subprocess.Popen(
        [sys.executable, "-m", "tailorlm", "train", *train_args(tiny_llama_dir, data, ddp_out, method=method, steps=4,
                                                                 extra=extra), "--nproc", "2"],
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with one_thread():
        assert main(["train", *train_args(tiny_llama_dir, data, single_out, method=method, steps=4, extra=extra)]) == 0
    _, stderr = ddp.communicate(timeout=180)
    assert ddp.returncode == 0, stderr

    single, distributed = losses(single_out), losses(ddp_out)
    assert sorted(distributed) == [1, 2, 3, 4]
    for step, loss in single.items():
        assert distributed[step] == pytest.approx(loss, rel=1e-4), f"step {step}"
    # Only rank 0 writes: one record per step, one checkpoint, one specialist, one summary line.
    records = [json.loads(line) for line in (ddp_out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [p.name for p in list_checkpoints(ddp_out)] == ["step-0000004"]
    assert json.loads((ddp_out / "specialist.json").read_text())["steps"] == 4
    assert stderr.count("steps per epoch") == 1
    assert "destroy_process_group" not in stderr and "Traceback" not in stderr
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    one, two = load_file(str(single_out / weights)), load_file(str(ddp_out / weights))
    assert all(torch.allclose(one[k], two[k], rtol=1e-4, atol=1e-6) for k in one)


def test_fewer_micro_batches_than_processes_is_refused_before_launching(tiny_llama_dir, tmp_path, capsys):
    data = write_chat(tmp_path / "chat.jsonl")
    output = tmp_path / "run"
    args = train_args(tiny_llama_dir, data, output, extra=("train.grad_accum=1",))
    assert main(["train", *args, "--nproc", "2"]) == 2
    message = capsys.readouterr().err
    assert "train.grad_accum" in message and "at least 2" in message
    assert not output.exists()


def test_each_process_gets_the_same_command_without_nproc():
    import argparse

    from tailorlm.commands.train import _command_line, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    given = ["recipe.yaml", "--model", "m", "--data", "d.jsonl", "--output", "out dir", "--max-steps", "5", "--nproc",
             "2", "--set", "lora.r=4", "--set", "data.split={eval: 0.2}", "--resume", "--quick"]
    args = parser.parse_args(given)
    relaunched = _command_line(args)
    assert relaunched[0] == "train" and "--nproc" not in relaunched
    again = vars(parser.parse_args(relaunched[1:]))
    assert again == {**vars(args), "nproc": 1}
