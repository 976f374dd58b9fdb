"""The `rag` strategy: a specialist that answers from an index of the user's documents, citing them.

Its folder holds only `specialist.json`: weights 'none', `base_model` the model reference or the trained specialist
folder it wraps (strategy `lora+rag` when that is a LoRA specialist), and `config` the index's absolute path, its
embedding model and the retrieval settings. Nothing is copied: the index stays where `tailor rag index` built it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tailorlm.errors import ConfigError, DataError, ModelError, TailorError
from tailorlm.files import write_atomic
from tailorlm.retrieval.answer import DEFAULT_MIN_SCORE, RagAnswer, answer_question
from tailorlm.retrieval.search import MODES
from tailorlm.strategies.base import (MANIFEST, Manifest, library_versions, load_specialist, manifest_or_none,
                                     read_manifest)

STRATEGY = "rag"
GENERATIVE = ("sft", "pretrain")


@dataclass
class RagSettings:
    """How a RAG specialist retrieves and answers; each field is also a `tailor rag ask` flag."""

    k: int = 5
    """How many chunks to retrieve and give the model (fewer when they do not fit its context)."""
    mode: str = "hybrid"
    """Search mode: hybrid (dense + BM25 by reciprocal-rank fusion), dense or bm25."""
    filters: dict[str, Any] = field(default_factory=dict)
    """Only chunks whose field equals the value: {"source": "CDC"}."""
    rerank: bool = False
    """Rerank the candidates with the cross-encoder `reranker` (a note says so when none is named)."""
    reranker: str | None = None
    """Model reference of the cross-encoder; used only when `rerank` is on."""
    mmr: float | None = None
    """MMR lambda in [0, 1] for diverse chunks; None for plain ranking."""
    min_score: float = DEFAULT_MIN_SCORE
    """Below this best cosine similarity between the question and a retrieved chunk, answer 'not in the documents'."""
    max_new_tokens: int = 256
    """The longest answer, in tokens; the prompt gets the model's context less this."""

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError("k must be a positive number of chunks", key="k", found=repr(self.k), expected="1 or more")
        if self.mode not in MODES:
            raise ConfigError("unknown search mode", key="mode", found=repr(self.mode), expected=" | ".join(MODES))
        if not isinstance(self.filters, Mapping) or not all(
                isinstance(key, str) and key and isinstance(value, (str, int, float, bool))
                for key, value in self.filters.items()):
            raise ConfigError("filters must map field names to values", key="filters", found=repr(self.filters),
                              expected='{"field": "value"}, e.g. --filter source=CDC')
        self.filters = dict(self.filters)
        if not isinstance(self.rerank, bool):
            raise ConfigError("rerank is a switch", key="rerank", found=repr(self.rerank), expected="true or false")
        if self.reranker is not None and (not isinstance(self.reranker, (str, Path)) or not str(self.reranker).strip()):
            raise ConfigError("bad reranker reference", key="reranker", found=repr(self.reranker),
                              expected="a model reference or folder of a cross-encoder")
        self.reranker = None if self.reranker is None else str(self.reranker)
        if self.mmr is not None:
            if isinstance(self.mmr, bool) or not isinstance(self.mmr, (int, float)) or not 0.0 <= self.mmr <= 1.0:
                raise ConfigError("the MMR lambda is out of range", key="mmr", found=repr(self.mmr),
                                  expected="a number from 0 (most diverse) to 1 (most relevant), or none")
            self.mmr = float(self.mmr)
        if isinstance(self.min_score, bool) or not isinstance(self.min_score, (int, float)) or not -1.0 <= self.min_score <= 1.0:
            raise ConfigError("min_score is a cosine similarity", key="min_score", found=repr(self.min_score),
                              expected="a number from -1 to 1 (-1 never refuses)")
        self.min_score = float(self.min_score)
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be a positive number", key="max_new_tokens",
                              found=repr(self.max_new_tokens), expected="1 or more")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, *, where: str | None = None) -> "RagSettings":
        """Settings from a mapping (a manifest's `retrieval`, or overrides); ConfigError naming an unknown key."""
        data = dict(data or {})
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                raise ConfigError("unknown RAG setting", where=where, key=str(key), expected="one of " + ", ".join(known))
        try:
            return cls(**data)
        except TailorError as err:
            raise err.located(where) if where else err

    def updated(self, overrides: Mapping[str, Any] | None) -> "RagSettings":
        """These settings with `overrides` (only the keys given) replacing them, checked again."""
        return RagSettings.from_dict({**asdict(self), **(overrides or {})}, where="overrides")


