"""`tailor compare`: every strategy of a recipe, for every base model, on the same task, splits and seed.

For each base model and strategy: fit (prompting chooses a prompt; rag points a specialist at an index of `corpus`,
over the base model or, with `over: ENTRY`, over another entry's trained specialist; trained methods run the one
training loop on the task's train split written as chat JSONL, as text/label rows with a classification head for an
encoder, or as source/target rows (seq2seq) for an encoder-decoder), evaluate on the test split, and write
DIR/<model>/<entry>/result.json. An entry is named after its strategy, or is a named variant whose settings say
`strategy: <one of STRATEGIES>`. A finished entry is reused on the next run with the same settings, so an interrupted
comparison resumes; a failing entry is recorded with its error and the others go on. At the end:
DIR/leaderboard.json, DIR/report.html and DIR/best/ (a copy of the winning specialist).
"""

from __future__ import annotations

import copy
import functools
import gc
import importlib
import hashlib
import json
import math
import os
import re
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from tailorlm.config import apply_overrides, load_yaml, suggest
from tailorlm.errors import ConfigError, ModelError, TailorError
from tailorlm.evaluation import report
from tailorlm.evaluation.entries import ENTRY_KEYS, STRATEGIES, TRAINED, method_of, strategy_settings  # noqa: F401
from tailorlm.evaluation.inputs import check_inputs
from tailorlm.evaluation.fitting import PeakMemory, fit, write_training_data  # noqa: F401 (compare.write_training_data)
from tailorlm.evaluation.retention import RetentionSettings, base_perplexity, check_retention
from tailorlm.files import write_atomic

RECIPE_KEYS = ("task", "data", "base_models", "corpus", "strategies", "eval", "quick", "retention", "output", "seed")
EVAL_KEYS = ("limit", "batch_size", "max_new_tokens", "scoring", "metrics", "citation_doc", "citation_field")
DEFAULT_QUICK = {"limit": 60, "train": {"max_steps": 20}}
# AdamW full fine-tuning holds weights, gradients and two moments in fp32: about 16 bytes per parameter.
FULL_BYTES_PER_PARAMETER = 16
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "deberta", "deberta-v2", "electra", "mpnet", "albert")


@dataclass
class Leaderboard:
    """What a comparison produced: the leaderboard data (leaderboard.json) and where it was written."""

    data: dict[str, Any]
    output: Path

    @property
    def entries(self) -> list[dict[str, Any]]:
        return self.data["entries"]

    @property
    def best(self) -> dict[str, Any] | None:
        return self.data.get("best")

    def entry(self, model: str, strategy: str) -> dict[str, Any]:
        return next(e for e in self.entries if e["model"] == model and e["strategy"] == strategy)


@dataclass
class Plan:
    """A comparison recipe, read and checked, with --quick and --set applied."""

    source: str
    base_dir: Path
    task: Any
    models: list[str]
    strategies: dict[str, dict[str, Any]] | None
    """Entry name -> its settings as the recipe gives them (with `strategy` and `over`), in running order: every
    `over` target before the entry that uses it. None: the default list, chosen per base model."""
    eval: dict[str, Any]
    quick: dict[str, Any] | None
    retention: RetentionSettings | None
    corpus: list[str]
    output: Path
    seed: int


def compare(recipe: str | Path, *, output: str | Path | None = None, quick: bool = False, overrides: tuple | list = (),
            console: Console | None = None) -> Leaderboard:
    """Fit and evaluate every strategy for every base model; write leaderboard.json, report.html and best/."""
    console = console or Console(stderr=True)
    plan = load_plan(recipe, output=output, quick=quick, overrides=list(overrides))
    check_inputs(plan, console=console)  # base models (pulling a built-in pack) and the corpus, before the output
    plan.output.mkdir(parents=True, exist_ok=True)
    _import_libraries()  # so that the first strategy's time is not the time Python takes to import them
    entries, notes = [], []
    for model in plan.models:
        strategies, model_notes = strategies_for(model, plan)
        notes += model_notes
        for note in model_notes:
            console.print(f"[yellow]note:[/yellow] {note}")
        done: dict[str, dict[str, Any]] = {}
        for name, settings in strategies.items():
            wrapped = done[settings["over"]] if "over" in settings else None
            done[name] = run_strategy(plan, model, name, settings, console=console, wrapped=wrapped)
            entries.append(done[name])
    board = build_leaderboard(plan, entries, notes)
    write_outputs(board, plan.output)
    return Leaderboard(board, plan.output)


