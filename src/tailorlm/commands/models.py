"""`tailor models list | pull NAME | info REF [--json]`: model references (built-in packs, folders, GGUF, hub ids)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", metavar="COMMAND", required=True)
    listing = sub.add_parser("list", help="the built-in packs (pulled or not) and every other cached model")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pull = sub.add_parser("pull", help="fetch a built-in pack, convert a .gguf file or download a hub id, once")
    pull.add_argument("name", help="built-in pack (smollm2-135m-instruct, minilm-l6), .gguf file or hub id org/name")
    pull.add_argument("--quiet", action="store_true", help="no progress output")
    info = sub.add_parser("info", help="architecture, parameters, vocabulary, context length, chat template, disk size")
    info.add_argument("ref", help="built-in pack, model folder, .gguf file, cached model or hub id")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    from tailorlm.models import hub, info

    if args.models_command == "list":
        rows = hub.list_models()
        if args.json:
            print(json.dumps([row.to_dict() for row in rows], indent=2))
        else:
            _print_table(rows)
    elif args.models_command == "pull":
        print(hub.pull(args.name, progress=not args.quiet))
    else:
        report = info.model_info(args.ref)
        print(json.dumps(report.to_dict(), indent=2) if args.json else info.format_info(report))
    return 0


def _print_table(rows: list) -> None:
    from rich.console import Console
    from rich.table import Table

    from tailorlm.models.hub import models_dir
    from tailorlm.models.info import format_bytes

    table = Table(title=f"models in {models_dir()}", title_justify="left")
    for column in ("name", "kind", "pulled", "size", "summary"):
        table.add_column(column, overflow="fold")
    for row in rows:
        size = format_bytes(row.disk_bytes) if row.disk_bytes is not None else "-"
        table.add_row(row.name, row.kind, "yes" if row.pulled else "no", size, row.summary)
    Console(soft_wrap=False).print(table)
