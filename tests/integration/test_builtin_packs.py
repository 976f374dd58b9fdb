"""The built-in packs for real: pulled once into the user's cache (reused across runs), described, and used."""

from __future__ import annotations

import time

import pytest

from tailorlm.cli import main
from tailorlm.models import generate, load_model, model_info, pull

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    # The real cache (TAILORLM_HOME or ~/.cache/tailorlm): the first run converts the GGUF (~20 s), later runs reuse it.
    return pull("smollm2-135m-instruct")


def test_smollm2_pull_is_idempotent(smollm2):
    start = time.perf_counter()
    assert pull("smollm2-135m-instruct", progress=False) == smollm2
    assert time.perf_counter() - start < 2
    assert (smollm2 / "model.safetensors").is_file()
    assert not list(smollm2.glob("*.gguf"))


def test_smollm2_info(smollm2, capsys):
    info = model_info("smollm2-135m-instruct")
    assert info.parameters == 134_515_008
    assert info.chat_template is True
    assert (info.architecture, info.vocab_size, info.context_length) == ("LlamaForCausalLM", 49152, 8192)
    assert main(["models", "info", "smollm2-135m-instruct"]) == 0
    out = capsys.readouterr().out
    assert "134.5 M" in out and "chat template    yes" in out


def test_smollm2_answers_paris(smollm2):
    model, tokenizer = load_model("smollm2-135m-instruct")
    answer = generate(
        model, tokenizer, [{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=24
    )
    assert "Paris" in answer


def test_minilm_pull_info_and_embeddings():
    import torch

    path = pull("minilm-l6")
    info = model_info("minilm-l6")
    assert (info.architecture, info.layers, info.hidden_size) == ("BertModel", 6, 384)
    assert info.parameters == 22_713_216 and info.chat_template is False

    model, tokenizer = load_model(str(path), head="encoder")
    batch = tokenizer(
        ["A cat sits on the mat.", "A kitten rests on a rug.", "Stock prices fell sharply."],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (B, T, 384)
    mask = batch["attention_mask"].unsqueeze(-1)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2
