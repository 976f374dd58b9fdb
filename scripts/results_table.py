#!/usr/bin/env python3
"""Write the results table of the recipes into recipes/README.md, from the runs the recipes left behind.

Usage (from the repository root)::

    python scripts/results_table.py            # rewrite the table between the results markers
    python scripts/results_table.py --check    # exit 1 when recipes/README.md is not up to date

Every recipe under recipes/ names the command that runs it on its first line (``# tailor compare ... --quick``)
and its run folder in ``output:`` (a ``--quick`` training run writes to its ``quick: {output: ...}`` when it names
one). A comparison's numbers come from OUTPUT/leaderboard.json (written by ``tailor compare``, see
tailorlm.evaluation.compare.build_leaderboard); a training run's (``tailor pretrain``, ``tailor train``) from
OUTPUT/specialist.json, metrics.jsonl and its last checkpoint's state.json. The wall time and hardware of a command
come from runs/recipe_times.json when scripts/run_recipes.py recorded them. Run folders are not kept in git: a
recipe whose folder holds no finished run keeps the row the table already has for it (from an earlier run, marked so
with a footnote), and one that has never been run is listed as "not run", with its command. Only the text between
the markers changes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
README = Path("recipes") / "README.md"
TIMES = Path("runs") / "recipe_times.json"
START, END = "<!-- results:start -->", "<!-- results:end -->"
HARDWARE = "2-core CPU, no GPU"
"""Where the runs were made, for runs that do not record it (runs/recipe_times.json or a `hardware` field do)."""
COMPARE_VERBS = ("compare", "quickstart")
TRAIN_VERBS = ("pretrain", "train")
NONE = "—"


@dataclass
class Recipe:
    """A recipe file: the command on its first line and the run folder that command writes."""

    path: Path
    """Relative to the repository root."""
    command: str
    output: Path | None
    data: dict[str, Any]

    @property
    def verb(self) -> str:
        words = self.command.split()
        return words[1] if len(words) > 1 and words[0] == "tailor" else ""


@dataclass
class Table:
    """Rows of one table, with the footnotes its cells point at (numbered from 1, in order of first use)."""

    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> str:
        if text not in self.notes:
            self.notes.append(text)
        return f"[{self.notes.index(text) + 1}]"


def first_line_command(text: str) -> str:
    """The command on a recipe's first line, without a trailing note set off by spaces
    (`# tailor pretrain r.yaml --quick   (without ...)`); "" when the first line is not a comment."""
    first = text.splitlines()[0] if text else ""
    return first.lstrip("#").split("   (")[0].strip() if first.startswith("#") else ""


def read_recipes(root: Path) -> list[Recipe]:
    """Every recipes/**/*.yaml under root, sorted by path."""
    recipes = []
    for path in sorted((root / "recipes").rglob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        command = first_line_command(text)
        data = yaml.safe_load(text)
        data = data if isinstance(data, dict) else {}
        output = data.get("output")
        quick = data.get("quick")
        if "--quick" in command.split() and isinstance(quick, dict) and isinstance(quick.get("output"), str):
            output = quick["output"]
        recipes.append(Recipe(path=path.relative_to(root), command=command,
                              output=Path(output) if isinstance(output, str) and output else None, data=data))
    return recipes


def fmt(value: float) -> str:
    return f"{value:.3f}"


def fmt_seconds(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds:.0f} s ({seconds / 60:.1f} min)"


def link(recipe: Recipe) -> str:
    target = recipe.path.relative_to("recipes").as_posix()  # relative to recipes/README.md
    return f"[{target}]({target})"


def measured(times: dict[str, Any], recipe: Recipe) -> dict[str, Any] | None:
    """The run_recipes.py record of this recipe's command, when it finished (exit code 0)."""
    record = times.get(recipe.path.as_posix())
    return record if isinstance(record, dict) and record.get("returncode") == 0 else None


def comparison_seconds(board: dict[str, Any]) -> float:
    """Fitting plus answering the test split, summed over the entries: fit_seconds + seconds_per_example x examples."""
    total = 0.0
    for entry in board["entries"]:
        total += entry.get("fit_seconds") or 0.0
        if entry.get("status") == "ok":
            total += (entry.get("seconds_per_example") or 0.0) * (entry.get("examples") or 0)
    return total


