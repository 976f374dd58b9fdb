"""What `evaluate` can score and how it is loaded: a model reference, a specialist folder (trained, prompting, RAG or
classification head) or a Predictor object, made ready as a `Loaded` target."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from tailorlm.errors import ConfigError, ModelError
from tailorlm.tasks.task import Task, TaskExample


class Predictor(Protocol):
    """Anything that renders a task's example as chat messages and holds the model that answers them."""

    model: Any
    tokenizer: Any

    def messages(self, task: Task, example: TaskExample) -> list[dict[str, str]]: ...


@dataclass
class Loaded:
    """A target ready to answer: its model, how it renders an example, and which way it answers."""

    name: str
    model: Any
    tokenizer: Any
    messages: Callable[[Task, TaskExample], list[dict[str, str]]]
    kind: str = "lm"
    """'lm' (a causal model), 'seq2seq' (an encoder-decoder), 'rag' (answers through retrieval) or 'head' (a
    classification head)."""
    labels: list[str] | None = None
    rag: Any = None


def load_target(target: str | Path | Predictor, *, progress: bool = True) -> Loaded:
    """Load what `target` names: a Predictor as it is, a specialist folder by its manifest, or a model reference."""
    from transformers.utils import logging

    from tailorlm.strategies.base import MANIFEST

    shown = logging.is_progress_bar_enabled()
    if not progress:
        logging.disable_progress_bar()  # transformers' own weight-loading bar
    try:
        if not isinstance(target, (str, Path)):
            return _from_predictor(target)
        folder = Path(target)
        if (folder / MANIFEST).is_file():
            return _from_folder(folder)
        from tailorlm.models.info import is_encoder_decoder
        from tailorlm.models.load import load_model

        head = "seq2seq" if is_encoder_decoder(str(target), progress=progress) else "causal-lm"
        model, tokenizer = load_model(str(target), head=head, progress=progress)
        return Loaded(str(target), model, tokenizer, lambda task, example: task.messages(example), _kind(model))
    finally:
        if shown:
            logging.enable_progress_bar()


def _from_predictor(predictor: Any) -> Loaded:
    """A Predictor object; one without a loaded model (a PromptSpecialist) gets its base model loaded."""
    if not callable(getattr(predictor, "messages", None)):
        raise ConfigError("cannot evaluate this target", found=type(predictor).__name__,
                          expected="a model reference, a specialist folder, or an object with messages(task, example)")
    model, tokenizer = getattr(predictor, "model", None), getattr(predictor, "tokenizer", None)
    if model is None or tokenizer is None:
        base = getattr(predictor, "base_model_path", None) or getattr(predictor, "base_model", None)
        if not base:
            raise ConfigError("the predictor has no model", found=type(predictor).__name__,
                              expected="an object with .model and .tokenizer, or with a base_model to load")
        from tailorlm.models.info import is_encoder_decoder
        from tailorlm.models.load import load_model

        model, tokenizer = load_model(str(base), head="seq2seq" if is_encoder_decoder(str(base)) else "causal-lm",
                                      progress=False)
    name = str(getattr(predictor, "name", None) or getattr(predictor, "strategy", None) or type(predictor).__name__)
    return Loaded(name, model, tokenizer, predictor.messages, _kind(model))


def _from_folder(folder: Path) -> Loaded:
    """A specialist folder, dispatched on its manifest: prompting, RAG, classification head, or trained weights."""
    from tailorlm.strategies.base import load_specialist, read_manifest
    from tailorlm.strategies.rag import RagSpecialist, is_rag_specialist

    manifest = read_manifest(folder)
    if is_rag_specialist(folder):
        rag = RagSpecialist.load(folder)
        return Loaded(str(folder), rag.model, rag.tokenizer, lambda task, example: task.messages(example), "rag", rag=rag)
    if manifest.objective == "classify":
        if not manifest.labels:
            raise ModelError("the classifier's manifest names no labels", where=str(folder), key="labels",
                             expected="the labels the head was trained on")
        model, tokenizer, _ = load_specialist(folder)
        return Loaded(str(folder), model, tokenizer, lambda task, example: task.messages(example), "head",
                      labels=[str(label) for label in manifest.labels])
    from tailorlm.strategies.prompting import PROMPT_STRATEGIES

    if manifest.strategy in PROMPT_STRATEGIES and manifest.weights == "none":
        from tailorlm.strategies.prompting import PromptSpecialist

        prompt = PromptSpecialist.load(folder)
        model, tokenizer, _ = load_specialist(folder)
        return Loaded(str(folder), model, tokenizer, prompt.messages, _kind(model))
    model, tokenizer, _ = load_specialist(folder)
    return Loaded(str(folder), model, tokenizer, lambda task, example: task.messages(example), _kind(model))


def _kind(model: Any) -> str:
    """How a loaded language model answers: 'seq2seq' for an encoder-decoder, else 'lm'."""
    return "seq2seq" if getattr(getattr(model, "config", None), "is_encoder_decoder", False) else "lm"