def load_plan(recipe: str | Path, *, output: str | Path | None = None, quick: bool = False,
              overrides: list[str] = ()) -> Plan:
    """Read a comparison recipe: the task (tasks.task_from_dict), base models, strategies and their settings."""
    from tailorlm.tasks import task_from_dict

    source = str(recipe)
    base_dir = Path(recipe).resolve().parent
    data = apply_overrides(load_yaml(recipe), list(overrides))
    for key in data:
        if key not in RECIPE_KEYS:
            raise ConfigError("unknown setting", where=source, key=key, expected="one of " + ", ".join(RECIPE_KEYS),
                              hint=suggest(str(key), RECIPE_KEYS))
    task = task_from_dict(data, source=source, base_dir=base_dir)
    models = data.get("base_models") or []
    models = [models] if isinstance(models, str) else list(models)
    if not models or not all(isinstance(m, str) and m for m in models):
        raise ConfigError("missing setting", where=source, key="base_models", found=repr(data.get("base_models")),
                          expected="a list of model references, e.g. [smollm2-135m-instruct]")
    strategies = strategy_settings(data.get("strategies"), source, models)
    evaluation = _mapping(data.get("eval"), source, "eval")
    _check_keys(evaluation, EVAL_KEYS, source, "eval")
    if evaluation.get("citation_doc") is not None:  # a wrong field should stop the comparison before anything trains
        from tailorlm.evaluation.citations import citation_docs

        citation_docs(evaluation["citation_doc"], task.examples("test"))
    quick_settings = None
    if quick:
        quick_settings = _mapping(data["quick"], source, "quick") if data.get("quick") else copy.deepcopy(DEFAULT_QUICK)
        _check_keys(quick_settings, ("limit", "train", "eval_limit", "max_examples", "retention"), source, "quick")
        if "limit" in quick_settings:
            evaluation["limit"] = quick_settings["limit"]
    retention_data = _mapping(data.get("retention"), source, "retention")
    if quick_settings and quick_settings.get("retention"):
        retention_data = {**retention_data, **quick_settings["retention"]}
    retention = RetentionSettings.from_dict(retention_data, where=source, base_dir=base_dir)
    corpus = data.get("corpus") or []
    corpus = [corpus] if isinstance(corpus, str) else list(corpus)
    corpus = [str(p if Path(p).is_absolute() else (base_dir / p).resolve()) for p in corpus]
    folder = output or data.get("output")
    if not folder:
        raise ConfigError("missing setting", where=source, key="output", expected="a folder: --output DIR or output:")
    folder = Path(folder) if output or Path(str(folder)).is_absolute() else Path.cwd() / str(folder)
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError("the seed must be a whole number", where=source, key="seed", found=repr(seed))
    return Plan(source=source, base_dir=base_dir, task=task, models=models, strategies=strategies, eval=evaluation,
                quick=quick_settings, retention=retention, corpus=corpus, output=Path(folder), seed=seed)


