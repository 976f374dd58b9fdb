"""How `tailor compare` makes each strategy's specialist: prompting, RAG, or a run of the training loop."""

from __future__ import annotations

import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from tailorlm.errors import ConfigError, DataError

if TYPE_CHECKING:
    from tailorlm.evaluation.compare import Plan

# compare.py imports this module, so what these functions take from it (is_encoder and small helpers) is imported
# inside them, at call time; a patch of compare.is_encoder reaches them as it did when they lived there.

PROMPTING = ("zero_shot", "few_shot", "prompt_search")
# An encoder classifies with a head; these methods can train one (training/config.py METHODS_FOR_OBJECTIVE).
ENCODER_STRATEGIES = ("prompt_tuning", "p_tuning", "lora", "dora", "ia3", "full")
TRAINED_KEYS = ("train", "lora", "prompt", "freeze", "max_examples")
# Settings of the training loop that suit a comparison: short sequences, seeded, no TensorBoard files.
TRAIN_DEFAULTS = {"max_length": 256, "batch_size": 8, "tensorboard": False}
SEQ2SEQ_NO_RAG = "an encoder-decoder is trained and prompted with plain text, and rag answers through a chat model"


def fit(plan: Plan, model: str, strategy: str, settings: dict[str, Any], folder: Path, *, console: Console,
        name: str | None = None, wraps: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Make the specialist of one strategy in folder/specialist; returns it and what training measured.

    `name` is the recipe entry's name (a variant's differs from its strategy), for errors; `wraps` is the trained
    specialist folder a rag entry answers through (its `over`).
    """
    name = name or strategy
    try:
        if strategy in PROMPTING:
            return fit_prompting(plan, model, strategy, settings, folder), {"trainable_parameters": 0}
        if strategy == "rag":
            return fit_rag(plan, model, settings, folder, wraps=wraps), {"trainable_parameters": 0}
        return fit_trained(plan, model, strategy, settings, folder, console=console, name=name)
    except ConfigError as err:
        if name != strategy and err.where == f"strategies.{strategy}":  # prompting names the strategy's section
            err.where = None
            raise err.located(f"strategies.{name} (strategy {strategy})") from None
        raise


def fit_prompting(plan: Plan, model: str, strategy: str, settings: dict[str, Any], folder: Path) -> Path:
    """zero_shot, few_shot or prompt_search (strategies.prompting), saved as a specialist folder."""
    from tailorlm.evaluation.compare import _higher_is_better, is_encoder
    from tailorlm.strategies import prompting

    if is_encoder(model):
        raise ConfigError(f"{strategy} needs a generative model", key="base_models", found=f"{model}, an encoder",
                          expected="a chat model such as smollm2-135m-instruct")
    if strategy == "zero_shot":
        specialist = prompting.fit_zero_shot(plan.task, model, settings)
    elif strategy == "few_shot":
        specialist = prompting.fit_few_shot(plan.task, model, {"seed": plan.seed, **settings})
    else:
        settings = {"seed": plan.seed, **settings}
        quick_limit = (plan.quick or {}).get("eval_limit") or (plan.quick or {}).get("limit")
        if quick_limit:  # fewer dev examples per candidate prompt
            settings["eval_limit"] = min(settings.get("eval_limit") or quick_limit, quick_limit)
        scorer = _PromptScorer(plan, model)
        specialist = prompting.fit_prompt_search(plan.task, model, settings, score=scorer.score, propose=scorer.propose,
                                                 higher_is_better=_higher_is_better(plan.task.metric))
    return specialist.save(folder / "specialist", task=plan.task)


def fit_rag(plan: Plan, model: str, settings: dict[str, Any], folder: Path, *, wraps: Path | None = None) -> Path:
    """A rag specialist over an index of the recipe's `corpus` (built once per comparison, updated when it changed),
    answering with the base model, or through the trained specialist folder `wraps` (strategy lora+rag and so on)."""
    from tailorlm.retrieval.index import build_index
    from tailorlm.strategies.rag import save_rag_specialist

    if not plan.corpus:
        raise ConfigError("the rag strategy needs documents", where=plan.source, key="corpus",
                          expected="a list of files or folders to index")
    settings = dict(settings)
    embed_model = settings.pop("embed_model", "minilm-l6")
    index = plan.output / "rag-index"
    build_index(plan.corpus, index, embed_model=embed_model, progress=False)
    output = folder / "specialist"
    if output.exists():
        shutil.rmtree(output)
    return save_rag_specialist(output, model=str(wraps) if wraps is not None else model, index=index,
                               overrides=settings)


def fit_trained(plan: Plan, model: str, strategy: str, settings: dict[str, Any], folder: Path, *,
                console: Console, name: str | None = None) -> tuple[Path, dict[str, Any]]:
    """A trained method through the one training loop: sft on chat JSONL, classify with a head for an encoder, or
    seq2seq on source/target rows for an encoder-decoder."""
    from tailorlm.evaluation.compare import _check_keys, _write_json, is_encoder, is_seq2seq
    from tailorlm.strategies.base import record_task
    from tailorlm.training.checkpoint import CHECKPOINTS, list_checkpoints
    from tailorlm.training.config import resolve_config
    from tailorlm.training.loop import train
    from tailorlm.training.tracking import read_metrics

    name = name or strategy
    _check_keys(settings, TRAINED_KEYS, plan.source, f"strategies.{name}")
    encoder = is_encoder(model)
    if encoder and strategy not in ENCODER_STRATEGIES:
        raise ConfigError(f"{strategy} cannot train a classification head", key=f"strategies.{name}",
                          found=f"{model}, an encoder", expected="one of " + ", ".join(ENCODER_STRATEGIES))
    limit = (plan.quick or {}).get("max_examples", settings.get("max_examples"))
    seq2seq = not encoder and is_seq2seq(model)
    files = write_training_data(plan.task, folder / "data", classify=encoder, seq2seq=seq2seq, limit=limit)
    train_settings = {**TRAIN_DEFAULTS, "seed": plan.seed, **settings.get("train", {}),
                      **((plan.quick or {}).get("train") or {})}
    objective = "classify" if encoder else "seq2seq" if seq2seq else "sft"
    values: dict[str, Any] = {"model": model, "objective": objective, "method": strategy,
                              "data.train": str(files["train"]), "output": str(folder / "specialist")}
    if "eval" in files:
        values["data.eval"] = str(files["eval"])
    if encoder:
        values["labels"] = list(plan.task.label_map())
    for section in ("lora", "prompt", "freeze"):
        values.update({f"{section}.{k}": v for k, v in (settings.get(section) or {}).items()})
    values.update({f"train.{k}": v for k, v in train_settings.items()})
    config = resolve_config(values=values)
    _write_json(folder / "train_config.json", config.to_dict())
    output = Path(config.output)
    resume = bool(list_checkpoints(output)) and not (output / "specialist.json").is_file()
    result = train(config, resume=resume, overwrite=not resume, console=console)
    if result.interrupted:
        raise KeyboardInterrupt
    shutil.rmtree(output / CHECKPOINTS, ignore_errors=True)  # the specialist is saved; checkpoints only cost disk
    if objective == "sft":  # it learned the task's prompt: chat and serve must wrap what the user types the same way
        record_task(output, plan.task)
    curve = [[r["step"], r["loss"]] for r in read_metrics(output) if "loss" in r]
    return output, {"train_seconds": result.seconds, "steps": result.steps, "final_loss": result.final_loss,
                    "trainable_parameters": result.trainable_parameters, "total_parameters": result.total_parameters,
                    "train_tokens_per_second": result.tokens_per_second, "loss_curve": curve}


def write_training_data(task: Any, folder: Path, *, classify: bool, seq2seq: bool = False,
                        limit: int | None = None) -> dict[str, Path]:
    """The task's train (and eval) split as chat JSONL (prompt + the answer the assistant should give), as
    text/label rows for a classification head, or as source/target rows for an encoder-decoder (the source is the
    prompt as plain text, exactly as the evaluator gives it to the model); returns split -> file."""
    from tailorlm.models.generate import plain_prompt

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split in ("train", "eval"):
        try:
            examples = task.examples(split)
        except DataError:
            if split == "train":
                raise
            continue  # no eval split: the loop trains without one
        if not examples:
            continue
        examples = examples[:limit] if limit and split == "train" else examples
        path = folder / f"{split}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for ex in examples:
                if classify:
                    record = {"text": ex.input, "label": str(ex.references[0])}
                elif seq2seq:
                    record = {"source": plain_prompt(task.messages(ex)), "target": task.answer_text(ex)}
                else:
                    record = {"messages": [*task.messages(ex), {"role": "assistant", "content": task.answer_text(ex)}]}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        files[split] = path
    return files


def retention_notes(model: str, plan: Plan, chosen: dict[str, dict[str, Any]]) -> list[str]:
    """Why the retention check the recipe asks for is not run for an encoder-decoder's trained entries."""
    from tailorlm.evaluation.compare import TRAINED, is_encoder, is_seq2seq, method_of

    trained = any(method_of(name, settings) in TRAINED for name, settings in chosen.items())
    if plan.retention is None or not trained or is_encoder(model) or not is_seq2seq(model):
        return []
    return [f"retention check left out for {model}: it measures a causal language model's perplexity on general "
            "text, and this is an encoder-decoder"]


