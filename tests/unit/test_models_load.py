"""Loading and generating: heads, dtypes, eval mode, no checkpoint code, greedy chat generation returning new text."""

from __future__ import annotations

import json
import shutil

import pytest

from tailorlm.errors import ConfigError, ModelError
from tailorlm.models import generate, load_model, load_tokenizer
from tailorlm.models.generate import render_prompt

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILORLM_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return load_model(str(tiny_llama_dir), progress=False)


def test_load_model_defaults_to_fp32_eval_on_cpu(tiny):
    import torch

    model, tokenizer = tiny
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert next(model.parameters()).device.type == "cpu"
    assert tokenizer.eos_token == "<|endoftext|>"


def test_dtype_and_heads(tiny_llama_dir):
    import torch

    model, _ = load_model(str(tiny_llama_dir), dtype="bf16", progress=False)
    assert next(model.parameters()).dtype == torch.bfloat16
    encoder, _ = load_model(str(tiny_llama_dir), head="encoder", progress=False)
    assert type(encoder).__name__ == "LlamaModel"
    classifier, tokenizer = load_model(
        str(tiny_llama_dir), head="sequence-classification", num_labels=3, progress=False
    )
    assert classifier.config.num_labels == 3 and classifier.score.out_features == 3
    assert classifier.config.pad_token_id == tokenizer.pad_token_id


def test_bad_head_dtype_and_num_labels_are_config_errors(tiny_llama_dir):
    with pytest.raises(ConfigError, match="unknown model head"):
        load_model(str(tiny_llama_dir), head="token-classification")
    with pytest.raises(ConfigError, match="unknown dtype"):
        load_model(str(tiny_llama_dir), dtype="float8")
    with pytest.raises(ConfigError, match="num_labels applies only"):
        load_model(str(tiny_llama_dir), num_labels=2)


def test_encoder_checkpoint_refuses_a_causal_head(tiny_llama_dir, tmp_path):
    folder = tmp_path / "encoder"
    shutil.copytree(tiny_llama_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaModel"]}))
    with pytest.raises(ModelError, match="no language-model head"):
        load_model(str(folder))


def test_checkpoint_code_never_runs_by_default(tiny_llama_dir, tmp_path):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_llama_dir, folder)
    sentinel = tmp_path / "code-ran"
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="tailorlm-custom", auto_map={"AutoConfig": "custom.Config", "AutoModelForCausalLM": "custom.Model"}
    )
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(f"open({str(sentinel)!r}, 'w').write('ran')\n")
    with pytest.raises(ModelError, match="run code shipped with the checkpoint"):
        load_model(str(folder))
    assert not sentinel.exists()


def test_load_tokenizer_alone(tiny_llama_dir, tiny_tokenizer):
    tokenizer = load_tokenizer(str(tiny_llama_dir))
    assert tokenizer("hello world").input_ids == tiny_tokenizer("hello world").input_ids


def test_greedy_generation_is_deterministic_and_returns_only_new_text(tiny):
    import torch

    model, tokenizer = tiny
    prompt = "The capital of France is"
    first = generate(model, tokenizer, prompt, max_new_tokens=8)
    assert first == generate(model, tokenizer, prompt, max_new_tokens=8)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    assert first == tokenizer.decode(expected[0, ids.shape[1] :], skip_special_tokens=True)


def test_sampling_with_a_seed_repeats(tiny):
    model, tokenizer = tiny
    a = generate(model, tokenizer, "hello", max_new_tokens=6, temperature=1.0, seed=3)
    assert a == generate(model, tokenizer, "hello", max_new_tokens=6, temperature=1.0, seed=3)


def test_chat_messages_use_the_chat_template(tiny, tokenizer):
    model, _ = tiny
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    with pytest.raises(ModelError, match="no chat template"):
        generate(model, tokenizer, messages)
    tokenizer.chat_template = CHATML
    assert render_prompt(tokenizer, messages) == (
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert isinstance(generate(model, tokenizer, messages, max_new_tokens=4), str)
    with pytest.raises(ModelError, match="'role' and 'content'"):
        generate(model, tokenizer, [{"text": "hi"}])


def test_too_long_prompt_is_refused(tiny):
    model, tokenizer = tiny
    with pytest.raises(ModelError, match="too long"):
        generate(model, tokenizer, "hello " * 300, max_new_tokens=8)


def test_a_decoder_has_no_seq2seq_form(tiny_llama_dir):
    with pytest.raises(ModelError, match="has no 'seq2seq' form.*encoder-decoder"):
        load_model(str(tiny_llama_dir), head="seq2seq", progress=False)