def save_rag_specialist(output: str | Path, *, model: str, index: str | Path,
                        overrides: Mapping[str, Any] | None = None) -> Path:
    """Write a RAG specialist folder (its specialist.json) for `model` answering from `index`; returns the folder.

    `model` is a model reference or a trained specialist folder; `overrides` are RagSettings fields. The index must
    open and the model must have a chat template; a folder that holds anything is refused.
    """
    from tailorlm.retrieval.index import open_index

    output = Path(output)
    settings = RagSettings.from_dict(overrides, where="settings")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError("the output folder is not empty", where=str(output), key="output",
                          found=_listing(output) if output.is_dir() else "a file",
                          expected="a new or empty folder", hint="Choose another folder, or delete this one first")
    index_path = Path(index).resolve()
    with open_index(index_path) as opened:
        embed_model = opened.embed_model
        chunks = len(opened)
    base_model, base_path, strategy, objective = _wrapped_model(model)
    manifest = Manifest(
        base_model=base_model, base_model_path=base_path, strategy=strategy, objective=objective, weights="none",
        config={"index": str(index_path), "embed_model": embed_model, "retrieval": asdict(settings)},
        metrics={"index_chunks": chunks}, versions=library_versions(),
    )
    write_atomic(output / MANIFEST, json.dumps(manifest.to_dict(), indent=1, ensure_ascii=False))
    return output


def is_rag_specialist(folder: str | Path) -> bool:
    """Whether `folder` holds a specialist made by the rag strategy (alone or wrapping a trained specialist)."""
    manifest = manifest_or_none(folder)
    return (manifest is not None and manifest.strategy.split("+")[-1] == STRATEGY
            and "index" in manifest.config)


class RagSpecialist:
    """A loaded RAG specialist: the model (with any adapter of the specialist it wraps), the open index, the settings."""

    def __init__(self, model: Any, tokenizer: Any, index: Any, settings: RagSettings, manifest: Manifest | None = None,
                 folder: Path | None = None) -> None:
        self.model, self.tokenizer, self.index = model, tokenizer, index
        self.settings, self.manifest, self.folder = settings, manifest, folder

    @classmethod
    def load(cls, folder: str | Path, *, overrides: Mapping[str, Any] | None = None, index: str | Path | None = None,
             dtype: Any = None, device: str | None = None) -> "RagSpecialist":
        """Load the specialist's model and open its index; `overrides` replace its settings, `index` its index."""
        from tailorlm.retrieval.index import open_index

        folder = Path(folder)
        manifest = read_manifest(folder)  # the clearer error for a folder that is no specialist at all
        if not is_rag_specialist(folder):
            raise ModelError("not a RAG specialist", where=str(folder), found=f"strategy {manifest.strategy!r}",
                             expected="a folder made by `tailor rag specialist`",
                             hint="Pass a trained specialist with --index DIR to answer from documents")
        settings = RagSettings.from_dict(manifest.config.get("retrieval"), where=str(folder / MANIFEST)).updated(overrides)
        index_path = Path(index) if index is not None else Path(manifest.config["index"])
        try:
            opened = open_index(index_path)
        except DataError as err:
            if index is not None:
                raise
            raise DataError(err.what, where=err.where, key=err.key, found=err.found, expected=err.expected,
                            hint=f"The specialist {folder} answers from this index; build it again with "
                            f"`tailor rag index DOCS --index {index_path}`, or pass --index DIR") from None
        try:
            model, tokenizer, _ = load_specialist(folder, dtype=dtype, device=device)
        except BaseException:
            opened.close()
            raise
        return cls(model, tokenizer, opened, settings, manifest, folder)

    def ask(self, question: str, *, on_text: Callable[[str], None] | None = None, **sampling: Any) -> RagAnswer:
        """Answer `question` from the index with the specialist's settings (`sampling`: temperature, top_p, seed)."""
        s = self.settings
        return answer_question(self.index, question, self.model, self.tokenizer, k=s.k, mode=s.mode,
                               filters=s.filters or None, rerank=s.rerank, reranker=s.reranker, mmr=s.mmr,
                               min_score=s.min_score, max_new_tokens=s.max_new_tokens, on_text=on_text, **sampling)

    def generate(self, messages_or_prompt: str | list[dict[str, str]], *, max_new_tokens: int | None = None,
                 on_text: Callable[[str], None] | None = None, with_sources: bool = True, **sampling: Any) -> str:
        """The answer to the last user message (or the prompt), followed by its sources, as evaluators and chat use it.

        Earlier turns of a conversation are not used: retrieval and the prompt see only the last question.
        """
        question = _last_question(messages_or_prompt)
        if max_new_tokens is not None and max_new_tokens != self.settings.max_new_tokens:
            saved, self.settings = self.settings, self.settings.updated({"max_new_tokens": max_new_tokens})
            try:
                answer = self.ask(question, on_text=on_text, **sampling)
            finally:
                self.settings = saved
        else:
            answer = self.ask(question, on_text=on_text, **sampling)
        sources = answer.sources_text() if with_sources else ""
        return f"{answer.text}\n\n{sources}" if sources else answer.text

    def close(self) -> None:
        """Release the index's files."""
        self.index.close()

    def __enter__(self) -> "RagSpecialist":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ask(question: str, *, model: str | Path, index: str | Path | None = None,
        overrides: Mapping[str, Any] | None = None, on_text: Callable[[str], None] | None = None) -> RagAnswer:
    """Answer `question` from documents with citations.

    `model` is a model reference, a trained specialist folder, or a RAG specialist folder; for the last, `index` may
    be left out, its settings are the base and `overrides` (RagSettings fields: only those the user gave) win.
    """
    if is_rag_specialist(model):
        with RagSpecialist.load(model, overrides=overrides, index=index) as specialist:
            return specialist.ask(question, on_text=on_text)
    if index is None:
        raise ConfigError("no index to answer from", key="index", found=f"model {str(model)!r} without --index",
                          expected="--index DIR (a folder made by `tailor rag index`), or a RAG specialist as the model",
                          hint="Make one with: tailor rag specialist --model REF --index DIR --output FOLDER")
    from tailorlm.retrieval.index import open_index

    settings = RagSettings.from_dict(overrides, where="overrides")
    with open_index(index) as opened:
        model_obj, tokenizer = _load_generator(model)
        with RagSpecialist(model_obj, tokenizer, opened, settings) as specialist:
            return specialist.ask(question, on_text=on_text)


def _load_generator(model: str | Path) -> tuple[Any, Any]:
    """The model and tokenizer of a model reference or a trained specialist folder."""
    from tailorlm.models.load import load_model

    if (Path(model) / MANIFEST).is_file():
        _check_generative(read_manifest(Path(model)), Path(model))
        loaded, tokenizer, _ = load_specialist(model)
        return loaded, tokenizer
    return load_model(str(model))


def _wrapped_model(model: str | Path) -> tuple[str, str, str, str]:
    """(base_model, base_model_path, strategy, objective) of a RAG specialist over `model`; errors for models that
    cannot answer: a RAG specialist, a classifier, a model without a chat template."""
    from tailorlm.models.hub import resolve
    from tailorlm.models.load import load_tokenizer

    folder = Path(model)
    if (folder / MANIFEST).is_file():
        if is_rag_specialist(folder):
            raise ConfigError("the model is already a RAG specialist", where=str(folder), key="model",
                              expected="a model reference or a trained specialist",
                              hint="Use its own base model, or ask it with other settings as overrides")
        manifest = read_manifest(folder)
        _check_generative(manifest, folder)
        path = str(folder.resolve())
        if manifest.weights == "none":
            tokenizer = load_tokenizer(manifest.base_model_path, progress=False)
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(folder)  # a specialist saves the tokenizer it was trained with
        base = (path, path, f"{manifest.strategy}+{STRATEGY}", manifest.objective)
    else:
        tokenizer = load_tokenizer(str(model), progress=False)
        base = (str(model), str(resolve(str(model), progress=False)), STRATEGY, "sft")
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("the model has no chat template, so it cannot be given the passages as chat messages",
                         where=str(model), key="model", expected="an instruct or chat model (such as smollm2-135m-instruct) "
                         "or a specialist trained with `--objective sft`")
    return base


def _check_generative(manifest: Manifest, folder: Path) -> None:
    """ModelError for a specialist that classifies or is an encoder-decoder: RAG answers need a causal LM."""
    if manifest.objective not in GENERATIVE:
        raise ModelError("a RAG answer needs a model that writes text", where=str(folder), key="objective",
                         found=repr(manifest.objective), expected="a specialist trained with objective sft or pretrain")


def _last_question(messages_or_prompt: str | list[dict[str, str]]) -> str:
    """The prompt itself, or the content of the last user message."""
    if isinstance(messages_or_prompt, str):
        return messages_or_prompt
    for message in reversed(list(messages_or_prompt)):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return str(message.get("content", ""))
    raise DataError("no user message to answer", found=f"{len(messages_or_prompt)} message(s)",
                    expected="at least one message with role 'user'")


def _listing(folder: Path, limit: int = 5) -> str:
    """A few names in the folder."""
    names = sorted(entry.name for entry in folder.iterdir())
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")
