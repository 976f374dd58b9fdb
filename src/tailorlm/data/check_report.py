"""Print a `DataReport` for people: one table of splits, overlap, labels, a sample, then errors and warnings."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from tailorlm.data.checks import DataReport


def render_report(report: DataReport, console: Console | None = None) -> None:
    """Print the report with rich; errors in red, warnings in yellow, a one-line verdict at the end."""
    console = console or Console()
    console.print(f"[bold]data check[/bold] {escape(report.source)}")
    console.print(f"  tokenizer: {escape(report.tokenizer)}")
    if report.end_of_turn is not None or "default" in report.chat_template:
        eot = f", end of turn {escape(report.end_of_turn)}" if report.end_of_turn else ", no end-of-turn token"
        console.print(f"  chat template: {escape(report.chat_template)}{eot}")
    if report.max_length is None:
        console.print(f"  max length: {escape(report.max_length_from)}")
    else:
        console.print(f"  max length: {report.max_length} tokens ({escape(report.max_length_from)})")
    console.print(_splits_table(report))
    labelled = [s for s in report.splits if s.labels]
    if labelled:
        table = Table(title="labels", title_justify="left")
        table.add_column("split")
        table.add_column("distribution")
        for split in labelled:
            table.add_row(split.name, ", ".join(f"{escape(k)}: {v}" for k, v in (split.labels or {}).items()))
        console.print(table)
    if report.overlaps:
        console.print(_overlap_table(report))
    sample = next((s for s in report.splits if s.sample), None)
    if sample is not None:
        marks = "" if sample.kind == "classification" else " (trained spans in [[ ]])"
        title = f"sample from {sample.name}{marks}"
        console.print(Panel(escape(sample.sample or ""), title=title, title_align="left", expand=False))
    for finding in report.findings:
        colour = "red" if finding.level == "error" else "yellow"
        split = f"{finding.split}: " if finding.split else ""
        console.print(f"[{colour}]{finding.level}[/{colour}] {escape(f'[{finding.code}] {split}{finding.message}')}")
        if finding.origins:
            console.print(f"    rows: {escape('; '.join(finding.origins))}")
    errors, warnings = len(report.errors), len(report.warnings)
    verdict = "[red]not ready[/red]" if errors else "[green]ready[/green]"
    console.print(f"{verdict}: {errors} error{'' if errors == 1 else 's'}, {warnings} warning{'' if warnings == 1 else 's'}")


def _splits_table(report: DataReport) -> Table:
    """One column per split, one row per measure (splits are few, measures many)."""
    table = Table(title="splits", title_justify="left")
    table.add_column("")
    for split in report.splits:
        table.add_column(escape(split.name), justify="right")
    rows: list[tuple[str, list[str]]] = [
        ("rows", [str(s.rows) for s in report.splits]),
        ("format", [escape(f"{s.format} ({s.kind})") for s in report.splits]),
    ]
    if any(s.carved_share for s in report.splits):
        rows.append(("carved from train", [f"{s.carved_share:g}" if s.carved_share else "-" for s in report.splits]))
    for key in ("p50", "p90", "p95", "p99", "max"):
        rows.append((f"tokens {key}", [str(s.tokens.get(key, "-")) for s in report.splits]))
    rows += [
        ("truncated", [_count(s.truncated) for s in report.splits]),
        ("empty", [_count(s.empty) for s in report.splits]),
        ("duplicates", [_count(s.duplicates) for s in report.splits]),
    ]
    if any(s.assistant_turns or s.chats_without_assistant for s in report.splits):
        rows += [
            ("assistant turns", [str(s.assistant_turns) for s in report.splits]),
            ("  without end of turn", [_count(s.turns_without_end_of_turn, "red") for s in report.splits]),
            ("chats without assistant", [_count(s.chats_without_assistant, "red") for s in report.splits]),
        ]
    rows.append(("personal data", [", ".join(f"{v} {k}" for k, v in s.personal_data.items()) or "none" for s in report.splits]))
    for label, cells in rows:
        table.add_row(label, *cells)
    return table


def _overlap_table(report: DataReport) -> Table:
    """Exact and near-duplicate overlap between each pair of splits."""
    table = Table(title="overlap between splits", title_justify="left")
    for name in ("splits", "exact", "near duplicates", "example"):
        table.add_column(name)
    for item in report.overlaps:
        example: Any = ""
        if item.exact_pairs:
            example = f"{item.exact_pairs[0][0]} = {item.exact_pairs[0][1]}"
        elif item.near_pairs:
            example = f"{item.near_pairs[0][0]} ~ {item.near_pairs[0][1]} ({item.near_pairs[0][2]:.2f})"
        table.add_row(f"{item.b} in {item.a}", _count(item.exact), _count(item.near), escape(example))
    return table


def _count(n: int, colour: str = "yellow") -> str:
    return f"[{colour}]{n}[/{colour}]" if n else "0"
