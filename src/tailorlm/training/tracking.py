"""Watching a run: a progress bar, `metrics.jsonl`, TensorBoard event files and (when asked) MLflow."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Tracker:
    """Writes every logged record to metrics.jsonl and the optional backends, and drives the progress bar."""

    def __init__(self, output: Path, *, total_steps: int, start_step: int = 0, tensorboard: bool = True,
                 mlflow: bool = False, run_name: str = "", console: Console | None = None,
                 enabled: bool = True) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.metrics_file = output / "metrics.jsonl"
        self.notes: list[str] = []
        self._tb = self._mlflow = None
        self._progress: Progress | None = None
        if not enabled:
            return
        if tensorboard:
            self._tb = _tensorboard_writer(output / "tensorboard", self.notes)
        if mlflow:
            self._mlflow = _mlflow_run(run_name, self.notes)
        self._progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self._task = self._progress.add_task("train", total=total_steps, completed=start_step, status="")
        self._progress.start()
        for note in self.notes:
            self.console.print(f"[yellow]note:[/yellow] {note}")

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (must hold `step`); training records also update the progress bar."""
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with self.metrics_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        step = int(record["step"])
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("step", "time")}
        if self._tb is not None:
            for key, value in numbers.items():
                self._tb.add_scalar(key, value, step)
        if self._mlflow is not None:
            self._mlflow.log_metrics(numbers, step=step)
        if self._progress is not None and "loss" in record:
            status = f"loss {record['loss']:.4f}  lr {record.get('lr', 0):.2e}  {record.get('tokens_per_second', 0):.0f} tok/s"
            self._progress.update(self._task, completed=step, status=status)
        elif "eval_loss" in record:
            self.console.print(f"step {step}: " + "  ".join(f"{k} {v:.4f}" for k, v in numbers.items()))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            self._mlflow.end_run()


def read_metrics(output: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; after a resume, the latest record of each (step, kind) wins."""
    path = output / "metrics.jsonl"
    if not path.is_file():
        return []
    latest: dict[tuple[int, bool], dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            latest[(record["step"], "eval_loss" in record)] = record
    return [latest[k] for k in sorted(latest)]


def _tensorboard_writer(folder: Path, notes: list[str]) -> Any:
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            notes.append("TensorBoard logging is off: install tensorboardX (pip install tensorboardX)")
            return None
    return SummaryWriter(str(folder))


def _mlflow_run(name: str, notes: list[str]) -> Any:
    try:
        import mlflow
    except ImportError:
        notes.append("MLflow logging was asked for but mlflow is not installed (pip install mlflow)")
        return None
    mlflow.start_run(run_name=name or None)
    return mlflow