def strategies_for(model: str, plan: Plan) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The strategies to run for one base model, with notes on the defaults left out and why."""
    from tailorlm.evaluation.fitting import SEQ2SEQ_NO_RAG, retention_notes

    if plan.strategies is not None:
        chosen, notes = _applicable(model, plan)
        return chosen, notes + retention_notes(model, plan, chosen)
    encoder = is_encoder(model)
    notes = []
    names = list(("prompt_tuning", "p_tuning", "lora") if encoder else
                 ("zero_shot", "few_shot", "prompt_search", "rag", "prompt_tuning", "p_tuning", "lora"))
    if encoder:
        notes.append(f"{model} is an encoder: prompting and RAG need a generative model, so only trained "
                     "classification heads are compared")
    if not plan.corpus and "rag" in names:
        names.remove("rag")
    elif "rag" in names and is_seq2seq(model):
        names.remove("rag")
        notes.append(f"rag left out for {model}: {SEQ2SEQ_NO_RAG}")
    affordable, why = full_is_affordable(model)
    if affordable:
        names.append("full")
    else:
        notes.append(f"full fine-tuning of {model} left out: {why}")
    chosen: dict[str, dict[str, Any]] = {name: {} for name in names}
    return chosen, notes + retention_notes(model, plan, chosen)


def _applicable(model: str, plan: Plan) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The recipe's entries that run for `model`: those whose `models:` (when given) name it, and, for an encoder,
    those that can train a classification head (an encoder-decoder: all but rag); a note for each entry left out."""
    from tailorlm.evaluation.fitting import ENCODER_STRATEGIES, SEQ2SEQ_NO_RAG

    assert plan.strategies is not None
    chosen: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for name, settings in plan.strategies.items():
        models = settings.get("models")
        if models is not None and model not in models:
            notes.append(f"{name} left out for {model}: the recipe runs it only for {', '.join(models)}")
        elif settings.get("over") is not None and settings["over"] not in chosen:
            notes.append(f"{name} left out for {model}: {settings['over']}, which it wraps, does not run for it")
        elif is_encoder(model) and method_of(name, settings) not in ENCODER_STRATEGIES:
            notes.append(f"{name} left out for {model}: an encoder classifies with a trained head, and "
                         f"{method_of(name, settings)} needs a model that writes text")
        elif method_of(name, settings) == "rag" and is_seq2seq(model):
            notes.append(f"{name} left out for {model}: {SEQ2SEQ_NO_RAG}")
        else:
            chosen[name] = settings
    return chosen, notes


def full_is_affordable(model: str) -> tuple[bool, str]:
    """Whether full fine-tuning fits: ~16 bytes per parameter (AdamW in fp32) within half the memory it would use."""
    import torch

    from tailorlm.models.info import model_info

    parameters = model_info(model, progress=False).parameters
    if torch.cuda.is_available():
        memory = torch.cuda.get_device_properties(0).total_memory
        where = "GPU memory"
    else:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        where = "memory"
    need = FULL_BYTES_PER_PARAMETER * parameters
    if need <= memory / 2:
        return True, ""
    return False, (f"{parameters / 1e6:.0f}M parameters need about {need / 2**30:.1f} GiB to train, more than half "
                   f"of the {memory / 2**30:.1f} GiB of {where}")


@functools.lru_cache(maxsize=None)
def is_encoder(model: str) -> bool:
    """Whether a model reference is an encoder (BERT-like) rather than a generative model."""
    from tailorlm.models.info import model_info

    info = model_info(model, progress=False)
    generative = any(part in info.architecture for part in ("CausalLM", "LMHead", "ConditionalGeneration"))
    return (info.model_type or "") in ENCODER_TYPES or not generative


@functools.lru_cache(maxsize=None)
def is_seq2seq(model: str) -> bool:
    """Whether a model reference is an encoder-decoder (T5, Marian): trained as seq2seq, prompted with plain text."""
    from tailorlm.models.info import is_encoder_decoder

    return is_encoder_decoder(model)


