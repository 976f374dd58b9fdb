"""`tailor data check FILE_OR_RECIPE`: the pre-flight report on a data file or a recipe's data."""

from __future__ import annotations

import argparse
import json
import sys

from tailorlm.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="report rows, token lengths, truncation, duplicates, overlap, masks and personal data",
                           description="Check a data file or a recipe's data before training. Exit code 1 when there are errors.")
    check.add_argument("source", metavar="FILE_OR_RECIPE", help="a data file or folder, or a recipe (.yaml) with a data: section")
    check.add_argument("--model", metavar="REF", help="tokenizer to measure with (default: the recipe's model, else smollm2-135m-instruct)")
    check.add_argument("--max-length", type=int, metavar="N", help="truncation length in tokens (default: the recipe's, else the model's context)")
    check.add_argument("--format", metavar="F", help="input format instead of detecting it (alpaca, messages, text_label, ...)")
    check.add_argument("--column", action="append", default=[], metavar="CANONICAL=ACTUAL",
                       help="map a canonical column to your column, e.g. --column text=sentence (repeatable)")
    check.add_argument("--json", action="store_true", help="print the report as JSON on stdout, nothing else")
    check.add_argument("--redact", metavar="OUT", help="also write a copy of the data file with personal data replaced")


def run(args: argparse.Namespace) -> int:
    from tailorlm.data.checks import check_data, redact_data, render_report

    columns = _columns(args.column)
    if args.redact:  # first, so that a refused output path fails before the (slower) check
        done = redact_data(args.source, args.redact)
        replaced = ", ".join(f"{n} {kind}" for kind, n in done.replaced.items()) or "nothing to replace"
        print(f"wrote a redacted copy to {done.path} ({done.format}): {replaced}", file=sys.stderr if args.json else sys.stdout)
    report = check_data(args.source, model=args.model, max_length=args.max_length, format=args.format,
                        columns=columns, progress=not args.json)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        render_report(report)
    return 1 if report.has_errors else 0


def _columns(pairs: list[str]) -> dict[str, str] | None:
    """--column canonical=actual flags as a mapping."""
    columns = {}
    for pair in pairs:
        canonical, sep, actual = pair.partition("=")
        if not sep or not canonical.strip() or not actual.strip():
            raise ConfigError("bad --column", found=repr(pair), expected="canonical=actual, e.g. --column text=sentence")
        columns[canonical.strip()] = actual.strip()
    return columns or None
