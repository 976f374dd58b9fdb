"""fp16 frozen weights for adapter training on the CPU: the layer's gradients, what is replaced, and the run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from tailorlm.training import loop
from tailorlm.training.config import resolve_config
from tailorlm.training.frozen import FrozenHalfLinear, half_frozen_applies, use_half_frozen

pytestmark = pytest.mark.skipif(half_frozen_applies(torch.device("cpu"), "fp16") is not None,
                                reason=str(half_frozen_applies(torch.device("cpu"), "fp16")))


def test_forward_and_input_gradient_use_the_fp16_rounded_weight_in_fp32():
    torch.manual_seed(0)
    linear = nn.Linear(40, 24)
    half = FrozenHalfLinear(linear)
    rounded = linear.weight.detach().half().float()
    x = torch.randn(3, 7, 40, requires_grad=True)
    out = half(x)
    torch.testing.assert_close(out, F.linear(x, rounded, linear.bias.detach()), rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    torch.testing.assert_close(x.grad, grad @ rounded, rtol=1e-5, atol=1e-5)
    assert not list(half.parameters())  # nothing of it trains, nothing of it is in the optimizer
    assert not torch.equal(rounded, linear.weight)  # the rounding is real, so the checks above mean something


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))


@pytest.mark.parametrize("dora", [False, True])
def test_frozen_base_layers_are_replaced_and_adapters_head_and_dora_bases_are_not(dora):
    import peft

    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, target_modules=["q_proj", "down_proj"],
                                                              use_dora=dora))
    replaced = use_half_frozen(model)
    layer = model.base_model.model.model.layers[0]
    assert replaced == 2 * (5 if dora else 7)  # per layer: the 7 projections' base weights, less DoRA's two
    assert isinstance(layer.self_attn.k_proj, FrozenHalfLinear) and isinstance(layer.mlp.up_proj, FrozenHalfLinear)
    assert isinstance(layer.self_attn.q_proj.base_layer, nn.Linear if dora else FrozenHalfLinear)
    assert type(layer.self_attn.q_proj.lora_A["default"]) is nn.Linear  # trainable: untouched
    assert type(model.base_model.model.lm_head) is nn.Linear  # the output layer, read by the chunked loss


def test_a_trained_classification_head_keeps_its_frozen_original():
    import peft
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=4, intermediate_size=64, num_labels=3))
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS"))
    use_half_frozen(model)
    assert type(model.base_model.model.classifier.original_module) is nn.Linear
    assert isinstance(model.base_model.model.bert.encoder.layer[0].attention.self.key, FrozenHalfLinear)


def train_lora(zoo_dir, output, frozen_weights, monkeypatch):
    config = resolve_config(values={"model": str(zoo_dir), "data": str(zoo_dir / "data.jsonl"), "method": "lora",
                                    "objective": "sft", "output": str(output)},
                            overrides=["data.split={}", "train.max_length=64", "train.max_steps=6", "train.lr=5e-3",
                                       "train.batch_size=4", "train.tensorboard=false", "train.warmup_steps=0",
                                       f"train.frozen_weights={frozen_weights}"])
    prepared, replaced = [], []
    real_prepare, real_use = loop.prepare, loop.prepare.__globals__["use_half_frozen"]
    monkeypatch.setattr(loop, "prepare", lambda *a, **k: prepared.append(real_prepare(*a, **k)) or prepared[-1])
    monkeypatch.setitem(real_prepare.__globals__, "use_half_frozen",
                        lambda model: replaced.append(real_use(model)) or replaced[-1])
    records: list[dict] = []
    loop.train(config, callbacks=(lambda step, record: records.append(record),), console=Console(quiet=True))
    return prepared[0], [r["loss"] for r in records], replaced


@pytest.fixture
def chat_zoo(tiny_chat_dir, tmp_path):
    import json
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_chat_dir, folder)
    rows = [{"messages": [{"role": "user", "content": f"what is {a} plus {a}?"},
                          {"role": "assistant", "content": f"the fox says {2 * a}"}]} for a in range(12)]
    (folder / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


def test_adapter_training_with_fp16_frozen_weights_learns_as_fp32_does_and_ends_exact(chat_zoo, tmp_path,
                                                                                      monkeypatch):
    from tailorlm.strategies.base import load_specialist

    half, half_losses, replaced = train_lora(chat_zoo, tmp_path / "half", "fp16", monkeypatch)
    exact, exact_losses, not_replaced = train_lora(chat_zoo, tmp_path / "exact", "fp32", monkeypatch)
    assert replaced == [2 * 7] and not_replaced == []  # fp32: never called
    assert (half.trainable, half.total) == (exact.trainable, exact.total)  # the replaced weights still count
    assert half_losses[-1] < 0.8 * half_losses[0]
    # The same run but for each frozen weight's last bits: the losses agree closely, not exactly.
    assert half_losses != exact_losses
    assert max(abs(a - b) / b for a, b in zip(half_losses, exact_losses)) < 1e-2
    # After training the model holds the exact fp32 base again: the saved specialist reloads to the same logits.
    assert not any(isinstance(m, FrozenHalfLinear) for m in half.model.modules())
    ids = half.tokenizer("<|im_start|>user\nwhat is 3 plus 3?", return_tensors="pt")
    reloaded, _, _ = load_specialist(tmp_path / "half")
    with torch.no_grad():
        assert torch.equal(half.model(**ids).logits, reloaded(**ids).logits)


def test_restore_reads_the_exact_layers_back_from_the_model_files(tmp_path):
    import peft
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    from tailorlm.training.frozen import restore_frozen

    def no_reload():
        raise AssertionError("the layers are in the files: no reload")

    tiny_llama().save_pretrained(tmp_path / "llama")
    from transformers import LlamaForCausalLM

    model = peft.get_peft_model(LlamaForCausalLM.from_pretrained(tmp_path / "llama"),
                                peft.LoraConfig(r=4, target_modules=["q_proj"]))
    exact = {n: p.clone() for n, p in model.named_parameters()}
    use_half_frozen(model)
    assert restore_frozen(model, str(tmp_path / "llama"), no_reload) == 14
    assert {n: p for n, p in model.named_parameters()}.keys() == exact.keys()
    assert all(torch.equal(p, exact[n]) and p.requires_grad == exact[n].requires_grad
               for n, p in model.named_parameters())

    # A classifier on a base checkpoint: its modules are under `bert.`, the file's keys are not; biases come back too.
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=64)).save_pretrained(tmp_path / "bert")
    classifier = peft.get_peft_model(BertForSequenceClassification.from_pretrained(tmp_path / "bert", num_labels=3),
                                     peft.LoraConfig(r=4, target_modules=["query"], task_type="SEQ_CLS"))
    exact = {n: p.clone() for n, p in classifier.named_parameters()}
    use_half_frozen(classifier)
    assert restore_frozen(classifier, str(tmp_path / "bert"), no_reload) > 0
    assert all(torch.equal(p, exact[n]) for n, p in classifier.named_parameters())
    # Without files to read (a folder with none), the base is built again and the layers come from it.
    use_half_frozen(model)
    fresh = LlamaForCausalLM.from_pretrained(tmp_path / "llama")
    assert restore_frozen(model, str(tmp_path / "empty"), lambda: fresh) == 14
    assert model.base_model.model.model.layers[0].mlp.up_proj is fresh.model.layers[0].mlp.up_proj
