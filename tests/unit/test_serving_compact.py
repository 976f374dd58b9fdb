"""fp16 weight storage for serving: what it replaces, what it keeps, and that the answers stay the model's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tailorlm.errors import ConfigError
from tailorlm.serving.compact import HalfLinear, compact_weights, half_weights_supported
from tailorlm.serving.specialists import load_served

pytestmark = pytest.mark.skipif(half_weights_supported() is not None, reason=str(half_weights_supported()))


def test_half_linear_multiplies_by_the_fp16_rounded_weight_in_fp32():
    torch.manual_seed(0)
    linear = nn.Linear(48, 40)
    half = HalfLinear(linear)
    rounded = linear.weight.detach().half().float()
    assert torch.equal(half.weight, rounded)
    assert not torch.equal(rounded, linear.weight)  # the rounding is real: the check above means something
    x = torch.randn(3, 5, 48)
    out = half(x)
    assert out.shape == (3, 5, 40) and out.dtype == torch.float32
    # fp32 accumulation: as close to F.linear with the rounded weight as two fp32 sums can be ...
    torch.testing.assert_close(out, F.linear(x, rounded, linear.bias.detach()), rtol=1e-5, atol=1e-5)
    # ... and not the result of rounding the activations to fp16 as well.
    assert (out - F.linear(x.half().float(), rounded, linear.bias.detach())).abs().max() > 1e-4


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def test_every_base_linear_is_replaced_and_the_logits_stay_the_models():
    model = tiny_llama()
    ids = torch.randint(0, 97, (2, 12))
    with torch.inference_mode():
        exact = model(ids).logits
    assert compact_weights(model) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the LM head
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert type(model.get_input_embeddings()) is nn.Embedding  # looked up by row: stays fp32
    with torch.inference_mode():
        half = model(ids).logits
    assert not torch.equal(half, exact)
    torch.testing.assert_close(half, exact, rtol=0, atol=2e-3)
    assert torch.equal(half.argmax(-1), exact.argmax(-1))


def lora_model(*, dora: bool = False):
    import peft

    model = tiny_llama()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], init_lora_weights=False,
                             use_dora=dora)
    torch.manual_seed(1)
    model = peft.get_peft_model(model, config, adapter_name="one")
    model.add_adapter("two", config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.3)
    return model.eval()


def test_adapters_stay_fp32_and_still_switch_per_request():
    model = lora_model()
    ids = torch.randint(0, 97, (1, 10))
    exact = {}
    with torch.inference_mode():
        for name in ("one", "two"):
            model.set_adapter(name)
            exact[name] = model(ids).logits
        with model.disable_adapter():
            exact["base"] = model(ids).logits
    compact_weights(model)
    layer = model.base_model.model.model.layers[0]
    assert isinstance(layer.self_attn.q_proj.base_layer, HalfLinear)
    assert type(layer.self_attn.q_proj.lora_A["one"]) is nn.Linear  # the adapter's own matrices are untouched
    assert isinstance(layer.self_attn.k_proj, HalfLinear)  # not adapted: replaced directly
    with torch.inference_mode():
        for name in ("one", "two"):
            model.set_adapter(name)
            torch.testing.assert_close(model(ids).logits, exact[name], rtol=0, atol=2e-3)
        with model.disable_adapter():
            torch.testing.assert_close(model(ids).logits, exact["base"], rtol=0, atol=2e-3)
    assert (exact["one"] - exact["two"]).abs().max() > 0.1  # the adapters differ, so the checks above are not trivial


def test_base_layers_under_dora_keep_their_fp32_weight():
    model = lora_model(dora=True)
    ids = torch.randint(0, 97, (1, 10))
    with torch.inference_mode():
        exact = model(ids).logits
    compact_weights(model)
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, exact, rtol=0, atol=2e-3)
    layer = model.base_model.model.model.layers[0]
    assert type(layer.self_attn.q_proj.base_layer) is nn.Linear and type(layer.mlp.down_proj.base_layer) is nn.Linear
    assert isinstance(layer.self_attn.k_proj, HalfLinear)


def test_load_served_compacts_on_request_and_refuses_an_unknown_storage(tiny_chat_dir: Path):
    exact = load_served([str(tiny_chat_dir)], device="cpu")[tiny_chat_dir.name]
    assert not any(isinstance(m, HalfLinear) for m in exact.model.modules())  # the library's default is exact
    notes: list[str] = []
    half = load_served([str(tiny_chat_dir)], device="cpu", weights="fp16", on_note=notes.append)[tiny_chat_dir.name]
    assert any(isinstance(m, HalfLinear) for m in half.model.modules())
    assert any("fp16" in n for n in notes)
    with pytest.raises(ConfigError) as err:
        load_served([str(tiny_chat_dir)], device="cpu", weights="int4")
    assert "weights" in str(err.value) and "fp16 or fp32" in str(err.value)


def test_the_server_compacts_by_default_and_keeps_fp32_when_asked(tiny_chat_dir: Path):
    from tailorlm.serving import bind, build_server

    for weights, packed in ((None, True), ("fp32", False)):
        sock = bind("127.0.0.1", 0)
        try:
            options = {} if weights is None else {"weights": weights}
            server = build_server([f"chat={tiny_chat_dir}"], sock=sock, device="cpu", **options)
            model = server.config.app.state.served["chat"].model
            assert any(isinstance(m, HalfLinear) for m in model.modules()) is packed
        finally:
            sock.close()
