"""`tailor estimate`: parameters, memory and time of a training run, timed on this machine."""

from __future__ import annotations

import argparse
import json

from tailorlm.commands.train import add_arguments as add_train_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")


def run(args: argparse.Namespace) -> int:
    from tailorlm.training.config import resolve_config
    from tailorlm.training.estimate import estimate

    values = {"model": args.model, "data": args.data, "method": args.method, "objective": args.objective,
              "output": args.output or "estimate", "train.max_steps": args.max_steps, "train.epochs": args.epochs}
    result = estimate(resolve_config(args.recipe, values=values, overrides=args.set))
    print(json.dumps(result.to_dict(), indent=1) if args.json else result.render())
    return 0