def comparison_row(recipe: Recipe, board: dict[str, Any], record: dict[str, Any] | None, table: Table) -> list[str]:
    """One finished comparison: base model (zero-shot) score, best score with its 95% CI, strategy, time, size."""
    task = f"{board['task']} ({board['metric']})"
    if board.get("quick") is False:
        task += " " + table.note("A full run (without --quick): every test example, the recipe's full training steps.")
    if record is not None:
        seconds = fmt_seconds(record["wall_seconds"])
    else:
        seconds = f"{fmt_seconds(comparison_seconds(board))} " + table.note(
            "Not measured by scripts/run_recipes.py: the sum over the strategies of fitting (fit_seconds: prompt "
            "choice, training) and answering the test split (seconds_per_example × examples) from leaderboard.json; "
            "loading models, the retention check and writing the report are not counted, and a strategy reused from "
            "an earlier run counts the time it took then.")
    hardware = (record or {}).get("hardware") or board.get("hardware") or HARDWARE
    best = board.get("best")
    if not best:
        failed = table.note("Every strategy failed; their errors are in the run folder's leaderboard.json.")
        return [link(recipe), task, NONE, f"{NONE} {failed}", NONE, seconds, str(board["examples"]), hardware]
    winner = next(e for e in board["entries"] if e["model"] == best["model"] and e["strategy"] == best["strategy"])
    low, high = winner["ci"]
    return [link(recipe), task, base_score(board, best["model"], table),
            f"{fmt(winner['score'])} ({fmt(low)}–{fmt(high)})", f"{best['strategy']} ({best['model']})", seconds,
            str(board["examples"]), hardware]


def base_score(board: dict[str, Any], model: str, table: Table) -> str:
    """The zero-shot score of the winning base model, or a dash with a footnote that says why there is none."""
    entries = [e for e in board["entries"] if e["strategy"] == "zero_shot"]
    entry = next((e for e in entries if e["model"] == model), entries[0] if entries else None)
    if entry is not None and entry.get("status") == "ok" and entry.get("score") is not None:
        return fmt(entry["score"])
    if entry is not None:
        why = "The zero-shot entry failed; its error is in the run folder's leaderboard.json."
    elif any("is an encoder" in note for note in board.get("notes", [])):
        why = ("An encoder-only comparison: an encoder cannot answer without a trained classification head, so there "
               "is no zero-shot score of the base model.")
    else:
        why = "The recipe does not run zero_shot, so there is no score of the untailored base model."
    return f"{NONE} {table.note(why)}"


def training_row(recipe: Recipe, run: Path, manifest: dict[str, Any], record: dict[str, Any] | None,
                 table: Table) -> list[str]:
    """One finished training run: validation loss at the first and last evaluation, steps, time."""
    evals = eval_losses(run)
    if evals:
        first, last = min(evals), max(evals)
        loss = f"{fmt(evals[first])} (step {first}) → {fmt(evals[last])} (step {last})"
    else:
        loss = "none recorded"
    if record is not None:
        seconds = fmt_seconds(record["wall_seconds"])
    else:
        steps_only = training_seconds(run, manifest.get("steps"))
        seconds = NONE if steps_only is None else f"{fmt_seconds(steps_only)} " + table.note(
            "Not measured by scripts/run_recipes.py: the optimizer steps only (the training loop's elapsed_seconds in "
            "the last checkpoint), not loading, tokenizing, evaluation or the forgetting check.")
    what = f"{manifest.get('objective', '?')}, {manifest.get('strategy', '?')} ({manifest.get('base_model', '?')})"
    hardware = (record or {}).get("hardware") or manifest.get("hardware") or HARDWARE
    return [link(recipe), what, loss, str(manifest.get("steps", NONE)), seconds, hardware]


def eval_losses(run: Path) -> dict[int, float]:
    """Validation loss per step from metrics.jsonl (the latest record of each step, as after a resume)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}


def training_seconds(run: Path, steps: int | None) -> float | None:
    """The training loop's elapsed_seconds saved in the checkpoint of the final step (optimizer steps only)."""
    for state_file in sorted((run / "checkpoints").glob("step-*/state.json"), reverse=True):
        state = json.loads(state_file.read_text(encoding="utf-8")).get("train_state", {})
        if steps is None or state.get("step") == steps:
            return state.get("elapsed_seconds")
    return None


def not_run(recipe: Recipe, columns: int) -> list[str]:
    command = f"`{recipe.command}`" if recipe.command else "(no command on the recipe's first line)"
    return [link(recipe), task_name(recipe), f"not run: {command}"] + [NONE] * (columns - 3)


def task_name(recipe: Recipe) -> str:
    task = recipe.data.get("task")
    if isinstance(task, dict) and task.get("name"):
        return f"{task['name']} ({task.get('metric', '?')})"
    model = recipe.data.get("model", "?")
    if isinstance(model, dict):  # a model built from scratch, named as the training manifest names it
        model = f"new {model.get('architecture')} ({model.get('layers')} layers, hidden {model.get('hidden_size')})"
    return f"{recipe.data.get('objective', '?')}, {recipe.data.get('method', '?')} ({model})"


COMPARISON_HEADER = ["recipe", "task (metric)", "base model, zero-shot", "best tailored (95% CI)", "strategy (model)",
                     "wall time", "test examples", "hardware"]
TRAINING_HEADER = ["recipe", "objective, method (model)", "validation loss: first → last evaluation", "steps",
                   "wall time", "hardware"]


EARLIER = ("From an earlier run whose folder is not in this checkout (run folders are not kept in git): the row as "
           "this script wrote it from that run; the recipe's command makes it again.")
_MARK = re.compile(r" \[(\d+)\]")
_LINK = re.compile(r"^\[[^\]]+\]\([^)]+\)")


