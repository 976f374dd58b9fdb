"""Chunked causal LM loss: same values and gradients as Hugging Face's loss, without full-vocabulary logits."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from tailorlm.errors import ConfigError
from tailorlm.training.loss import HeadTransform, _LinearCrossEntropy, causal_lm_loss, check_model
from tailorlm.training.packing import IGNORE_INDEX, collate_packed, collate_padded, pack_best_fit

VOCAB = 101


def tiny_model(kind: str, vocab: int = VOCAB, hidden: int = 32) -> torch.nn.Module:
    """A tiny random causal LM of one of several families, without dropout."""
    import transformers as tf

    torch.manual_seed(0)
    llama_like = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if kind == "gpt2":
        config = tf.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=2, n_head=4, n_positions=128,
                               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
        return tf.GPT2LMHeadModel(config).train()
    if kind == "gemma2":  # final_logit_softcapping; a small cap so that it matters
        config = tf.Gemma2Config(**llama_like, head_dim=8, final_logit_softcapping=0.5, query_pre_attn_scalar=8,
                                 pad_token_id=0, bos_token_id=1, eos_token_id=2)
        return tf.Gemma2ForCausalLM(config).train()
    if kind == "cohere":  # logits * logit_scale
        return tf.CohereForCausalLM(tf.CohereConfig(**llama_like, logit_scale=0.3, pad_token_id=0, bos_token_id=1,
                                                    eos_token_id=2)).train()
    if kind == "granite":  # logits / logits_scaling
        return tf.GraniteForCausalLM(tf.GraniteConfig(**llama_like, logits_scaling=4.0)).train()
    return tf.LlamaForCausalLM(tf.LlamaConfig(**llama_like)).train()


def sft_batch(lengths: list[int], vocab: int = VOCAB, seed: int = 0) -> dict[str, torch.Tensor]:
    """A right-padded batch whose first half of each example is an untrained prompt."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for n in lengths:
        ids = torch.randint(1, vocab, (n,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (n // 2) + ids[n // 2 :]})
    return collate_padded(examples, pad_id=0)


def reference(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Hugging Face's own summed loss and the gradients it gives every trainable parameter."""
    model.zero_grad()
    count = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    loss = model(**batch, use_cache=False).loss * count
    loss.backward()
    return loss.detach(), grads(model)


def ours(model: torch.nn.Module, batch: dict[str, torch.Tensor], chunk_size: int) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    loss, _ = causal_lm_loss(model, batch, chunk_size=chunk_size)
    loss.backward()
    return loss.detach(), grads(model)


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same(actual: tuple[torch.Tensor, dict], expected: tuple[torch.Tensor, dict]) -> None:
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-5, atol=1e-5)
    assert actual[1].keys() == expected[1].keys() and actual[1]
    for name, grad in expected[1].items():
        torch.testing.assert_close(actual[1][name], grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gemma2", "cohere", "granite"])
@pytest.mark.parametrize("chunk_size", [1, 7, 100_000])
def test_chunked_loss_and_gradients_match_hugging_face(kind, chunk_size):
    model = tiny_model(kind)
    batch = sft_batch([13, 30, 21])
    assert_same(ours(model, batch, chunk_size), reference(model, batch))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_chunked_loss_matches_on_packed_batches_and_counts_trained_tokens(kind):
    model = tiny_model(kind)
    g = torch.Generator().manual_seed(4)
    examples = [{"input_ids": torch.randint(1, VOCAB, (n,), generator=g).tolist()} for n in (5, 9, 12, 3, 20)]
    batch = collate_packed(pack_best_fit(examples, max_length=24), pad_id=0)
    assert_same(ours(model, batch, 7), reference(model, batch))
    assert int(causal_lm_loss(model, batch)[1]) == sum(n - 1 for n in (5, 9, 12, 3, 20))


def test_lora_model_default_targets():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False))
    batch = sft_batch([10, 25])
    expected = reference(model, batch)
    assert all("lora_" in name for name in expected[1])
    assert_same(ours(model, batch, 5), expected)


def test_lora_on_the_head_takes_the_checkpointed_path():
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"], init_lora_weights=False)
    model = get_peft_model(tiny_model("llama"), config)
    assert type(model.get_output_embeddings()) is not torch.nn.Linear
    batch = sft_batch([10, 25])
    expected = reference(model, batch)
    assert any("lm_head" in name for name in expected[1])
    assert_same(ours(model, batch, 3), expected)


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_prompt_learning_models_without_packing(method):
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    config = {"prompt_tuning": PromptTuningConfig, "prefix_tuning": PrefixTuningConfig}[method]
    model = get_peft_model(tiny_model("llama"), config(task_type="CAUSAL_LM", num_virtual_tokens=4))
    # Prompts are masked, as in SFT: peft's own loss also trains the first token from the virtual prompt.
    batch = sft_batch([10, 25])
    assert_same(ours(model, batch, 5), reference(model, batch))


def test_a_packed_batch_with_a_padding_mask_is_refused():
    batch = collate_packed(pack_best_fit([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}], 8), pad_id=0)
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    with pytest.raises(ValueError, match="attention_mask"):
        causal_lm_loss(tiny_model("llama"), batch)


def test_linear_cross_entropy_with_bias_scale_and_softcap_matches_autograd():
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    head = torch.nn.Linear(16, 50)
    targets = torch.randint(0, 50, (37,))
    transform = HeadTransform(scale=0.7, softcap=2.0)
    expected = F.cross_entropy(transform(head(hidden).float()), targets, reduction="sum")
    expected_grads = torch.autograd.grad(expected, [hidden, head.weight, head.bias])
    actual = _LinearCrossEntropy.apply(hidden, head.weight, head.bias, targets, transform, 8)
    actual_grads = torch.autograd.grad(actual * 3.0, [hidden, head.weight, head.bias])
    torch.testing.assert_close(actual, expected)
    for a, e in zip(actual_grads, expected_grads):
        torch.testing.assert_close(a, 3.0 * e)


def test_eval_without_gradients_and_batches_with_nothing_to_train():
    model = tiny_model("llama")
    batch = sft_batch([10, 25])
    with torch.no_grad():
        loss, count = causal_lm_loss(model, batch, chunk_size=4)
    expected = model(**batch, use_cache=False).loss * count
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-5)
    batch["labels"][:] = IGNORE_INDEX
    loss, count = causal_lm_loss(model, batch)
    loss.backward()  # a micro-batch without trained tokens still has a graph (gradient accumulation, DDP)
    assert float(loss.detach()) == 0.0 and int(count) == 0


