"""The order of micro-batches: fixed per epoch by the seed, so a resumed run sees exactly the same batches.

`BatchPlan` holds tokenized examples in memory; `StreamPlan` reads blocks of a memory-mapped token cache.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from tailorlm.training.packing import (
    collate_packed,
    collate_padded,
    group_by_length_batches,
    pack_best_fit,
    packing_stats,
)


class BatchPlan:
    """Micro-batches of one split: packed rows (causal objectives) or length-grouped padded batches."""

    def __init__(self, items: list[dict[str, Any]], *, objective: str, batch_size: int, max_length: int, pad_id: int,
                 packing: bool, group_by_length: bool, seed: int, shuffle: bool) -> None:
        self.items, self.objective, self.batch_size = items, objective, batch_size
        self.pad_id, self.packing, self.group_by_length = pad_id, packing, group_by_length
        self.seed, self.shuffle = seed, shuffle
        self.packs = pack_best_fit(items, max_length) if packing else None
        self.efficiency = packing_stats(self.packs, max_length).efficiency if packing else 1.0
        self._cache: dict[int, list[list[int]]] = {}

    @property
    def num_rows(self) -> int:
        return len(self.packs) if self.packs is not None else len(self.items)

    def steps_per_epoch(self, grad_accum: int) -> int:
        return max(1, math.ceil(self.num_batches / grad_accum))

    @property
    def num_batches(self) -> int:
        return math.ceil(self.num_rows / self.batch_size)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The micro-batches of an epoch as lists of row indices; the same for the same seed and epoch."""
        if epoch not in self._cache:
            self._cache = {epoch: self._order(epoch)}
        return self._cache[epoch]

    def _order(self, epoch: int) -> list[list[int]]:
        rows = list(range(self.num_rows))
        seed = self.seed * 1_000_003 + epoch
        if not self.packing and self.group_by_length:
            lengths = [len(item["input_ids"]) for item in self.items]
            if not self.shuffle:
                rows.sort(key=lambda i: -lengths[i])
                return [rows[k:k + self.batch_size] for k in range(0, len(rows), self.batch_size)]
            return group_by_length_batches(lengths, self.batch_size, seed)
        if self.shuffle:
            random.Random(seed).shuffle(rows)
        return [rows[k:k + self.batch_size] for k in range(0, len(rows), self.batch_size)]

    def position(self) -> dict[str, Any] | None:
        """Nothing beyond (epoch, batch index): the examples themselves are checked through the run's settings."""
        return None

    def tokens(self, limit: int | None = None) -> np.ndarray:
        """The token ids of the items end to end (in file order), at most `limit` of them."""
        ids: list[int] = []
        for item in self.items:
            ids.extend(item["input_ids"])
            if limit is not None and len(ids) >= limit:
                break
        return np.asarray(ids[:limit], dtype=np.int64)

    def collate(self, rows: list[int]) -> tuple[dict[str, torch.Tensor], int]:
        """(batch tensors, real non-padding input tokens) for a micro-batch."""
        if self.packs is not None:
            packs = [self.packs[i] for i in rows]
            return collate_packed(packs, self.pad_id), sum(p.num_tokens for p in packs)
        items = [self.items[i] for i in rows]
        real = sum(len(item["input_ids"]) for item in items)
        if self.objective == "classify":
            batch = collate_padded([{"input_ids": it["input_ids"]} for it in items], self.pad_id)
            batch["labels"] = torch.tensor([it["labels"] for it in items], dtype=torch.long)
            return batch, real
        if self.objective == "seq2seq":
            batch = collate_padded([{"input_ids": it["input_ids"]} for it in items], self.pad_id)
            targets = collate_padded([{"input_ids": it["labels"]} for it in items], self.pad_id)
            batch["labels"] = targets["labels"]
            return batch, real
        return collate_padded(items, self.pad_id), real