def run_strategy(plan: Plan, model: str, strategy: str, settings: dict[str, Any], *, console: Console,
                 wrapped: dict[str, Any] | None = None) -> dict[str, Any]:
    """One base model and entry: reuse its saved result, or fit and evaluate it; failures become entries.

    `strategy` is the entry's name; `wrapped` is the result of the entry its `over` names, already run.
    """
    method = method_of(strategy, settings)
    folder = plan.output / slug(model) / strategy
    fingerprint = _fingerprint(plan, model, strategy, settings, wrapped=wrapped)
    saved = _saved_result(folder, fingerprint)
    if saved is not None:
        console.print(f"[dim]{strategy} on {model}: reusing the result in {folder}[/dim]")
        return saved
    if folder.exists() and _saved_fingerprint(folder) != fingerprint:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(fingerprint, indent=1, default=str), encoding="utf-8")
    console.rule(f"{strategy} on {model}")
    entry: dict[str, Any] = {"model": model, "strategy": strategy, "method": method, "status": "ok", "error": None,
                             "settings": settings}
    gc.collect()  # what earlier strategies left behind should not count in this one's peak memory
    try:
        with PeakMemory() as memory:
            start = time.perf_counter()
            wraps = _wrapped_specialist(plan, strategy, settings, wrapped)
            fit_settings = {k: v for k, v in settings.items() if k not in ENTRY_KEYS}
            specialist, training = fit(plan, model, method, fit_settings, folder, console=console, name=strategy,
                                       wraps=wraps)
            entry["fit_seconds"] = time.perf_counter() - start
            entry.update(training)
            entry.setdefault("train_seconds", entry["fit_seconds"])
            if wrapped is not None:  # answering through the trained specialist costs its training too
                entry["train_seconds"] += wrapped.get("train_seconds") or 0.0
                entry["trainable_parameters"] = wrapped.get("trainable_parameters", 0)
            result = evaluate_specialist(plan, specialist, folder / "eval")
        entry.update(_eval_fields(result, plan))
        entry["peak_memory_mb"] = memory.peak_mb
        entry["specialist"] = str(specialist.relative_to(plan.output))
        entry["disk_mb"] = specialist_size(specialist) / 2**20
        if method in TRAINED and plan.retention is not None and not is_encoder(model) and not is_seq2seq(model):
            entry["retention"] = _retention(plan, model, specialist, console)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 - one strategy's failure must not stop the comparison
        entry.update(status="failed", error=_describe(err))
        (folder / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        console.print(f"[red]{strategy} on {model} failed:[/red] {entry['error']}")
    entry["fingerprint"] = fingerprint
    _write_json(folder / "result.json", entry)
    return entry


def _wrapped_specialist(plan: Plan, name: str, settings: dict[str, Any], wrapped: dict[str, Any] | None) -> Path | None:
    """The trained specialist folder that a rag entry's `over` names; ModelError when that entry failed."""
    if wrapped is None:
        return None
    if wrapped.get("status") != "ok":
        raise ModelError(f"{name} answers through {settings['over']}, which failed", key=f"strategies.{name}.over",
                         found=wrapped.get("error") or "no specialist", expected=f"{settings['over']} to finish first")
    return plan.output / wrapped["specialist"]


def evaluate_specialist(plan: Plan, specialist: Path, output: Path) -> Any:
    """The evaluator on the test split, with the recipe's eval settings."""
    from tailorlm.evaluation.evaluator import evaluate

    settings = {k: v for k, v in plan.eval.items() if v is not None}
    return evaluate(specialist, plan.task, split="test", output=output, **settings)


def build_leaderboard(plan: Plan, entries: list[dict[str, Any]], notes: list[str]) -> dict[str, Any]:
    """The leaderboard.json data: entries, per-class results, disagreements, best and the recommendation."""
    labels = plan.task.label_map() if plan.task.answer == "label" else None
    predictions = {}
    for e in entries:
        if e["status"] == "ok":
            rows = _read_jsonl(plan.output / slug(e["model"]) / e["strategy"] / "eval" / "predictions.jsonl")
            e["per_class"] = report.per_class_results(rows, labels)
            predictions[report.entry_name(e, with_model=len(plan.models) > 1)] = rows
    board: dict[str, Any] = {
        "task": plan.task.name, "metric": plan.task.metric, "higher_is_better": _higher_is_better(plan.task.metric),
        "answer": plan.task.answer, "labels": labels, "split": "test",
        "examples": next((e["examples"] for e in entries if e["status"] == "ok"), 0), "seed": plan.seed,
        "quick": plan.quick is not None, "recipe": plan.source, "models": plan.models, "notes": notes,
        "entries": [{k: v for k, v in e.items() if k != "fingerprint"} for e in entries],
        "disagreements": report.find_disagreements(predictions, labels, seed=plan.seed),
    }
    board["recommendation"] = report.recommend(board)
    best = board["recommendation"]["best"]
    board["best"] = None if best is None else {**best, "folder": "best",
                                               "specialist": board_entry(board, **best)["specialist"]}
    return board


def board_entry(board: dict[str, Any], *, model: str, strategy: str) -> dict[str, Any]:
    return next(e for e in board["entries"] if e["model"] == model and e["strategy"] == strategy)


def write_outputs(board: dict[str, Any], output: Path) -> None:
    """leaderboard.json, report.html and best/ (replaced atomically enough: written aside, then renamed)."""
    _write_json(output / "leaderboard.json", board)
    (output / "report.html").write_text(report.render_report(board), encoding="utf-8")
    best = output / "best"
    if board["best"] is None:
        return
    stage = output / ".best.tmp"
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(output / board["best"]["specialist"], stage)
    shutil.rmtree(best, ignore_errors=True)
    os.replace(stage, best)


def specialist_size(folder: Path) -> int:
    """Bytes a specialist adds to its base model: its files (and a RAG index it points at)."""
    skip = {"checkpoints", "tensorboard"}
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not skip & set(p.parts))
    manifest = folder / "specialist.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text(encoding="utf-8"))
        index = data.get("config", {}).get("index")
        if isinstance(index, str) and Path(index).is_dir():
            total += sum(p.stat().st_size for p in Path(index).rglob("*") if p.is_file())
        wrapped = Path(str(data.get("base_model_path")))  # lora+rag: the trained specialist it answers through
        if "+" in str(data.get("strategy", "")) and (wrapped / "specialist.json").is_file():
            total += specialist_size(wrapped)
    return total


