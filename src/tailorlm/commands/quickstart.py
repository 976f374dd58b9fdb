"""`tailor quickstart`: tailor the built-in model to finance news sentiment four ways, and say which won."""

from __future__ import annotations

import argparse
import sys

from tailorlm.quickstart import OUTPUTS, run_quickstart


def add_arguments(parser: argparse.ArgumentParser) -> None:
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true",
                      help="the larger settings: all 180 test examples and 300 P-tuning / 100 LoRA steps (minutes "
                           "on a GPU, about 40 minutes on a 2-core CPU)")
    size.add_argument("--smoke", action="store_true",
                      help="a tiny size that checks the whole path in about a minute (12 test examples, 2 training "
                           "steps); its scores mean nothing")
    parser.add_argument("--output", metavar="DIR",
                        help=f"folder for the runs, leaderboard.json, report.html and best/ (default: "
                             f"{OUTPUTS['default']}, or {OUTPUTS['full']} / {OUTPUTS['smoke']} for --full / --smoke); "
                             "finished strategies in it are reused")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tailorlm.commands.compare import leaderboard_table

    size = "full" if args.full else "smoke" if args.smoke else "default"
    result = run_quickstart(size=size, output=args.output)
    board = result.board.data
    # Written to a file or a pipe, the leaderboard gets the room of a wide terminal instead of rich's 80 columns.
    out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    out.print(leaderboard_table(board))
    out.print(board["recommendation"]["text"], markup=False)
    for note in board.get("notes", []):
        out.print(f"note: {note}", markup=False)
    out.print(f"data check: {result.data_errors} errors, {result.data_warnings} warnings", markup=False)
    out.print(f"report: {result.report}", markup=False)
    if result.best is None:
        out.print("no strategy finished, so there is no specialist to chat with; the errors are in the report",
                  markup=False)
        return 1
    best = result.board.best
    out.print(f"best specialist: {result.best} ({best['strategy']} on {best['model']})", markup=False)
    out.print("\nuse it:", markup=False)
    out.print(f"  {result.command('chat')}", markup=False)
    out.print(f"  {result.command('serve')}", markup=False)
    return 0
