"""`tailor compare`: every tailoring strategy of a recipe, for every base model, on the same task; one report."""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML with task:, data:, base_models: and strategies:")
    parser.add_argument("--output", help="folder for the runs, leaderboard.json, report.html and best/ "
                                         "(default: the recipe's output:); finished strategies in it are reused")
    parser.add_argument("--quick", action="store_true",
                        help="merge the recipe's quick: settings (fewer test examples, fewer steps) over the others")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe setting, e.g. --set strategies.lora.train.max_steps=10 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tailorlm.evaluation.compare import compare

    console = Console(stderr=True)
    board = compare(args.recipe, output=args.output, quick=args.quick, overrides=args.set, console=console)
    out = Console()
    out.print(leaderboard_table(board.data))
    out.print(board.data["recommendation"]["text"])
    for note in board.data.get("notes", []):
        out.print(f"note: {note}")
    out.print(f"report: {board.output / 'report.html'}")
    if board.best:
        out.print(f"best specialist: {board.output / 'best'} ({board.best['strategy']} on {board.best['model']})")
    return 0 if board.best else 1


def leaderboard_table(board: dict[str, Any]) -> Any:
    """The leaderboard as a rich table: finished strategies best first, then failures with their error."""
    from rich.table import Table

    from tailorlm.evaluation import report

    table = Table(title=f"{board['task']}: {board['metric']} on {board['examples']} test examples")
    for column in ("strategy", "base model", f"{board['metric']} (95% CI)", "train time", "trainable", "peak memory",
                   "latency/example", "disk"):
        table.add_column(column, justify="left" if column in ("strategy", "base model") else "right")
    higher = board["higher_is_better"]
    ok = sorted(report.ok_entries(board), key=lambda e: -e["score"] if higher else e["score"])
    for e in ok:
        low, high = e.get("ci") or (e["score"], e["score"])
        table.add_row(e["strategy"], e["model"], f"{e['score']:.3f} ({low:.3f}-{high:.3f})",
                      report.format_seconds(e.get("train_seconds")), report.format_count(e.get("trainable_parameters")),
                      report.format_megabytes(e.get("peak_memory_mb")),
                      report.format_latency(e.get("seconds_per_example")), report.format_megabytes(e.get("disk_mb")))
    for e in board["entries"]:
        if e not in ok:
            table.add_row(e["strategy"], e["model"], "[red]failed[/red]", "", "", "", "", (e.get("error") or "")[:60])
    return table
