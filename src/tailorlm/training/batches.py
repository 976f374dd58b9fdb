"""The order of micro-batches: fixed per epoch by the seed, so a resumed run sees exactly the same batches."""

from __future__ import annotations

import math
import random
from typing import Any

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