class PeakMemory:
    """Peak memory while a block runs: CUDA allocator peak on a GPU, else the process's resident set (sampled)."""

    def __enter__(self) -> "PeakMemory":
        import torch

        self.peak_mb = 0.0
        self._cuda = torch.cuda.is_available()
        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while True:
            self.peak_mb = max(self.peak_mb, _rss_mb())
            if self._stop.wait(0.05):
                return

    def __exit__(self, *exc: object) -> None:
        import torch

        self._stop.set()
        self._thread.join()
        if self._cuda:
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20


class _PromptScorer:
    """prompt_search's callbacks: score a candidate prompt on dev examples, and ask the model for paraphrases."""

    def __init__(self, plan: Plan, model: str) -> None:
        self.plan, self.model_ref = plan, model
        self._loaded: tuple[Any, Any] | None = None

    def _model(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from tailorlm.evaluation.compare import is_seq2seq
            from tailorlm.models.load import load_model

            head = "seq2seq" if is_seq2seq(self.model_ref) else "causal-lm"
            self._loaded = load_model(self.model_ref, head=head, progress=False)
        return self._loaded

    def score(self, specialist: Any, examples: list[Any]) -> float:
        from tailorlm.evaluation.evaluator import evaluate

        model, tokenizer = self._model()
        target = _LoadedPrompt(specialist, model, tokenizer)
        settings = {k: v for k, v in self.plan.eval.items() if k in ("batch_size", "max_new_tokens", "scoring") and v}
        return evaluate(target, self.plan.task, split="eval", examples=examples, progress=False, **settings).score

    def propose(self, instruction: str, n: int) -> list[str]:
        from tailorlm.strategies.prompting import propose_paraphrases

        model, tokenizer = self._model()
        return propose_paraphrases(model, tokenizer, instruction, n)


@dataclass
class _LoadedPrompt:
    """A prompt specialist with its model already loaded, as the evaluator takes it."""

    specialist: Any
    model: Any
    tokenizer: Any

    def messages(self, task: Any, example: Any) -> list[dict]:
        return self.specialist.messages(task, example)


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
