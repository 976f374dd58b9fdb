"""`model_info`: facts read from the files, with the parameter count from safetensors headers matching torch."""

from __future__ import annotations

import json
import shutil

import pytest

from tailorlm.errors import ModelError
from tailorlm.models.info import count_parameters, format_bytes, format_count, format_info, model_info


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILORLM_HOME", str(tmp_path / "home"))


def torch_count(folder) -> int:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


def test_info_of_the_tiny_model(tiny_llama_dir, tiny_tokenizer):
    info = model_info(str(tiny_llama_dir))
    assert info.parameters == torch_count(tiny_llama_dir)
    assert (info.architecture, info.model_type) == ("LlamaForCausalLM", "llama")
    assert info.vocab_size == len(tiny_tokenizer)
    assert (info.context_length, info.layers, info.hidden_size) == (256, 2, 32)
    assert info.chat_template is False
    assert info.weights_dtype == "F32"
    assert info.disk_bytes == sum(p.stat().st_size for p in tiny_llama_dir.iterdir())
    assert info.source is None
    assert json.loads(json.dumps(info.to_dict()))["parameters"] == info.parameters


def test_untied_model_counts_the_output_layer(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "untied")
    total, _ = count_parameters(tmp_path / "untied", tied=False)
    assert total == torch_count(tmp_path / "untied")


def test_tied_head_saved_twice_is_counted_once(tiny_llama_dir, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "both"
    shutil.copytree(tiny_llama_dir, folder)
    weights = load_file(folder / "model.safetensors")
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
    weights["model.rotary_emb.position_ids"] = torch.arange(8)  # an integer buffer is not a parameter
    save_file(weights, folder / "model.safetensors")
    assert count_parameters(folder, tied=True)[0] == torch_count(tiny_llama_dir)


def test_chat_template_is_detected(tiny_llama_dir, tmp_path):
    folder = tmp_path / "chat"
    shutil.copytree(tiny_llama_dir, folder)
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    assert model_info(str(folder)).chat_template is True


def test_corrupt_safetensors_is_a_model_error(tiny_llama_dir, tmp_path):
    folder = tmp_path / "corrupt"
    shutil.copytree(tiny_llama_dir, folder)
    (folder / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ModelError, match="not a valid safetensors file"):
        model_info(str(folder))


def test_formatting():
    assert format_count(134_515_008) == "134.5 M"
    assert format_count(1_710_000_000) == "1.7 B"
    assert format_count(30_200) == "30.2 K"
    assert format_bytes(541_600_000) == "541.6 MB"


def test_format_info_lists_every_fact(tiny_llama_dir):
    info = model_info(str(tiny_llama_dir))
    text = format_info(info)
    for label in ("architecture", "parameters", "vocabulary size", "context length", "chat template", "disk size"):
        assert label in text
    assert f"({info.parameters:,})" in text and "LlamaForCausalLM (llama)" in text
