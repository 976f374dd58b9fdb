"""`tailor export` of a LoRA specialist of the real SmolLM2-135M-Instruct: merged folder and f16 GGUF pass parity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tailorlm.cli import main

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MEDQUAD = ROOT / "examples" / "data" / "medical_qa" / "medquad" / "medquad_cdc.jsonl"


@pytest.fixture(scope="module")
def specialist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smollm2") / "medquad-lora"
    code = main(["train", "--model", "smollm2-135m-instruct", "--data", str(MEDQUAD), "--method", "lora",
                 "--objective", "sft", "--output", str(out), "--max-steps", "2",
                 "--set", "train.batch_size=1", "--set", "train.max_length=128", "--set", "lora.r=4",
                 "--set", "train.lr=5e-3", "--set", "train.warmup_steps=0", "--set", "data.split={}",
                 "--set", "train.tensorboard=false"])
    assert code == 0
    return out


def test_merged_folder_loads_in_plain_transformers_and_matches_the_specialist(specialist, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tailorlm.strategies.base import load_specialist

    out = tmp_path / "hf"
    assert main(["export", str(specialist), "--format", "hf", "--output", str(out)]) == 0
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-3 and parity["top1_agreement"] == 1.0
    assert parity["tokens_match"] and parity["chat_template_match"]

    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ours, _, _ = load_specialist(specialist, dtype="float32", device="cpu")
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What causes flu?"}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)
    with torch.no_grad():
        expected = ours.generate(**chat, max_new_tokens=8, do_sample=False)
        got = plain.generate(**chat, max_new_tokens=8, do_sample=False)
        assert torch.equal(got, expected)
        with ours.disable_adapter():  # the trained adapter changed the model, so the merge carried something
            assert (ours(chat["input_ids"]).logits - plain(chat["input_ids"]).logits).abs().max() > 1e-3


def test_f16_gguf_reads_back_with_transformers_and_passes_parity(specialist, tmp_path):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    out = tmp_path / "gguf"
    assert main(["export", str(specialist), "--format", "gguf", "--quant", "f16", "--output", str(out)]) == 0
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["top1_agreement"] == 1.0 and parity["tokens_match"]
    assert parity["max_abs_diff"] <= 0.005 * parity["logit_scale"] and parity["chat_template_match"]

    reader = GGUFReader(out / "medquad-lora-f16.gguf")
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["llama.block_count"] == 30 and fields["llama.attention.head_count_kv"] == 3
    assert fields["llama.rope.freq_base"] == 100000.0 and len(fields["tokenizer.ggml.tokens"]) == 49152
    assert fields["tokenizer.chat_template"] == AutoTokenizer.from_pretrained(specialist).chat_template
    assert len(reader.tensors) == 272  # 30 blocks of 9, the embeddings and the final norm; the head is tied
