"""`tailor train`: fine-tune or pre-train with one loop, from a recipe and/or flags."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", help="recipe YAML (flags below override it)")
    parser.add_argument("--model", help="model reference: smollm2-135m-instruct, minilm-l6, a folder or a .gguf")
    parser.add_argument("--data", help="training data file (or set data.* in the recipe)")
    parser.add_argument("--method", help="full, freeze, lora, dora, ia3, prompt_tuning, p_tuning, prefix_tuning")
    parser.add_argument("--objective", help="pretrain, sft, classify, seq2seq")
    parser.add_argument("--output", help="folder for the specialist, checkpoints and metrics")
    parser.add_argument("--max-steps", type=int, help="optimizer steps to run")
    parser.add_argument("--epochs", type=float, help="passes over the training data (when --max-steps is not given)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any setting, e.g. --set train.lr=1e-4 --set lora.r=8 (repeatable)")
    parser.add_argument("--quick", action="store_true",
                        help="merge the recipe's quick: settings (a short run) over the others")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved settings and stop")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output")
    parser.add_argument("--overwrite", action="store_true", help="move an existing output folder aside and start anew")
    parser.add_argument("--nproc", type=int, default=1,
                        help="processes for data-parallel training (torchrun; DDP, or FSDP with --set train.fsdp=true)")


def resolve(args: argparse.Namespace) -> Any:
    """The run's settings (a RunConfig): the recipe, then the flags over it."""
    from tailorlm.training.config import resolve_config

    values = {"model": args.model, "data": args.data, "method": args.method, "objective": args.objective,
              "output": args.output, "train.max_steps": args.max_steps, "train.epochs": args.epochs}
    return resolve_config(args.recipe, values=values, overrides=args.set, quick=getattr(args, "quick", False))


def run(args: argparse.Namespace) -> int:
    from tailorlm.errors import ConfigError

    config = resolve(args)
    if args.nproc < 1:
        raise ConfigError("--nproc must be at least 1", key="nproc", found=str(args.nproc))
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other",
                          hint="Use --resume to continue the run in --output, or --overwrite to start again")
    config.train.check_processes(int(os.environ.get("WORLD_SIZE", args.nproc)), where=config.source)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from tailorlm.training.distributed import launch

        return launch(_command_line(args), args.nproc)
    if int(os.environ.get("RANK", "0")) == 0:
        print("# resolved settings\n" + yaml.safe_dump(config.to_dict(), sort_keys=False), file=sys.stderr)
    if args.dry_run:
        if isinstance(config.model, dict):  # a model built from its config: what it is, before anything runs
            from pathlib import Path

            from tailorlm.models.build import summary

            print(summary(config.model, base_dir=Path(config.base_dir), where=config.source), file=sys.stderr)
        return 0
    from tailorlm.training.loop import train

    result = train(config, resume=args.resume, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if result.interrupted:
        return 130
    print(f"trained {result.steps} steps in {result.seconds:.0f} s ({result.tokens_per_second:.0f} tokens/s); "
          f"final loss {result.final_loss:.4f}; specialist saved to {result.output}")
    return 0


def _command_line(args: argparse.Namespace) -> list[str]:
    """This `tailor train` command without --nproc, for each process that torchrun starts."""
    argv = ["train"] + ([args.recipe] if args.recipe else [])
    for flag in ("model", "data", "method", "objective", "output", "max_steps", "epochs"):
        value = getattr(args, flag)
        if value is not None:
            argv += ["--" + flag.replace("_", "-"), str(value)]
    for setting in args.set:
        argv += ["--set", setting]
    argv += [f"--{flag}" for flag in ("quick", "resume", "overwrite", "debug") if getattr(args, flag, False)]
    return argv