def slug(model: str) -> str:
    """A folder name for a model reference."""
    name = Path(model.rstrip("/")).name or model
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def _import_libraries() -> None:
    for name in ("tailorlm.strategies.prompting", "tailorlm.training.loop", "tailorlm.evaluation.evaluator", "peft"):
        importlib.import_module(name)


def _retention(plan: Plan, model: str, specialist: Path, console: Console) -> dict[str, Any]:
    """The retention report, or its error (a failed check does not fail the strategy)."""
    try:
        before = base_perplexity(model, plan.retention, cache=plan.output / slug(model) / "retention_base.json")
        return check_retention(specialist, plan.retention, before=before)
    except Exception as err:  # noqa: BLE001
        console.print(f"[yellow]retention check failed:[/yellow] {_describe(err)}")
        return {"error": _describe(err), "flagged": False}


def _eval_fields(result: Any, plan: Plan) -> dict[str, Any]:
    score = float(result.score)
    return {"metric": result.metric, "score": score if math.isfinite(score) else None,
            "ci": [float(result.ci[0]), float(result.ci[1])], "examples": int(result.examples),
            "scoring": result.scoring, "seconds_per_example": float(result.seconds_per_example),
            "tokens_per_second": float(result.tokens_per_second), "extra": result.extra or {}}


def _higher_is_better(metric: str) -> bool:
    try:
        from tailorlm.tasks.metrics import METRICS

        return bool(METRICS[metric].higher_is_better)
    except (ImportError, KeyError):
        return metric != "perplexity"


def _mapping(value: Any, source: str, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError("must be a mapping", where=source, key=key, found=repr(value))
    return dict(value)


def _check_keys(data: dict[str, Any], allowed: tuple[str, ...], source: str, section: str) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError("unknown setting", where=source, key=f"{section}.{key}",
                              expected="one of " + ", ".join(allowed), hint=suggest(str(key), allowed))


def _fingerprint(plan: Plan, model: str, strategy: str, settings: dict[str, Any], *,
                 wrapped: dict[str, Any] | None = None) -> dict[str, Any]:
    """What decides an entry's result (with a wrapped entry's own fingerprint): reused only when all is unchanged."""
    task = plan.task
    data = json.dumps({"name": task.name, "instruction": task.instruction, "system": task.system,
                       "answer": task.answer, "labels": task.labels, "metric": task.metric,
                       "template": task.input_template, "data": repr(task.data)}, sort_keys=True, default=str)
    rag = method_of(strategy, settings) == "rag"
    evaluation = plan.eval if rag else {k: v for k, v in plan.eval.items() if not k.startswith("citation_")}  # rag's
    fingerprint = {"model": model, "strategy": strategy, "settings": settings, "eval": evaluation,
                   "quick": plan.quick, "seed": plan.seed, "corpus": plan.corpus if rag else [],
                   "retention": None if plan.retention is None else vars(plan.retention),
                   "task": hashlib.sha256(data.encode()).hexdigest()[:16]}
    if wrapped is not None:
        fingerprint["over"] = wrapped.get("fingerprint")
    return fingerprint


def _saved_fingerprint(folder: Path) -> dict[str, Any] | None:
    path = folder / "settings.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _saved_result(folder: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """A finished result with the same fingerprint (failed ones run again)."""
    path = folder / "result.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    same = json.dumps(saved.get("fingerprint"), sort_keys=True, default=str) == json.dumps(fingerprint, sort_keys=True, default=str)
    return saved if same and saved.get("status") == "ok" else None


def _describe(err: BaseException) -> str:
    return str(err) if isinstance(err, TailorError) else f"{type(err).__name__}: {err}"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=1, ensure_ascii=False, default=str))

