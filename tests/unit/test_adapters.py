import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from tailorlm.errors import ConfigError
from tailorlm.strategies.adapters import apply_method, count_parameters, linear_module_names
from tailorlm.training.config import resolve_config

BASE = {"model": "m", "objective": "sft", "data": "d.jsonl", "output": "o"}


def tiny_llama(layers: int = 3) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def trained_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def test_default_targets_are_every_attention_and_mlp_linear_but_not_the_head():
    assert linear_module_names(tiny_llama()) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    bert = BertForSequenceClassification(BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=4,
                                                    intermediate_size=64, vocab_size=100))
    assert linear_module_names(bert) == ["query", "key", "value", "output.dense", "intermediate.dense"]


def test_lora_trains_exactly_rank_times_in_plus_out_per_target():
    config = resolve_config(values={**BASE, "method": "lora"}, overrides=["lora.r=4"])
    model = apply_method(tiny_llama(layers=2), config)
    trainable, _ = count_parameters(model)
    # per layer: q (32->32), k (32->16), v (32->16), o (32->32), gate (32->64), up (32->64), down (64->32)
    per_layer = sum(4 * (i + o) for i, o in [(32, 32), (32, 16), (32, 16), (32, 32), (32, 64), (32, 64), (64, 32)])
    assert trainable == 2 * per_layer


def test_wrong_target_module_lists_the_existing_ones():
    config = resolve_config(values={**BASE, "method": "lora"}, overrides=["lora.target_modules=[q_proj, qkv]"])
    with pytest.raises(ConfigError) as err:
        apply_method(tiny_llama(), config)
    assert "'qkv'" in str(err.value) and "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in str(err.value)


def test_freeze_last_layer_trains_that_layer_and_final_norm_only():
    config = resolve_config(values={**BASE, "method": "freeze"}, overrides=["freeze.last_n_layers=1"])
    names = trained_names(apply_method(tiny_llama(layers=3), config))
    assert all(n.startswith("model.layers.2.") or n == "model.norm.weight" for n in names)
    assert "model.norm.weight" in names and "model.embed_tokens.weight" not in names
    assert len([n for n in names if n.startswith("model.layers.2.")]) == 9


def test_freeze_named_modules_and_bad_name():
    config = resolve_config(values={**BASE, "method": "freeze"}, overrides=["freeze.modules=[layers.0.mlp]"])
    names = trained_names(apply_method(tiny_llama(), config))
    assert names == ["model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight",
                     "model.layers.0.mlp.down_proj.weight"]
    config = resolve_config(values={**BASE, "method": "freeze"}, overrides=["freeze.modules=[nothing]"])
    with pytest.raises(ConfigError, match="matched no parameter"):
        apply_method(tiny_llama(), config)
    config = resolve_config(values={**BASE, "method": "freeze"}, overrides=["freeze.last_n_layers=9"])
    with pytest.raises(ConfigError, match="1 to 3"):
        apply_method(tiny_llama(), config)


@pytest.mark.parametrize(
    "method, trainable",
    [
        ("ia3", 3 * (16 + 16 + 64)),  # k, v outputs scaled; down_proj input scaled
        ("prompt_tuning", 20 * 32),
        ("full", None),
    ],
)
def test_trainable_parameter_counts(method, trainable):
    model = apply_method(tiny_llama(), resolve_config(values={**BASE, "method": method}))
    got, total = count_parameters(model)
    assert got == (total if trainable is None else trainable)
