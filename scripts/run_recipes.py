"""Run every recipe's own command (the first line of each YAML in recipes/, with --quick), one after another, and
record each run's wall time and exit code in runs/recipe_times.json; then rebuild the results table.

    python scripts/run_recipes.py                   # every --quick recipe, skipping those recorded as finished
    python scripts/run_recipes.py recipes/legal     # only recipes under a folder (or name files)
    python scripts/run_recipes.py --rerun           # run them again (compare still reuses finished strategies)
    python scripts/run_recipes.py --list            # print the commands and stop

A comparison interrupted half-way resumes at the interrupted strategy when run again. The wall time covers the whole
command (model loading and the report included) on this machine; the results table shows it beside each recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from results_table import first_line_command  # scripts/ is on the path when a script runs

ROOT = Path(__file__).resolve().parents[1]
TIMES = ROOT / "runs" / "recipe_times.json"


def recipe_command(recipe: Path) -> list[str]:
    """The command on the recipe's first line (`# tailor ...`), without any trailing note in parentheses."""
    command = first_line_command(recipe.read_text(encoding="utf-8"))
    if not command.startswith("tailor "):
        raise SystemExit(f"{recipe}: the first line is not a `# tailor ...` command")
    return shlex.split(command)


def find_recipes(paths: list[str]) -> list[Path]:
    """The recipes under the given files or folders (default: all of recipes/, the quickstart's left out: it is
    `tailor quickstart`, run on its own or named here)."""
    found: list[Path] = []
    for given in paths or [str(ROOT / "recipes")]:
        path = Path(given).resolve()
        found += sorted(path.rglob("*.yaml")) if path.is_dir() else [path]
    return found if paths else [p for p in found if p.parent.name != "quickstart"]


def hardware() -> str:
    cores = os.cpu_count() or 0
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)}, {cores} CPU cores"
    except ImportError:
        pass
    return f"{cores}-core CPU ({platform.machine()}), no GPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", help="recipe files or folders (default: recipes/)")
    parser.add_argument("--rerun", action="store_true", help="run recipes already recorded as finished again")
    parser.add_argument("--list", action="store_true", help="print each recipe's command and stop")
    args = parser.parse_args(argv)
    recipes = find_recipes(args.paths)
    if not args.paths:  # by default the recipes of the results table: those whose command is a --quick run
        skipped = [r for r in recipes if "--quick" not in recipe_command(r)]
        recipes = [r for r in recipes if r not in skipped]
        for recipe in skipped:
            print(f"not run (no --quick command; name it to run it): {recipe.relative_to(ROOT)}")
    times = json.loads(TIMES.read_text(encoding="utf-8")) if TIMES.is_file() else {}
    tailor = [sys.executable, "-m", "tailorlm"]
    for recipe in recipes:
        name = str(recipe.relative_to(ROOT))
        command = recipe_command(recipe)
        if args.list:
            print(" ".join(command))
            continue
        if not args.rerun and times.get(name, {}).get("returncode") == 0:
            print(f"{name}: finished before ({times[name]['wall_seconds']:.0f} s); --rerun runs it again")
            continue
        print(f"== {' '.join(command)}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(tailor + command[1:], cwd=ROOT)
        times[name] = {"command": " ".join(command), "returncode": code, "wall_seconds": round(time.perf_counter() - start, 1),
                       "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"), "hardware": hardware()}
        TIMES.parent.mkdir(parents=True, exist_ok=True)
        TIMES.write_text(json.dumps(times, indent=1), encoding="utf-8")
        print(f"== {name}: exit {code} after {times[name]['wall_seconds']:.0f} s", flush=True)
    if args.list:
        return 0
    return subprocess.call([sys.executable, str(ROOT / "scripts" / "results_table.py")], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
