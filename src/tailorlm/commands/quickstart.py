"""`tailor quickstart`: run the built-in defaults end to end."""

from __future__ import annotations

import argparse

from tailorlm.quickstart import DEFAULT_QUESTION, run_quickstart


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--question", default=DEFAULT_QUESTION, help="the question to ask the built-in instruct model")


def run(args: argparse.Namespace) -> int:
    result = run_quickstart(question=args.question)
    print(f"\nquickstart done: data check found {result.data_errors} errors, {result.data_warnings} warnings")
    print("next: tailor data check YOUR_FILE.jsonl   |   tailor models info smollm2-135m-instruct")
    return 0
