"""LoRA fine-tuning of the real built-in instruct model on real data, through the CLI, loaded back with plain peft."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tailorlm.cli import main

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MEDQUAD = ROOT / "examples" / "data" / "medical_qa" / "medquad" / "medquad_cdc.jsonl"


def test_lora_sft_on_medquad_loads_in_plain_peft(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tailorlm.models.hub import resolve
    from tailorlm.strategies.base import load_specialist

    out = tmp_path / "medquad-lora"
    code = main(["train", "--model", "smollm2-135m-instruct", "--data", str(MEDQUAD), "--method", "lora",
                 "--objective", "sft", "--output", str(out), "--max-steps", "2",
                 "--set", "train.batch_size=1", "--set", "train.max_length=192", "--set", "lora.r=4",
                 "--set", "data.split={eval: 0.1}", "--set", "train.tensorboard=false"])
    assert code == 0
    manifest = json.loads((out / "specialist.json").read_text())
    assert manifest["steps"] == 2 and manifest["strategy"] == "lora" and manifest["base_model"] == "smollm2-135m-instruct"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert all(0.0 < r["loss"] < 10.0 for r in records if "loss" in r)

    base = AutoModelForCausalLM.from_pretrained(resolve("smollm2-135m-instruct"), dtype=torch.float32)
    plain = PeftModel.from_pretrained(base, out).eval()
    ours, tokenizer, _ = load_specialist(out)
    ids = AutoTokenizer.from_pretrained(out)("What causes flu?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, ours(ids).logits)
    # the adapter changed the model: LoRA B starts at zero, so any difference proves the update was saved
    with torch.no_grad(), plain.disable_adapter():
        assert not torch.equal(plain(ids).logits, ours(ids).logits)