class StreamPlan:
    """Micro-batches of token blocks read from a memory-mapped token cache, for pre-training on large corpora.

    Row r is `tokens[b * L : b * L + L + 1]` for block b, with L = max_length - 1: `max_length` tokens, documents
    separated by EOS and no padding, so every token of the corpus after the first is a target exactly once per
    epoch. The plan covers blocks [first, last) of the cache (train and eval are disjoint ranges of one stream).
    The order of an epoch is a permutation of those blocks drawn from (seed, epoch), computed on demand, so the
    data position of a checkpoint is just (epoch, batch index) and memory holds 4 bytes per block, not the corpus.
    """

    packing = False
    efficiency = 1.0

    def __init__(self, cache: Any, *, max_length: int, batch_size: int, seed: int, shuffle: bool,
                 first: int = 0, last: int | None = None) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        self.cache, self.length, self.batch_size = cache, max_length - 1, batch_size
        self.seed, self.shuffle = seed, shuffle
        total = cache.num_blocks(self.length)
        self.first, self.last = first, total if last is None else last
        if not 0 <= self.first <= self.last <= total:
            raise ValueError(f"blocks [{self.first}, {self.last}) are outside the cache's {total} blocks")
        self._cache: dict[int, _EpochOrder] = {}

    @property
    def num_rows(self) -> int:
        return self.last - self.first

    @property
    def num_batches(self) -> int:
        return math.ceil(self.num_rows / self.batch_size)

    def steps_per_epoch(self, grad_accum: int) -> int:
        return max(1, math.ceil(self.num_batches / grad_accum))

    @property
    def items(self) -> "_Blocks":
        """The rows as {'input_ids', 'labels'} items, read lazily (for code written against BatchPlan.items)."""
        return _Blocks(self)

    def position(self) -> dict[str, Any]:
        """What a checkpoint must find again to continue this stream exactly."""
        return {"cache": Path(self.cache.path).name, "tokens": int(self.cache.num_tokens), "block": self.length,
                "first": self.first, "last": self.last, "batch_size": self.batch_size}

    def epoch_batches(self, epoch: int) -> "_EpochOrder":
        """The micro-batches of an epoch as lists of block indices; the same for the same seed and epoch."""
        if epoch not in self._cache:
            blocks = np.arange(self.first, self.last, dtype=np.int32 if self.last < 2**31 else np.int64)
            if self.shuffle:
                blocks = np.random.default_rng([self.seed, epoch]).permutation(blocks)
            self._cache = {epoch: _EpochOrder(blocks, self.batch_size)}
        return self._cache[epoch]

    def block(self, index: int) -> np.ndarray:
        """The max_length tokens of block `index`."""
        start = index * self.length
        return np.asarray(self.cache.tokens[start:start + self.length + 1])

    def collate(self, rows: list[int]) -> tuple[dict[str, torch.Tensor], int]:
        """(batch tensors, input tokens) for a micro-batch of block indices; no padding, no attention mask."""
        ids = torch.from_numpy(np.stack([self.block(b) for b in rows]).astype(np.int64))  # (B, max_length)
        return {"input_ids": ids, "labels": ids.clone()}, int(ids.numel())

    def tokens(self, limit: int | None = None) -> np.ndarray:
        """The plan's tokens in corpus order (its blocks end to end), at most `limit` of them."""
        start, end = self.first * self.length, self.last * self.length + 1
        if limit is not None:
            end = min(end, start + limit)
        return np.asarray(self.cache.tokens[start:end], dtype=np.int64)


class _EpochOrder:
    """An epoch's micro-batches (lists of block indices), sliced from the block order when asked for."""

    def __init__(self, blocks: np.ndarray, batch_size: int) -> None:
        self.blocks, self.batch_size = blocks, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.blocks) / self.batch_size)

    def __getitem__(self, index: int) -> list[int]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.blocks[index * self.batch_size:(index + 1) * self.batch_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        return (self[i] for i in range(len(self)))


class _Blocks:
    """A StreamPlan's rows as a read-only sequence of items."""

    def __init__(self, plan: StreamPlan) -> None:
        self.plan = plan

    def __len__(self) -> int:
        return self.plan.num_rows

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        ids = self.plan.block(self.plan.first + index).tolist()
        return {"input_ids": ids, "labels": list(ids)}

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        return (self[i] for i in range(len(self)))
