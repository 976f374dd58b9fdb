"""Packing, length grouping and collators: bins, tokens, positions, and packed == unpacked training."""

from __future__ import annotations

import random

import pytest
import torch

from tailorlm.errors import ConfigError
from tailorlm.training.loss import causal_lm_loss, check_model
from tailorlm.training.packing import (
    IGNORE_INDEX,
    collate_packed,
    collate_padded,
    group_by_length_batches,
    pack_best_fit,
    packing_stats,
)

VOCAB = 97


def tiny_model(kind: str, attn: str = "sdpa") -> torch.nn.Module:
    """A tiny random causal LM (no dropout, so train-mode forwards are deterministic)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "llama":
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
        model = GPT2LMHeadModel(config)
    model.set_attn_implementation(attn)
    return model.train()


def make_examples(lengths: list[int], seed: int = 0, sft: bool = False) -> list[dict[str, list[int]]]:
    """Random token examples; with `sft`, the first half of each example's labels is masked like a prompt."""
    rng = random.Random(seed)
    examples = []
    for n in lengths:
        ids = [rng.randrange(1, VOCAB) for _ in range(n)]
        labels = [IGNORE_INDEX] * (n // 2) + ids[n // 2 :] if sft else list(ids)
        examples.append({"input_ids": ids, "labels": labels})
    return examples


def test_best_fit_decreasing_reaches_the_optimum_on_a_hand_made_case():
    # 30 tokens, rows of 10: three full rows {8,2}, {7,3}, {5,4,1} is optimal and is what best-fit-decreasing finds.
    examples = make_examples([2, 5, 4, 7, 1, 3, 8])
    packs = pack_best_fit(examples, max_length=10)
    assert [sorted(pack.lengths, reverse=True) for pack in packs] == [[8, 2], [7, 3], [5, 4, 1]]
    assert packing_stats(packs, 10).efficiency == 1.0


def test_best_fit_picks_the_tightest_row_not_the_first():
    # After 6 and 5 open rows with 4 and 5 free, a 5 must go to the 5-free row and a 4 to the 4-free row.
    packs = pack_best_fit(make_examples([6, 5, 5, 4]), max_length=10)
    assert [pack.lengths for pack in packs] == [[6, 4], [5, 5]]


def test_packing_keeps_every_token_once_and_never_overflows():
    rng = random.Random(1)
    lengths = [rng.randrange(0, 60) for _ in range(300)] + [150]  # one too long, some empty
    examples = make_examples(lengths, seed=2)
    packs = pack_best_fit(examples, max_length=64)
    assert all(pack.num_tokens <= 64 for pack in packs)
    placed = sorted(i for pack in packs for i in pack.indices)
    assert placed == [i for i, n in enumerate(lengths) if n > 0]
    stats = packing_stats(packs, 64)
    assert stats.truncated == 1 and stats.num_examples == len(placed)
    assert [pack.indices for pack in packs] == _reference_best_fit_decreasing(lengths, 64)
    batch = collate_packed(packs, pad_id=0)
    real = batch["input_ids"][batch["input_ids"] != 0]  # example tokens are >= 1, padding is 0
    expected = [t for ex, n in zip(examples, lengths) if n for t in ex["input_ids"][:64]]
    assert sorted(real.tolist()) == sorted(expected)
    assert pack_best_fit(examples, 64) == packs  # deterministic


def _reference_best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Textbook best-fit-decreasing, O(n * rows): the bisect version must place every example identically."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i]):
        size = min(lengths[i], capacity)
        fits = [r for r in range(len(rows)) if room[r] >= size]
        if fits:
            best = min(fits, key=lambda r: (room[r], r))
        else:
            best = len(rows)
            rows.append([])
            room.append(capacity)
        rows[best].append(i)
        room[best] -= size
    return rows


def test_hundred_thousand_examples_pack_quickly_and_densely():
    rng = random.Random(0)
    examples = [{"input_ids": [1] * rng.randint(20, 500)} for _ in range(100_000)]
    import time

    start = time.perf_counter()
    packs = pack_best_fit(examples, max_length=2048)
    seconds = time.perf_counter() - start
    stats = packing_stats(packs, 2048)
    assert stats.efficiency > 0.99, str(stats)
    assert seconds < 30, f"packing 100k examples took {seconds:.1f}s"


def test_collate_packed_restarts_positions_masks_boundaries_and_padding():
    examples = make_examples([3, 2, 4])
    packs = pack_best_fit(examples, max_length=8)
    batch = collate_packed(packs, pad_id=0, pad_to_multiple_of=8)
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention_mask: it would turn packing off
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 0], [0, 1, 0, 1, 2, 3, 4, 5]]
    four, three, two = examples[2]["input_ids"], examples[0]["input_ids"], examples[1]["input_ids"]
    assert batch["input_ids"].tolist() == [four + three + [0], two + [0] * 6]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX] + four[1:] + [IGNORE_INDEX] + three[1:] + [IGNORE_INDEX],
        [IGNORE_INDEX] + two[1:] + [IGNORE_INDEX] * 6,
    ]


