"""`tailor eval`: score one specialist or model on a task's split, writing metrics.json and predictions.jsonl."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="SPECIALIST_OR_MODEL",
                        help="a specialist folder (from tailor train / compare / rag specialist) or a model reference")
    parser.add_argument("--task", required=True, metavar="RECIPE.yaml", help="recipe with task: and data: sections")
    parser.add_argument("--split", default="test", choices=("train", "eval", "test"), help="split to score (default test)")
    parser.add_argument("--limit", type=int, metavar="N", help="score only the first N examples, for a quick look")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N", help="examples per forward pass (default 8)")
    parser.add_argument("--max-new-tokens", type=int, metavar="N",
                        help="longest generated answer (default by answer form: label 16, text/span 64, number 256, code 384)")
    parser.add_argument("--scoring", default="auto", choices=("auto", "choice", "generate", "head", "perplexity"),
                        help="how answers are made (default: constrained choice for labels, generation otherwise)")
    parser.add_argument("--output", metavar="DIR", help="folder for metrics.json and predictions.jsonl "
                        "(default runs/eval/<task>-<split>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe setting, e.g. --set task.metric=accuracy (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from tailorlm.evaluation.evaluator import evaluate
    from tailorlm.tasks.task import load_task

    task = load_task(args.task, overrides=args.set)
    output = Path(args.output) if args.output else Path("runs") / "eval" / f"{task.name}-{args.split}"
    result = evaluate(args.target, task, split=args.split, limit=args.limit, output=output, batch_size=args.batch_size,
                      max_new_tokens=args.max_new_tokens, scoring=args.scoring, progress=not args.no_progress)
    low, high = result.ci
    print(f"{task.name} ({args.split}, {result.examples} examples, {result.scoring}): "
          f"{result.metric} {result.score:.4f} [95% CI {low:.4f}-{high:.4f}]; "
          f"{result.seconds_per_example * 1000:.0f} ms per example, {result.tokens_per_second:.0f} tokens/s")
    generated = result.extra.get("generate")
    if generated:
        print(f"  by free generation: {result.metric} {generated['score']:.4f} "
              f"[95% CI {generated['ci_low']:.4f}-{generated['ci_high']:.4f}], {generated['parsed']:.0%} of answers parsed")
    print(f"wrote {output / 'metrics.json'} and {output / 'predictions.jsonl'}")
    return 0
