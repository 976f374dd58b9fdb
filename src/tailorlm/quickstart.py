"""The quickstart: pull the built-in packs, check the shipped finance data, and compare four ways of tailoring on it.

The comparison is `recipes/quickstart/finance_sentiment.yaml` run by `evaluation.compare`; the quickstart only picks
its size and the output folder. The recipe's `quick:` settings are the default size, the recipe without them is
`--full`, and `--smoke` shrinks the `quick:` settings further with overrides (a plumbing check for CI).
"""

from __future__ import annotations

import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from tailorlm.errors import DataError, TailorError

if TYPE_CHECKING:
    from tailorlm.evaluation.compare import Leaderboard

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_ENCODER = "minilm-l6"
RECIPE = Path("recipes") / "quickstart" / "finance_sentiment.yaml"
SIZES = ("default", "full", "smoke")
# Each size writes its own folder, so that trying --smoke or --full never throws away the default's finished runs.
OUTPUTS = {"default": "runs/quickstart", "full": "runs/quickstart-full", "smoke": "runs/quickstart-smoke"}
# --smoke: a dozen test examples and two training steps, set over the recipe's quick: settings.
SMOKE_OVERRIDES = ("quick.limit=12", "quick.max_examples=48", "quick.train.max_steps=2",
                   "quick.train.eval_max_batches=1", "quick.retention.max_tokens=256")


def project_dir() -> Path:
    """The repository checkout this package runs from (examples/data and recipes/ ship with it, not the wheel)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "examples" / "data").is_dir() or not (root / RECIPE).is_file():
        raise TailorError(
            "the shipped example data and recipes were not found",
            found=str(root),
            expected="a checkout of the tailorlm repository (examples/data and recipes/ are part of it)",
            hint="Clone the repository and install it with `pip install -e .`",
        )
    return root


@dataclass
class QuickstartResult:
    """What the quickstart produced: the pulled packs, the data check's counts and the comparison's leaderboard."""

    size: str
    model_paths: dict[str, Path]
    recipe: Path
    data_errors: int
    data_warnings: int
    board: Leaderboard

    @property
    def report(self) -> Path:
        return self.board.output / "report.html"

    @property
    def best(self) -> Path | None:
        """The saved best specialist (a copy of the winning strategy's), or None when every strategy failed."""
        return self.board.output / "best" if self.board.best else None

    def command(self, verb: str) -> str:
        """The exact `tailor chat|serve <best>` command line for the best specialist."""
        if self.best is None:
            raise TailorError("no strategy finished, so there is no best specialist to use",
                              where=str(self.board.output / "leaderboard.json"))
        return f"{tailor_program()} {verb} {shlex.quote(str(self.best))}"


def run_quickstart(*, size: str = "default", output: str | Path | None = None,
                   console: Console | None = None) -> QuickstartResult:
    """Pull both built-in packs, check the finance sentiment data, and compare zero-shot, few-shot, P-tuning and LoRA.

    `size` is "default" (~10 minutes on a 2-core CPU), "full" (every test example, more steps) or "smoke" (a minute of
    work, for tests). Finished strategies in `output` are reused, so a second run only prints the results.
    """
    from tailorlm.data.checks import check_data, render_report
    from tailorlm.evaluation.compare import compare
    from tailorlm.models.hub import pull

    if size not in SIZES:
        raise TailorError("unknown quickstart size", found=repr(size), expected="one of " + ", ".join(SIZES))
    console = console or Console(stderr=True)
    recipe = project_dir() / RECIPE
    paths = {}
    for step, name in enumerate((DEFAULT_MODEL, DEFAULT_ENCODER), start=1):
        console.rule(f"[bold]{step}/4 pull {name}")
        paths[name] = pull(name)
        console.print(f"{name}: {paths[name]}")

    console.rule("[bold]3/4 pre-flight check of the finance news sentiment data")
    report = check_data(recipe, model=DEFAULT_MODEL, max_length=128)
    render_report(report, console=console)
    errors = sum(1 for f in report.findings if f.level == "error")
    if errors:
        raise DataError(f"the shipped finance data failed its pre-flight check ({errors} errors)", where=str(recipe),
                        hint=f"see the report above, or run `tailor data check {recipe}`")

    console.rule(f"[bold]4/4 compare 4 ways of tailoring {DEFAULT_MODEL} ({size} size)")
    board = compare(recipe, output=output or OUTPUTS[size], quick=size != "full",
                    overrides=SMOKE_OVERRIDES if size == "smoke" else (), console=console)
    return QuickstartResult(size=size, model_paths=paths, recipe=recipe, data_errors=errors,
                            data_warnings=len(report.findings) - errors, board=board)


def tailor_program() -> str:
    """How to call `tailor` from here: `tailor` when that is on PATH, else the path this one was started by."""
    started = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if started is None or started.name != "tailor":
        return "tailor"
    found = shutil.which("tailor")
    if found and Path(found).resolve() == started.resolve():
        return "tailor"
    return shlex.quote(sys.argv[0])
