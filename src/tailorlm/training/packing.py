"""Batches with little padding: best-fit-decreasing packing, length-grouped batching, and their collators.

Packed rows keep examples apart through `position_ids` alone: every example's positions restart at 0, and
transformers (5.x `masking_utils.find_packed_sequence_indices`) turns each restart into a block-diagonal causal
mask for sdpa and eager attention. That only happens when the model gets no 2D `attention_mask` and no cache,
so a packed batch carries no `attention_mask`, and the forward must pass `use_cache=False`
(`training.loss.causal_lm_loss` does; `training.loss.check_model` proves it for a given model).

>>> examples = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}]
>>> packs = pack_best_fit(examples, max_length=8)
>>> batch = collate_packed(packs, pad_id=0)
>>> batch["input_ids"].tolist(), batch["position_ids"].tolist()
([[5, 6, 7, 8, 9]], [[0, 1, 2, 0, 1]])
>>> batch["labels"].tolist()  # each example's first label is dropped: nothing before it may predict it
[[-100, 6, 7, -100, 9]]
"""

from __future__ import annotations

import bisect
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100

log = logging.getLogger(__name__)

# A tokenized example: a mapping (or an object) with `input_ids` and optional `labels` (IGNORE_INDEX = no loss).
Example = Any


def token_fields(example: Example) -> tuple[Sequence[int], Sequence[int]]:
    """The (input_ids, labels) of a mapping or of an object with those attributes; labels default to the ids."""
    if isinstance(example, Mapping):
        ids = example["input_ids"]
        labels = example.get("labels")
    else:
        ids = example.input_ids
        labels = getattr(example, "labels", None)
    if labels is None:
        labels = ids
    if len(labels) != len(ids):
        raise ValueError(f"an example has {len(ids)} input_ids but {len(labels)} labels; they must be equal")
    return ids, labels


@dataclass
class Pack:
    """Examples that share one row of at most `max_length` tokens, in row order."""

    indices: list[int]  # positions in the list given to `pack_best_fit`
    examples: list[Example]  # the examples themselves (references, not copies)
    lengths: list[int]  # tokens kept of each example (shorter than the example only when it was truncated)

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens in this row."""
        return sum(self.lengths)


@dataclass(frozen=True)
class PackingStats:
    """How well examples filled their rows."""

    num_examples: int
    num_packs: int
    real_tokens: int
    max_length: int
    truncated: int  # examples longer than max_length, cut to it

    @property
    def efficiency(self) -> float:
        """Real tokens / (rows * max_length): 1.0 means no padding at all."""
        return self.real_tokens / max(1, self.num_packs * self.max_length)

    def __str__(self) -> str:
        text = (
            f"{self.num_examples} examples in {self.num_packs} rows of {self.max_length} tokens: "
            f"{self.efficiency:.1%} real tokens"
        )
        return text + (f", {self.truncated} truncated to {self.max_length}" if self.truncated else "")


def pack_best_fit(examples: Sequence[Example], max_length: int) -> list[Pack]:
    """Place examples into rows of `max_length` tokens by best-fit-decreasing; deterministic.

    Longest first, each into the open row with the least room that still fits it (ties: the oldest row), else a
    new row. Examples longer than `max_length` keep their first `max_length` tokens (counted in `packing_stats`
    and logged); empty ones are skipped. Rows come out in creation order, longest examples first: shuffle them
    per epoch in the loop.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be a positive number of tokens, got {max_length}")
    lengths = [len(token_fields(example)[0]) for example in examples]
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i])  # stable: ties by index
    truncated = sum(n > max_length for n in lengths)
    if truncated:
        log.warning(
            "%d of %d examples are longer than %d tokens and were truncated", truncated, len(lengths), max_length
        )

    packs: list[Pack] = []
    # Sorted (room left, row id) of rows that can still take a token; bisect finds the best fit in O(log rows).
    open_rows: list[tuple[int, int]] = []
    for i in order:
        size = min(lengths[i], max_length)
        slot = bisect.bisect_left(open_rows, (size, -1))
        if slot == len(open_rows):
            row, room = len(packs), max_length
            packs.append(Pack(indices=[], examples=[], lengths=[]))
        else:
            room, row = open_rows.pop(slot)
        pack = packs[row]
        pack.indices.append(i)
        pack.examples.append(examples[i])
        pack.lengths.append(size)
        if room - size > 0:
            bisect.insort(open_rows, (room - size, row))
    return packs