def test_check_model_refuses_an_unknown_logit_transform():
    from transformers import LlamaForCausalLM

    class Doubled(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2
            return out

    model = Doubled(tiny_model("llama").config)
    check_model(tiny_model("llama"), packed=True)
    with pytest.raises(ConfigError, match="transforms its logits"):
        check_model(model, packed=False)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation produces, forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("lora_head", [False, True])
def test_no_operation_ever_makes_full_vocabulary_logits(lora_head):
    from peft import LoraConfig, get_peft_model

    vocab, tokens, chunk = 50_000, 2048, 128
    model = tiny_model("llama", vocab=vocab, hidden=64)
    if lora_head:
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(0, vocab, (1, tokens), generator=g)}
    batch["labels"] = batch["input_ids"].clone()
    with LargestTensor() as ours_seen:
        loss, _ = causal_lm_loss(model, batch, chunk_size=chunk)
        loss.backward()
    assert ours_seen.largest <= chunk * vocab
    with LargestTensor() as full_seen:  # the detector does see full logits when they exist
        model(**batch, use_cache=False).loss.backward()
    assert full_seen.largest >= tokens * vocab


PEAK_SCRIPT = """
import json, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
from tailorlm.training.loss import causal_lm_loss
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=50_000, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048))
batch = {"input_ids": torch.randint(0, 50_000, (1, 2048))}
batch["labels"] = batch["input_ids"].clone()
small = {k: v[:, :16] for k, v in batch.items()}
(model(**small, use_cache=False).loss if sys.argv[1] == "full" else causal_lm_loss(model, small)[0]).backward()
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current resident size
before = status("VmRSS:")
if sys.argv[1] == "full":
    model(**batch, use_cache=False).loss.backward()
else:
    causal_lm_loss(model, batch, chunk_size=256)[0].backward()
print(json.dumps(status("VmHWM:") - before))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads peak resident memory from /proc")
def test_peak_memory_of_chunked_loss_is_a_fraction_of_full_logits():
    # A fresh process per measurement: torch's CPU allocator keeps no statistics, so peak resident memory it is.
    def growth(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(PEAK_SCRIPT), mode], capture_output=True,
                             text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    full, chunked = growth("full"), growth("chunked")
    logits_bytes = 2048 * 50_000 * 4
    assert full > logits_bytes  # full logits (and their gradient) really were resident
    assert chunked < 0.2 * full, f"peak growth: chunked {chunked / 1e6:.0f} MB, full {full / 1e6:.0f} MB"