def test_collate_padded_right_pads_with_mask_and_ignored_labels():
    examples = make_examples([3, 5], sft=True)
    batch = collate_padded(examples, pad_id=0, pad_to_multiple_of=4)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]]
    assert batch["labels"][0].tolist() == examples[0]["labels"] + [IGNORE_INDEX] * 5


def test_group_by_length_is_seeded_complete_and_groups_similar_lengths():
    rng = random.Random(3)
    lengths = [rng.randint(1, 1000) for _ in range(1000)]
    batches = group_by_length_batches(lengths, batch_size=8, seed=7, mega_batch_mult=10)
    assert batches == group_by_length_batches(lengths, batch_size=8, seed=7, mega_batch_mult=10)
    assert batches != group_by_length_batches(lengths, batch_size=8, seed=8, mega_batch_mult=10)
    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    assert max(lengths[i] for i in batches[0]) == max(lengths)

    def padded(groups: list[list[int]]) -> int:
        return sum(len(g) * max(lengths[i] for i in g) for g in groups)

    shuffled = list(range(1000))
    random.Random(7).shuffle(shuffled)
    random_batches = [shuffled[k : k + 8] for k in range(0, 1000, 8)]
    assert padded(batches) < 0.7 * padded(random_batches)
    assert all(len(b) == 8 for b in group_by_length_batches(lengths[:-3], 8, seed=1, drop_last=True))


def _param_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("sft", [False, True])
def test_packed_and_unpacked_training_give_the_same_loss_and_gradients(kind, sft):
    model = tiny_model(kind)
    examples = make_examples([9, 17, 4, 30, 12, 6, 22, 3, 14], seed=5, sft=sft)

    model.zero_grad()
    alone_sum, alone_count = torch.zeros(()), 0
    for example in examples:  # one example at a time, no padding: the reference
        batch = collate_padded([example], pad_id=0)
        out = model(**batch, use_cache=False)
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        (out.loss * n).backward()
        alone_sum, alone_count = alone_sum + out.loss.detach() * n, alone_count + n
    alone_grads = _param_grads(model)

    model.zero_grad()
    packs = pack_best_fit(examples, max_length=32)
    assert len(packs) < len(examples)
    packed_sum, packed_count = torch.zeros(()), 0
    for k in range(0, len(packs), 2):
        loss, count = causal_lm_loss(model, collate_packed(packs[k : k + 2], pad_id=0), chunk_size=16)
        loss.backward()
        packed_sum, packed_count = packed_sum + loss.detach(), packed_count + int(count)
    packed_grads = _param_grads(model)

    assert packed_count == alone_count
    torch.testing.assert_close(packed_sum, alone_sum, rtol=1e-5, atol=1e-5)
    assert packed_grads.keys() == alone_grads.keys()
    for name in packed_grads:
        torch.testing.assert_close(packed_grads[name], alone_grads[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_hugging_face_loss_on_a_packed_batch_matches_ours(kind):
    model = tiny_model(kind)
    batch = collate_packed(pack_best_fit(make_examples([5, 11, 7, 2], seed=9), max_length=16), pad_id=0)
    ours, count = causal_lm_loss(model, batch)
    theirs = model(**batch, use_cache=False).loss * count
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_changing_one_packed_example_leaves_its_neighbours_logits_alone(kind, attn):
    model = tiny_model(kind, attn).eval()
    examples = make_examples([6, 5, 4], seed=11)
    packs = pack_best_fit(examples, max_length=16)
    assert len(packs) == 1 and packs[0].indices == [0, 1, 2]
    batch = collate_packed(packs, pad_id=0)
    changed = [dict(examples[0], input_ids=[(t + 1) % VOCAB for t in examples[0]["input_ids"]]), *examples[1:]]
    changed_batch = collate_packed(pack_best_fit(changed, max_length=16), pad_id=0)
    with torch.no_grad():
        before = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0]
        after = model(**{k: v for k, v in changed_batch.items() if k != "labels"}, use_cache=False).logits[0]
    assert not torch.allclose(before[:6], after[:6])  # example A did change...
    torch.testing.assert_close(after[6:], before[6:], rtol=0, atol=1e-6)  # ...and B, C did not


def test_check_model_accepts_isolating_models_and_refuses_prompt_tuning_with_packing():
    from peft import PromptTuningConfig, get_peft_model

    check_model(tiny_model("llama"), packed=True)
    check_model(tiny_model("gpt2", "eager"), packed=True)
    peft_model = get_peft_model(tiny_model("llama"), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    check_model(peft_model, packed=False)
    with pytest.raises(ConfigError, match="packing"):
        check_model(peft_model, packed=True)