def packing_stats(packs: Sequence[Pack], max_length: int) -> PackingStats:
    """Counts and efficiency (real tokens / (rows * max_length)) of a packing."""
    truncated = sum(
        len(token_fields(example)[0]) > kept for pack in packs for example, kept in zip(pack.examples, pack.lengths)
    )
    return PackingStats(
        num_examples=sum(len(pack.indices) for pack in packs),
        num_packs=len(packs),
        real_tokens=sum(pack.num_tokens for pack in packs),
        max_length=max_length,
        truncated=truncated,
    )


def collate_packed(
    packs: Sequence[Pack], pad_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Stack packs into `input_ids`, `labels` and `position_ids`, each (B, T); no `attention_mask` on purpose.

    Positions restart at 0 for every example, which is both what each example would see alone and what tells
    transformers to block attention across examples. Each example's first label becomes IGNORE_INDEX: after the
    causal shift it would be predicted from the previous example's last token. Padding at the end of a row is
    its own pseudo-example (positions from 0, labels ignored), so it attends to nothing real.
    """
    if not packs:
        raise ValueError("collate_packed needs at least one pack")
    width = _round_up(max(pack.num_tokens for pack in packs), pad_to_multiple_of)
    input_ids = torch.full((len(packs), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(packs), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    position_ids = torch.zeros((len(packs), width), dtype=torch.long)  # (B, T)
    for row, pack in enumerate(packs):
        start = 0
        for example, n in zip(pack.examples, pack.lengths):
            ids, labs = token_fields(example)
            input_ids[row, start : start + n] = torch.as_tensor(ids[:n], dtype=torch.long)
            labels[row, start + 1 : start + n] = torch.as_tensor(labs[1:n], dtype=torch.long)
            position_ids[row, start : start + n] = torch.arange(n)
            start += n
        position_ids[row, start:] = torch.arange(width - start)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def collate_padded(
    examples: Sequence[Example], pad_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad examples into `input_ids`, `attention_mask` and `labels` (IGNORE_INDEX at padding), each (B, T)."""
    if not examples:
        raise ValueError("collate_padded needs at least one example")
    fields = [token_fields(example) for example in examples]
    width = _round_up(max(len(ids) for ids, _ in fields), pad_to_multiple_of)
    input_ids = torch.full((len(fields), width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(fields), width), dtype=torch.long)  # (B, T)
    labels = torch.full((len(fields), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for row, (ids, labs) in enumerate(fields):
        n = len(ids)
        input_ids[row, :n] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.as_tensor(labs, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def group_by_length_batches(
    lengths: Sequence[int], batch_size: int, seed: int, mega_batch_mult: int = 50, drop_last: bool = False
) -> list[list[int]]:
    """Batches of indices whose examples have similar lengths, in a random order that depends only on `seed`.

    Shuffle, cut into mega-batches of `batch_size * mega_batch_mult`, sort each by length (longest first) and cut
    it into batches, then shuffle the batches. The batch holding the longest example goes first, so a run that
    runs out of memory does so at step 1 rather than hours in.
    """
    if batch_size < 1 or mega_batch_mult < 1:
        raise ValueError(f"batch_size and mega_batch_mult must be >= 1, got {batch_size} and {mega_batch_mult}")
    rng = random.Random(seed)
    indices = list(range(len(lengths)))
    rng.shuffle(indices)
    mega = batch_size * mega_batch_mult
    batches: list[list[int]] = []
    for start in range(0, len(indices), mega):
        group = sorted(indices[start : start + mega], key=lambda i: -lengths[i])
        batches.extend(group[k : k + batch_size] for k in range(0, len(group), batch_size))
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()  # only the last mega-batch's tail can be short
    rng.shuffle(batches)
    if batches:
        longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
        batches.insert(0, batches.pop(longest))
    return batches


def _round_up(n: int, multiple: int | None) -> int:
    """n rounded up to a multiple (unchanged when multiple is None)."""
    if not multiple:
        return n
    return -(-n // multiple) * multiple
