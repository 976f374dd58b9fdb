"""Embed texts with a sentence-transformers model read from a local folder: unit-length float32 vectors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tailorlm.errors import ConfigError, ModelError

DTYPES = ("auto", "float32", "bfloat16", "float16")
# Texts per forward pass. On a CPU small batches run faster per token (2 cores, MiniLM, chunks of ~160 tokens:
# 16 texts about 20% faster than 64 in float32, 5% in bfloat16; 64 texts' activations outgrow the caches);
# a GPU wants large ones.
CPU_BATCH, GPU_BATCH = 16, 64


class Embedder:
    """A sentence encoder: `embed` for documents and chunks, `embed_queries` for search queries.

    `dtype="auto"` computes in bfloat16 on a CPU with native bfloat16 arithmetic (AVX512-BF16 or AMX: about twice
    the chunks per second, cosine to the float32 vectors above 0.9998), in float16 on a GPU, else in float32.
    `batch_size=None` is 16 texts per forward pass on a CPU and 64 on a GPU.
    """

    def __init__(self, model_ref: str = "minilm-l6", *, device: str | None = None, batch_size: int | None = None,
                 dtype: str = "auto") -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        from tailorlm.models.hub import resolve

        if dtype not in DTYPES:
            raise ConfigError("unknown embedding dtype", key="dtype", found=repr(dtype), expected="one of " + ", ".join(DTYPES))
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError("bad embedding batch size", key="batch_size", found=repr(batch_size), expected="a whole number, at least 1")
        folder = resolve(model_ref)
        try:
            # A local folder and local_files_only: sentence-transformers never reaches a model hub from here.
            self.model = SentenceTransformer(str(folder), device=device, local_files_only=True)
        except (OSError, ValueError, KeyError) as err:
            raise ModelError("cannot load the embedding model", where=str(folder), found=f"{type(err).__name__}: {err}",
                             expected="a sentence-transformers model folder (modules.json) or a BERT-style encoder") from None
        if not getattr(self.model.tokenizer, "is_fast", False):
            raise ModelError("the embedding model has no fast tokenizer", where=str(folder), found=type(self.model.tokenizer).__name__,
                             expected="a tokenizer.json, which chunking needs for character offsets")
        self.dtype = _pick_dtype(dtype, self.model.device.type)
        if self.dtype != "float32":
            self.model.to(getattr(torch, self.dtype))
        self.model_ref = str(model_ref)
        self.batch_size: int = batch_size or (CPU_BATCH if self.model.device.type == "cpu" else GPU_BATCH)
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension: int = int(dimension())
        self.tokenizer: Any = self.model.tokenizer
        self.max_tokens: int = int(self.model.max_seq_length)
        """Tokens one input may hold, special tokens included; longer inputs are truncated by the model."""

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Vectors of documents or chunks, (N, D) float32 with unit length, in the order of `texts`."""
        encode = getattr(self.model, "encode_document", self.model.encode)
        return self._encode(encode, texts, progress)

    def embed_queries(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Vectors of search queries: the model's query prompt, when it has one, is added (none for MiniLM)."""
        encode = getattr(self.model, "encode_query", self.model.encode)
        return self._encode(encode, texts, progress)

    def _encode(self, encode: Any, texts: Sequence[str], progress: bool) -> np.ndarray:
        """Encode in batches; sentence-transformers sorts texts by length for speed and restores their order."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = encode(texts, batch_size=self.batch_size, show_progress_bar=progress, convert_to_tensor=True,
                         normalize_embeddings=True)
        vectors = vectors.float().cpu().numpy()  # (N, D)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)


def length_order(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """Positions of `texts` from the most tokens to the fewest (ties in input order), counted by `tokenizer`.

    Embedding texts in this order keeps the padding of each batch small. sentence-transformers sorts by characters,
    which on mixed text (prose, numbers, code) leaves about a quarter of each batch as padding.
    """
    from tailorlm.retrieval.chunking import plain_tokenizer

    lengths = np.fromiter((len(e.ids) for e in plain_tokenizer(tokenizer).encode_batch(list(texts), add_special_tokens=False)),
                          dtype=np.int64, count=len(texts))
    return np.argsort(-lengths, kind="stable")


def _pick_dtype(dtype: str, device_type: str) -> str:
    """The dtype `auto` stands for on this device; the asked one otherwise."""
    if dtype != "auto":
        return dtype
    if device_type == "cuda":
        return "float16"
    if device_type == "cpu" and _native_bfloat16():
        return "bfloat16"
    return "float32"


def _native_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively; oneDNN emulates it elsewhere, slower than float32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:  # not Linux: stay with float32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
