"""Answer a question from an index: retrieve, refuse when nothing is close enough, fit the prompt, generate, cite.

The prompt is `prompt.rag_messages` (the layout RAFT training data uses too). Whether the documents hold an answer
is decided by the best cosine similarity between the question's vector and the vectors of the retrieved chunks,
in every search mode: BM25 and fused (RRF) scores are not comparable from one question to the next.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tailorlm.errors import ConfigError, DataError
from tailorlm.retrieval.prompt import rag_messages, source_label
from tailorlm.retrieval.search import Reranker, search
from tailorlm.retrieval.store import Hit

if TYPE_CHECKING:
    from tailorlm.retrieval.index import Index

# Calibrated with minilm-l6 and hybrid search (k=5) on ../shared/data/retrieval: the best cosine between a question
# and the chunks retrieved for it, for questions of the indexed corpus (answerable) and of the other corpus
# (unanswerable; 1,200 medquad questions sampled). At 0.30:
#   xquad index:   xquad questions kept 97.8% (1164/1190), medquad questions refused 77.0% (924/1200)
#   medquad index: medquad questions kept 100% (1200/1200), xquad questions refused 77.6% (923/1190)
# (0.25: kept 99.2% / 100%, refused 53.8% / 61.3%; 0.35: kept 95.0% / 100%, refused 91.6% / 86.7%. Dense search at
# 0.30: kept 98.5% / 100%, refused 70.5% / 75.8%.) xquad's Immune system, Pharmacy and Black Death articles are
# medical, so some "unanswerable" questions let through do meet related passages. Refusing an answerable question
# costs more than showing the model weak passages, which its prompt tells it to say it cannot answer from.
DEFAULT_MIN_SCORE = 0.30
NOT_FOUND = "The documents do not contain an answer to this question."
SHORTENED = " [… shortened to fit the context]"
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_SANE_MAX_LENGTH = 10_000_000  # tokenizers without a limit report int(1e30)


@dataclass
class RagAnswer:
    """An answer from the documents, with the passages it was given and the ones it cites."""

    question: str
    text: str
    found: bool
    """False when no retrieved chunk was close enough to the question; the model was then not asked."""
    sources: list[Hit] = field(default_factory=list)
    """The hits given to the model, in [n] order ([1] first)."""
    cited: list[int] = field(default_factory=list)
    """The [n] numbers the text cites that name a source, sorted."""
    dropped: list[Hit] = field(default_factory=list)
    """Retrieved hits left out so that the prompt fits the model's context, best first."""
    best_score: float | None = None
    """The best cosine similarity between the question and a retrieved chunk (None when nothing was retrieved)."""
    notes: list[str] = field(default_factory=list)

    def sources_text(self) -> str:
        """The sources in [n] order, one a line, those the answer cites marked `(cited)`; empty without sources."""
        if not self.sources:
            return ""
        lines = ["Sources:"]
        for number, hit in enumerate(self.sources, start=1):
            lines.append(f"[{number}] {_where(hit)}" + (" (cited)" if number in self.cited else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the answer, its flags and notes, and each source with its location and score."""
        return {
            "question": self.question, "text": self.text, "found": self.found,
            "best_score": None if self.best_score is None else round(self.best_score, 6),
            "cited": list(self.cited),
            "sources": [_hit_dict(n, hit, n in self.cited) for n, hit in enumerate(self.sources, start=1)],
            "dropped": [_hit_dict(None, hit, False) for hit in self.dropped],
            "notes": list(self.notes),
        }


@dataclass
class Context:
    """What `fit_context` kept (in rank order, the first perhaps shortened), what it dropped, and why."""

    hits: list[Hit]
    dropped: list[Hit]
    prompt_tokens: int
    notes: list[str] = field(default_factory=list)


def answer_question(
    index: "Index",
    question: str,
    model: Any,
    tokenizer: Any,
    *,
    k: int = 5,
    mode: str = "hybrid",
    filters: Mapping[str, Any] | None = None,
    rerank: bool = False,
    reranker: "str | Path | Reranker | None" = None,
    mmr: float | None = None,
    min_score: float = DEFAULT_MIN_SCORE,
    max_new_tokens: int = 256,
    on_text: Callable[[str], None] | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> RagAnswer:
    """Retrieve k chunks for `question` and answer from them, citing them as [1], [2], ...

    When the best cosine similarity between the question and a retrieved chunk is below `min_score`, the answer is
    `NOT_FOUND` and the model is not called. `on_text` receives the answer text in pieces as it is generated (the
    fixed `NOT_FOUND` text in one piece), so a caller that streams never has to print `text` again.
    """
    from tailorlm.models.generate import generate

    if not isinstance(question, str) or not question.strip():
        raise DataError("the question is empty", key="question", found=repr(question), expected="a question in words")
    query_vector = np.asarray(index.embedder.embed_queries([question])[0], dtype=np.float32)
    hits = search(index, question, k=k, mode=mode, filters=filters, mmr=mmr, rerank=rerank, reranker=reranker,
                  query_vector=query_vector)
    notes = list(hits.notes)
    best = best_cosine(index, hits, query_vector)
    if best is None or best < min_score:
        notes.append("no chunk matched the filters" if not hits and filters else "nothing was retrieved" if not hits
                     else f"the closest chunk has similarity {best:.3f}, below min_score {min_score:g}")
        if on_text is not None:
            on_text(NOT_FOUND)
        return RagAnswer(question, NOT_FOUND, False, best_score=best, notes=notes)

    context = fit_context(question, list(hits), tokenizer, context_budget(model, tokenizer, max_new_tokens))
    notes += context.notes
    messages = rag_messages(question, [hit.chunk for hit in context.hits])
    text = generate(model, tokenizer, messages, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                    seed=seed, on_text=on_text)
    cited = cited_numbers(text, len(context.hits))
    if not cited:
        notes.append("the answer cites no passage")
    return RagAnswer(question, text, True, context.hits, cited, context.dropped, best, notes)


def best_cosine(index: "Index", hits: Sequence[Hit], query_vector: np.ndarray) -> float | None:
    """The highest cosine similarity between the query vector and the stored vectors of `hits` (None without hits)."""
    if not hits:
        return None
    vectors = index.store.vectors([hit.chunk_id for hit in hits])  # (N, D), unit length
    return float(np.max(vectors @ query_vector))


def context_budget(model: Any, tokenizer: Any, max_new_tokens: int) -> int:
    """Prompt tokens the model can take: its context (capped by a sane `tokenizer.model_max_length`), less the
    tokens to generate and any virtual tokens of a prompt-learning adapter."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError("max_new_tokens must be a positive number", key="max_new_tokens", found=repr(max_new_tokens),
                          expected="1 or more")
    context = getattr(model.config, "max_position_embeddings", None)
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _SANE_MAX_LENGTH:
        context = limit if context is None else min(context, limit)
    if context is None:
        raise ConfigError("the model does not say how long its context is", key="max_position_embeddings",
                          found="no max_position_embeddings in its config and no tokenizer model_max_length",
                          expected="a model config with max_position_embeddings")
    virtual = sum(int(getattr(c, "num_virtual_tokens", 0) or 0) for c in getattr(model, "peft_config", {}).values())
    budget = context - max_new_tokens - virtual
    if budget < 1:
        raise ConfigError("max_new_tokens leaves no room for the prompt", key="max_new_tokens",
                          found=f"{max_new_tokens} of a {context}-token context", expected=f"fewer than {context - virtual}")
    return budget


def prompt_tokens(question: str, hits: Sequence[Hit], tokenizer: Any) -> int:
    """Tokens of the rendered prompt (chat template applied) for the question and these hits, as `generate` counts."""
    from tailorlm.models.generate import render_prompt

    text = render_prompt(tokenizer, rag_messages(question, [hit.chunk for hit in hits]))
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_context(question: str, hits: Sequence[Hit], tokenizer: Any, budget: int) -> Context:
    """Keep hits in rank order while the prompt fits `budget` tokens, dropping the lowest-ranked first.

    When even the best hit alone does not fit, its text is cut at a token boundary and marked with `SHORTENED`
    (the model and the reader both see that it was cut), and a note says so. ConfigError when the question
    alone, without any passage, does not fit.
    """
    kept = 0
    size = prompt_tokens(question, [], tokenizer)
    for n in range(1, len(hits) + 1):
        tokens = prompt_tokens(question, hits[:n], tokenizer)
        if tokens > budget:
            break
        kept, size = n, tokens
    if kept == 0 and hits:
        shortened, size, note = _shorten(question, hits[0], tokenizer, budget)
        return Context([shortened], list(hits[1:]), size, [note] + _dropped_note(hits[1:], budget))
    if size > budget:
        raise _question_too_long(size, budget)
    return Context(list(hits[:kept]), list(hits[kept:]), size, _dropped_note(hits[kept:], budget))


def _shorten(question: str, hit: Hit, tokenizer: Any, budget: int) -> tuple[Hit, int, str]:
    """The hit with its text cut at the longest token prefix whose prompt (marker included) fits, and a note."""
    text = hit.chunk.text
    token_ends = _token_ends(text, tokenizer)
    # Byte-level tokens inside one character share its offsets: cut only where the offset moves on.
    ends = sorted({end for end in token_ends if 0 < end < len(text)} | {len(text)})

    def cut(n: int) -> Hit:
        kept = text[:ends[n - 1]].rstrip() if n else ""
        chunk = dataclasses.replace(hit.chunk, text=(kept + SHORTENED).lstrip(), end=hit.chunk.start + len(kept))
        return Hit(hit.chunk_id, hit.score, chunk)

    low, high = 0, len(ends) - 1  # the whole text does not fit; find the most tokens that do
    if prompt_tokens(question, [cut(0)], tokenizer) > budget:
        raise _question_too_long(prompt_tokens(question, [], tokenizer), budget)
    while low < high:
        middle = (low + high + 1) // 2
        if prompt_tokens(question, [cut(middle)], tokenizer) <= budget:
            low = middle
        else:
            high = middle - 1
    shortened = cut(low)
    kept = sum(1 for end in token_ends if low and end <= ends[low - 1])
    note = (f"passage [1] ({source_label(hit.chunk)}) was shortened to {kept} of {len(token_ends)} tokens "
            f"to fit the model's context")
    return shortened, prompt_tokens(question, [shortened], tokenizer), note


def _question_too_long(size: int, budget: int) -> ConfigError:
    """The error for a question whose prompt, with no passage or only the shortening mark, is over the budget."""
    return ConfigError("the question alone does not fit the model's context", key="question",
                       found=f"{size} prompt tokens", expected=f"at most {budget} (the context less max_new_tokens)",
                       hint="Ask a shorter question or lower max_new_tokens")


def _token_ends(text: str, tokenizer: Any) -> list[int]:
    """Where each token of `text` ends (a character offset); word ends for a tokenizer without offsets (not fast)."""
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [end for _, end in encoded["offset_mapping"]]
    except (NotImplementedError, KeyError, TypeError):
        return [match.end() for match in re.finditer(r"\S+", text)]


def _dropped_note(dropped: Sequence[Hit], budget: int) -> list[str]:
    """A note naming how many hits were left out for the context, if any."""
    if not dropped:
        return []
    return [f"{len(dropped)} lower-ranked passage(s) left out to fit the model's context ({budget} prompt tokens)"]


def cited_numbers(text: str, sources: int) -> list[int]:
    """The sorted source numbers that `text` cites as [n] or [n, m], keeping only 1..sources.

    >>> cited_numbers("see [2] and [1][3]", 2)
    [1, 2]
    """
    numbers = {int(n) for group in _CITATION.findall(text) for n in group.split(",")}
    return sorted(n for n in numbers if 1 <= n <= sources)


def _where(hit: Hit) -> str:
    """A source line's body: its label, then the document's id (its path for files) unless the label is that."""
    label = source_label(hit.chunk)
    return label if label.startswith(hit.chunk.doc_id) else f"{label} ({hit.chunk.doc_id})"


def _hit_dict(number: int | None, hit: Hit, cited: bool) -> dict[str, Any]:
    """One source as JSON."""
    chunk = hit.chunk
    entry: dict[str, Any] = {} if number is None else {"number": number, "cited": cited}
    entry.update({
        "label": source_label(chunk), "doc_id": chunk.doc_id, "chunk_id": chunk.chunk_id,
        "path": chunk.metadata.get("path"), "start": chunk.start, "end": chunk.end, "page": chunk.page,
        "score": round(float(hit.score), 6), "text": chunk.text,
    })
    return entry
