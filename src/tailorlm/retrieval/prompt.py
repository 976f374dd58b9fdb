"""The one prompt layout of retrieval-augmented answers, shared by `tailor rag ask` and the RAFT training data.

A model fine-tuned on `tailor rag build-training` output sees at answer time exactly the layout it was trained on:
numbered passages, each with where it comes from, then the question.
"""

from __future__ import annotations

from collections.abc import Sequence

from tailorlm.retrieval.chunking import Chunk

SYSTEM = (
    "Answer the question using only the numbered passages. Cite the passages you use as [1], [2]. "
    "If the passages do not contain the answer, say that the documents do not contain it."
)


def source_label(chunk: Chunk) -> str:
    """Where a chunk comes from, for people: title or path, then heading and page when known."""
    parts = [chunk.title or str(chunk.metadata.get("path") or chunk.doc_id)]
    if chunk.heading and chunk.heading != chunk.title:
        parts.append(chunk.heading)
    if chunk.page is not None:
        parts.append(f"page {chunk.page}")
    return " — ".join(parts)


def passage_block(number: int, chunk: Chunk) -> str:
    """One numbered passage as the model sees it.

    >>> passage_block(2, Chunk("d:0", "d", "Paris is the capital.", 0, 21, title="France"))
    '[2] France\\nParis is the capital.'
    """
    return f"[{number}] {source_label(chunk)}\n{chunk.text}"


def rag_user_message(question: str, chunks: Sequence[Chunk]) -> str:
    """The user turn: the numbered passages (in the order given), then the question."""
    passages = "\n\n".join(passage_block(i, chunk) for i, chunk in enumerate(chunks, start=1))
    return f"Passages:\n\n{passages}\n\nQuestion: {question.strip()}"


def rag_messages(question: str, chunks: Sequence[Chunk], *, system: str | None = SYSTEM) -> list[dict[str, str]]:
    """Chat messages for answering `question` from `chunks`: an optional system turn, then the user turn."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": rag_user_message(question, chunks)})
    return messages
