"""GGUF conversion: a tiny Llama written as GGUF converts to safetensors that compute the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tailorlm.models import hub
from tailorlm.models.info import model_info

CHATML = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def write_tiny_gguf(path: Path, tok):
    """Write a tiny random Llama with `tok`'s vocabulary and a ChatML template as a float32 GGUF; return the model."""
    import gguf
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    heads, kv_heads, layers = 4, 2, 2
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=256,
            tie_word_embeddings=True,
        )
    )
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_block_count(layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(model.config.rms_norm_eps)
    writer.add_rope_freq_base(model.config.rope_parameters["rope_theta"])
    writer.add_vocab_size(len(tok))
    state = json.loads(tok.backend_tokenizer.to_str())
    tokens = [""] * len(tok)
    for text, i in state["model"]["vocab"].items():
        tokens[i] = text
    special = {t["id"]: t["content"] for t in state["added_tokens"]}
    for i, text in special.items():
        tokens[i] = text
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])  # 3 = control token
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]])
    writer.add_bos_token_id(tok.bos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_chat_template(CHATML)

    def permute(x, n):  # llama.cpp stores q/k rotary halves interleaved; transformers undoes this on load
        return x.reshape(n, 2, x.shape[0] // n // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    weights = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    for i in range(layers):
        for hf, gg in LAYER_NAMES.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    for hf, gg in names.items():
        x = weights[hf]
        x = permute(x, heads) if "q_proj" in hf else permute(x, kv_heads) if "k_proj" in hf else x
        writer.add_tensor(gg, x)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture
def tiny_gguf(tmp_path, monkeypatch, tiny_tokenizer):
    monkeypatch.setenv("TAILORLM_HOME", str(tmp_path / "home"))
    path = tmp_path / "tiny-llama.F32.gguf"
    model = write_tiny_gguf(path, tiny_tokenizer)
    return path, model, tiny_tokenizer


def test_gguf_converts_to_safetensors_with_same_logits(tiny_gguf, capfd):
    import torch

    from tailorlm.models import load_model

    path, original, tok = tiny_gguf
    folder = hub.resolve(str(path), progress=False)
    assert capfd.readouterr().err == ""  # progress=False silences every bar, transformers' included
    assert folder.parent == hub.models_dir() and (folder / "model.safetensors").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]

    model, tokenizer = load_model(str(path), progress=False)
    ids = tok("What is the capital of France?", return_tensors="pt").input_ids
    assert tokenizer("What is the capital of France?").input_ids == ids[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits, atol=1e-5, rtol=1e-5)

    info = model_info(str(path), progress=False)
    assert info.chat_template is True
    assert info.parameters == sum(p.numel() for p in original.parameters())
    assert info.source == str(path.resolve())


def test_gguf_in_a_folder_of_its_own_is_found(tiny_gguf):
    path, _, _ = tiny_gguf
    folder = path.parent / "only-gguf"
    folder.mkdir()
    path.rename(folder / path.name)
    converted = hub.resolve(str(folder), progress=False)
    assert converted.name.startswith("gguf-tiny-llama-f32-")
