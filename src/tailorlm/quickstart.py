"""The quickstart on built-in defaults: pull the offline model packs, check a shipped data set, ask the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from tailorlm.errors import TailorError

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_ENCODER = "minilm-l6"
DEFAULT_QUESTION = "What is the capital of France?"


def examples_dir() -> Path:
    """The project's `examples/data` folder (shipped with the repository, not with the wheel)."""
    path = Path(__file__).resolve().parents[2] / "examples" / "data"
    if not path.is_dir():
        raise TailorError(
            "the shipped example data was not found",
            found=str(path),
            expected="a checkout of the tailorlm repository (examples/data is part of it)",
            hint="Clone the repository and install it with `pip install -e .`",
        )
    return path


@dataclass
class QuickstartResult:
    model_paths: dict[str, Path]
    data_file: Path
    """The recipe whose data was checked."""
    data_errors: int
    data_warnings: int
    question: str
    answer: str
    notes: list[str] = field(default_factory=list)


def run_quickstart(*, question: str = DEFAULT_QUESTION, console: Console | None = None) -> QuickstartResult:
    """Pull both built-in packs, run the pre-flight check on the finance sentiment slice, and ask one question."""
    from tailorlm.data.checks import check_data, render_report
    from tailorlm.models.generate import generate
    from tailorlm.models.hub import pull
    from tailorlm.models.load import load_model

    console = console or Console(stderr=True)
    paths = {}
    for step, name in enumerate((DEFAULT_MODEL, DEFAULT_ENCODER), start=1):
        console.rule(f"[bold]{step}/4 pull {name}")
        paths[name] = pull(name)
        console.print(f"{name}: {paths[name]}")

    console.rule("[bold]3/4 pre-flight check of the finance news sentiment data")
    data_file = examples_dir().parents[1] / "recipes" / "finance" / "news_sentiment_minilm_lora.yaml"
    report = check_data(data_file, model=DEFAULT_MODEL, max_length=128)
    render_report(report, console=console)

    console.rule(f"[bold]4/4 ask {DEFAULT_MODEL}")
    model, tokenizer = load_model(DEFAULT_MODEL)
    answer = generate(model, tokenizer, [{"role": "user", "content": question}], max_new_tokens=32)
    console.print(f"[bold]Q:[/bold] {question}\n[bold]A:[/bold] {answer}")
    errors = sum(1 for f in report.findings if f.level == "error")
    return QuickstartResult(
        model_paths=paths,
        data_file=data_file,
        data_errors=errors,
        data_warnings=len(report.findings) - errors,
        question=question,
        answer=answer,
    )
