"""Per-example causal attention for packed rows gives what each example gives alone, with less work."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from tailorlm.training.attention import ATTENTION, restore_attention, use_packed_attention


def tiny_llama(attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation=attn)
    return LlamaForCausalLM(config).eval()


def test_packed_rows_match_each_example_alone_and_the_mask_path():
    model = tiny_llama()
    a, b, c = torch.arange(1, 8), torch.arange(20, 25), torch.arange(40, 43)
    ids = torch.stack([torch.cat([a, b]), torch.cat([c, a[:4], b[:5]])])  # (2, 12)
    positions = torch.stack([torch.cat([torch.arange(7), torch.arange(5)]),
                             torch.cat([torch.arange(3), torch.arange(4), torch.arange(5)])])
    with torch.no_grad():
        masked = model(input_ids=ids, position_ids=positions, use_cache=False).logits  # transformers' block mask
        assert use_packed_attention(model)
        assert model.config._attn_implementation == ATTENTION
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        restore_attention(model)
        alone = [model(input_ids=x[None], use_cache=False).logits[0] for x in (a, b, c, a[:4], b[:5])]
    torch.testing.assert_close(packed, masked, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed[0], torch.cat(alone[:2]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed[1], torch.cat(alone[2:]), rtol=1e-5, atol=1e-5)


def test_gradients_match_the_mask_path():
    ids = torch.arange(1, 13)[None]
    positions = torch.cat([torch.arange(5), torch.arange(7)])[None]
    grads = []
    for packed in (False, True):
        model = tiny_llama()
        if packed:
            use_packed_attention(model)
        model(input_ids=ids, position_ids=positions, use_cache=False).logits.square().mean().backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_padding_masks_and_generation_fall_back_to_plain_sdpa():
    model = tiny_llama()
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        use_packed_attention(model)
        after = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(before, after)


def test_only_sdpa_decoders_switch_and_saving_restores_plain_sdpa(tmp_path):
    assert not use_packed_attention(tiny_llama("eager"))
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2))
    assert not use_packed_attention(t5)
    model = tiny_llama()
    use_packed_attention(model)
    restore_attention(model)
    model.save_pretrained(tmp_path)
    assert ATTENTION not in (tmp_path / "config.json").read_text()
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("micro", [1, 2])
def test_micro_batches_give_the_same_step_as_the_whole_batch(tmp_path, tiny_llama_dir, micro):
    from _train_runs import one_thread, train_args, write_chat

    from tailorlm.cli import main
    from tailorlm.training.tracking import read_metrics

    data = write_chat(tmp_path / "chat.jsonl", count=12)
    losses = {}
    for size in (4, micro):
        out = tmp_path / f"mb{size}"
        args = train_args(tiny_llama_dir, data, out, steps=2,
                          extra=("train.batch_size=4", f"train.micro_batch_size={size}", "train.packing=false"))
        with one_thread():
            assert main(["train", *args]) == 0
        losses[size] = [r["loss"] for r in read_metrics(out)]
        assert json.loads((out / "specialist.json").read_text())["config"]["train"]["micro_batch_size"] == size
    assert losses[micro] == pytest.approx(losses[4], rel=1e-5)