def previous_rows(text: str) -> dict[str, list[list[str]]]:
    """The rows of the table between the markers, keyed by their recipe link, with each footnote marker replaced by
    its note's text: {link: [[cell, [note, ...]], ...]}."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        return {}
    found: dict[str, list[list[Any]]] = {}
    table: list[list[str]] = []
    notes: dict[str, str] = {}

    def close() -> None:
        for cells in table:
            link_cell = _LINK.match(cells[0])
            if link_cell and not any(c.startswith("not run:") for c in cells):
                found[link_cell.group(0)] = [[_MARK.sub("", c), [notes.get(n, "") for n in _MARK.findall(c)]]
                                             for c in cells]
        table.clear()
        notes.clear()

    for line in text[start:end].splitlines():
        if line.startswith("| ["):
            table.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif (note := re.match(r"^- \[(\d+)\] (.*)$", line)) and table:
            notes[note.group(1)] = note.group(2)
        elif line.startswith("###") and table:
            close()
    close()
    return found


def kept_row(recipe: Recipe, previous: dict[str, list[list[Any]]], columns: int, table: Table) -> list[str]:
    """The row the table had for this recipe (its footnotes renumbered, marked as from an earlier run), or not run."""
    cells = previous.get(link(recipe))
    if cells is None or len(cells) != columns:
        return not_run(recipe, columns)
    row = []
    for i, (cell, texts) in enumerate(cells):
        if i == 0 and EARLIER not in texts:
            texts = [*texts, EARLIER]
        row.append(" ".join([cell, *(table.note(t) for t in texts if t)]))
    return row


def build_tables(root: Path) -> tuple[Table, Table, list[Recipe]]:
    """The comparison and training tables, and the recipes whose first line names no compare or train command."""
    times_file = root / TIMES
    times = json.loads(times_file.read_text(encoding="utf-8")) if times_file.is_file() else {}
    readme = root / README
    previous = previous_rows(readme.read_text(encoding="utf-8")) if readme.is_file() else {}
    comparisons, trainings, others = Table(), Table(), []
    for recipe in read_recipes(root):
        run = root / recipe.output if recipe.output else None
        if recipe.verb in COMPARE_VERBS:
            if run and (run / "leaderboard.json").is_file():
                board = json.loads((run / "leaderboard.json").read_text(encoding="utf-8"))
                comparisons.rows.append(comparison_row(recipe, board, measured(times, recipe), comparisons))
            else:
                comparisons.rows.append(kept_row(recipe, previous, len(COMPARISON_HEADER), comparisons))
        elif recipe.verb in TRAIN_VERBS:
            if run and (run / "specialist.json").is_file():
                manifest = json.loads((run / "specialist.json").read_text(encoding="utf-8"))
                trainings.rows.append(training_row(recipe, run, manifest, measured(times, recipe), trainings))
            else:
                trainings.rows.append(kept_row(recipe, previous, len(TRAINING_HEADER), trainings))
        else:
            others.append(recipe)
    return comparisons, trainings, others


def markdown(header: list[str], table: Table) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table.rows]
    if table.notes:
        lines.append("")
        lines += [f"- [{n}] {text}" for n, text in enumerate(table.notes, 1)]
    return lines


def render(root: Path) -> str:
    """The text that goes between the results markers."""
    comparisons, trainings, others = build_tables(root)
    lines = ["<!-- written by scripts/results_table.py from the run folders; edit the script, not this table -->", ""]
    lines += ["### Comparisons (`tailor compare`)", ""]
    lines += markdown(COMPARISON_HEADER, comparisons)
    lines += ["", "Base model, zero-shot: the score of the untailored base model (the zero_shot entry). Best tailored: "
              "the leaderboard's best entry, with its bootstrap 95% confidence interval on the test examples. Wall "
              "time: the whole command, as scripts/run_recipes.py measured it (runs/recipe_times.json), unless a "
              "note says otherwise.", ""]
    lines += ["### Training runs (`tailor pretrain`, `tailor train`)", ""]
    lines += markdown(TRAINING_HEADER, trainings)
    lines += ["", "Validation loss: on the held-out split, at the first and the last evaluation (metrics.jsonl). Wall "
              "time: as above."]
    if others:
        lines += ["", "Not in the tables (their first line names no `tailor compare`, `tailor pretrain` or "
                      "`tailor train` command): " + ", ".join(link(r) for r in others) + "."]
    return "\n".join(lines)


def replace_between_markers(text: str, table: str, where: Path) -> str:
    """text with what lies between the results markers replaced by table; everything else is kept."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"error: {where} has no {START} ... {END} markers (in that order); add them where the "
                         "table should go")
    return text[: start + len(START)] + "\n" + table + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when recipes/README.md is not up to date")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="the repository root (default: this checkout)")
    args = parser.parse_args(argv)
    readme = args.root / README
    text = readme.read_text(encoding="utf-8")
    updated = replace_between_markers(text, render(args.root), readme)
    if args.check:
        if updated != text:
            print(f"{readme} is not up to date: run python scripts/results_table.py", file=sys.stderr)
            return 1
        return 0
    if updated != text:
        readme.write_text(updated, encoding="utf-8")
        print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
