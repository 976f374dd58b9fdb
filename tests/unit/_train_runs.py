"""Shared pieces of the training-engine tests that run `tailor train` on the tiny random Llama."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

ANSWERS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.",
    "Patients with diabetes should check their blood sugar.",
    "The court held that the statement was hearsay.",
    "Shares rose 5% after the earnings report.",
    "hello hi thanks please answer question",
]
SCRIPT = Path(__file__).with_name("_interruptible_train.py")


def write_chat(path: Path, count: int = 20) -> Path:
    """A chat JSONL file of `count` short conversations."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(count):
            messages = [{"role": "user", "content": f"question {i}: what about the fox?"},
                        {"role": "assistant", "content": ANSWERS[i % len(ANSWERS)]}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def train_args(model: Path, data: Path, output: Path, *, method: str = "lora", steps: int = 12,
               extra: tuple[str, ...] = ()) -> list[str]:
    """`tailor train` arguments (without the verb) for a small, fast run on the whole data file."""
    args = ["--model", str(model), "--data", str(data), "--method", method, "--objective", "sft",
            "--output", str(output), "--max-steps", str(steps)]
    for setting in ("train.lr=1e-2", "data.split={}", "train.max_length=128", "train.batch_size=2",
                    "train.tensorboard=false", "train.warmup_steps=2", *extra):
        args += ["--set", setting]
    return args


def child_env() -> dict[str, str]:
    """Environment for a training subprocess: one thread (fast on a busy 2-core machine, and deterministic)."""
    src = str(Path(__file__).resolve().parents[2] / "src")
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))


def start_script(mode: str, value: str | int, args: list[str]) -> subprocess.Popen:
    """Start `tailor train ARGS` in a subprocess that is killed (mode 'kill') or slowed ('sleep') at each step."""
    return subprocess.Popen([sys.executable, str(SCRIPT), mode, str(value), *args], env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def one_thread():
    """Run in-process training with one thread, like the subprocesses, so results can be compared bitwise."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def losses(output: Path) -> dict[int, float]:
    """Training loss by step from metrics.jsonl (the latest record of each step, as after a resume)."""
    from tailorlm.training.tracking import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(output) if "loss" in r}
