"""Shared pieces of the retrieval tests: a deterministic bag-of-words embedder and chunk/file builders."""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tailorlm.retrieval.chunking import Chunk

_WORD = re.compile(r"\w+")


def word_tokenizer() -> Any:
    """A fast tokenizer whose tokens are whitespace/punctuation-split words (all unknown: only offsets matter)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


class FakeEmbedder:
    """A hashed bag of words: word w adds 1 to dimension crc32(w) % D; unit length. Counts the texts it embeds.

    `fail_after` makes `embed` raise once that many texts have been embedded, to simulate a crash mid-run.
    """

    def __init__(self, model_ref: str = "fake-bow", dimension: int = 64, fail_after: int | None = None) -> None:
        self.model_ref = model_ref
        self.dimension = dimension
        self.tokenizer = word_tokenizer()
        self.max_tokens = 128
        self.fail_after = fail_after
        self.embedded: list[str] = []

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Bag-of-words vectors (N, D) for chunks."""
        if self.fail_after is not None and len(self.embedded) + len(texts) > self.fail_after:
            raise RuntimeError("simulated crash while embedding")
        self.embedded.extend(texts)
        return bag_of_words(texts, self.dimension)

    def embed_queries(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Bag-of-words vectors (N, D) for queries."""
        return bag_of_words(texts, self.dimension)


def bag_of_words(texts: Sequence[str], dimension: int) -> np.ndarray:
    """Unit-length hashed word counts, (N, D) float32; an empty text gets a fixed unit vector."""
    out = np.zeros((len(texts), dimension), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in _WORD.findall(text.lower()):
            out[i, zlib.crc32(word.encode()) % dimension] += 1.0
        if not out[i].any():
            out[i, 0] = 1.0
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def make_chunk(chunk_id: str, doc_id: str, text: str = "", **fields: Any) -> Chunk:
    """A chunk with the given ids and text; other fields default to empty."""
    return Chunk(chunk_id=chunk_id, doc_id=doc_id, text=text or f"text of {chunk_id}", start=0,
                 end=len(text or f"text of {chunk_id}"), title=fields.pop("title", None),
                 heading=fields.pop("heading", None), page=fields.pop("page", None), metadata=fields.pop("metadata", {}))


def unit(*values: float) -> np.ndarray:
    """A unit-length float32 vector."""
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def write_docs(folder: Path, docs: dict[str, str]) -> Path:
    """Write {relative name: text} files under `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder
