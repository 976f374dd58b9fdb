"""`tailor export`: merged Hugging Face folders and GGUF files of tiny random Llama specialists, checked for parity."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from tailorlm.cli import main

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


pytestmark = pytest.mark.usefixtures("single_thread")


def make_specialist(base: Path, out: Path, method: str = "lora") -> Path:
    """A specialist folder of `method` over the tiny Llama, with adapter weights moved off their identity start."""
    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tailorlm.strategies.base import Manifest, library_versions, save_specialist

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = CHATML
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = {
        "lora": lambda: peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=targets),
        "dora": lambda: peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=targets,
                                        use_dora=True),
        "ia3": lambda: peft.IA3Config(task_type="CAUSAL_LM", target_modules=["k_proj", "v_proj", "down_proj"],
                                      feedforward_modules=["down_proj"]),
        "prompt_tuning": lambda: peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
        "prefix_tuning": lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
    }[method]()
    wrapped = peft.get_peft_model(model, config)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name or "ia3_l" in name or "prompt_encoder" in name or "magnitude" in name:
                param.add_(torch.randn_like(param) * 0.5)
    manifest = Manifest(base_model=str(base), base_model_path=str(base), strategy=method, objective="sft",
                        weights="adapter", versions=library_versions())
    save_specialist(out, wrapped, tokenizer, manifest)
    return out


@pytest.fixture(scope="module")
def lora_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    return make_specialist(tiny_llama_dir, tmp_path_factory.mktemp("spec") / "tiny-lora")


def probe_logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer("Patients with diabetes should check", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_hf_export_merges_the_adapter_into_a_folder_plain_transformers_loads(tiny_llama_dir, tmp_path, method):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tailorlm.strategies.base import load_specialist

    spec = make_specialist(tiny_llama_dir, tmp_path / f"tiny-{method}", method)
    out = tmp_path / "export"
    assert main(["export", str(spec), "--format", "hf", "--output", str(out)]) == 0

    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "parity.json"} <= files
    assert "adapter_config.json" not in files and "adapter" not in files
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-3 and parity["top1_agreement"] == 1.0
    assert parity["tokens_match"] and parity["chat_template_match"]

    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    specialist, _, _ = load_specialist(spec, dtype="float32", device="cpu")
    assert tokenizer.chat_template == CHATML
    expected, merged = probe_logits(specialist, tokenizer), probe_logits(plain, tokenizer)
    torch.testing.assert_close(merged, expected, atol=1e-4, rtol=0)
    with specialist.disable_adapter():  # the adapter mattered: the merged model is not the base model
        assert (probe_logits(specialist, tokenizer) - merged).abs().max() > 1e-2


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_gguf_export_round_trips_through_transformers_gguf_loader(lora_dir, tmp_path, quant, capsys):
    from gguf import GGUFReader

    out = tmp_path / f"gguf-{quant}"
    assert main(["export", str(lora_dir), "--format", "gguf", "--quant", quant, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "PASSED" in printed and "top-1 agreement" in printed

    path = out / f"tiny-lora-{quant}.gguf"
    assert sorted(p.name for p in out.iterdir()) == ["parity.json", path.name]
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["export"] == quant
    assert parity["top1_agreement"] >= (1.0 if quant == "f16" else 0.9)  # a random model's near-ties can flip at q8_0
    assert parity["max_abs_diff"] <= (5e-3 if quant == "f16" else 0.15) * parity["logit_scale"]

    reader = GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "llama" and fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["llama.block_count"] == 2 and fields["llama.embedding_length"] == 32
    assert fields["llama.attention.head_count"] == 4 and fields["llama.attention.head_count_kv"] == 2
    assert fields["llama.feed_forward_length"] == 64 and fields["llama.context_length"] == 256
    assert fields["tokenizer.chat_template"] == CHATML
    assert fields["tokenizer.ggml.tokens"][1] == "<|im_start|>" and fields["tokenizer.ggml.token_type"][1] == 3
    names = {t.name: t.tensor_type.name for t in reader.tensors}
    assert "output.weight" not in names  # tied to token_embd
    assert {"token_embd.weight", "blk.1.attn_q.weight", "blk.1.ffn_down.weight", "output_norm.weight"} <= set(names)
    assert names["blk.0.attn_k.weight"] == quant.upper() and names["blk.0.attn_norm.weight"] == "F32"


def test_a_gguf_export_is_also_read_back_by_llama_cpp(lora_dir, tmp_path, capsys):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (optional)")
    out = tmp_path / "f32"
    assert main(["export", str(lora_dir), "--format", "gguf", "--quant", "f32", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "read by transformers" in printed and "read by llama.cpp" in printed and printed.count("PASSED") == 2
    parity = json.loads((out / "parity.json").read_text())
    llama = parity["llama_cpp"]
    assert llama["passed"] and llama["reader"] == "llama.cpp" and llama["tokens_match"] and llama["chat_template_match"]
    # f32 weights: llama.cpp's own kernels, the same numbers to float32 rounding, every next token the same.
    assert llama["top1_agreement"] == 1.0 and llama["positions"] == parity["positions"]
    assert 0 < llama["max_abs_diff"] <= 1e-3


def test_without_llama_cpp_the_gguf_check_says_what_to_install(lora_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` fails, as when it is not installed
    out = tmp_path / "f16"
    assert main(["export", str(lora_dir), "--format", "gguf", "--quant", "f16", "--output", str(out)]) == 0
    assert "not read back by llama.cpp: llama-cpp-python is not installed" in capsys.readouterr().out
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and "pip install llama-cpp-python" in parity["llama_cpp"]["skipped"]


def test_f32_gguf_reads_back_into_identical_weights(tiny_llama_dir, tmp_path):
    """The Q/K permutation is exactly what transformers' loader undoes: every weight comes back bit for bit."""
    from transformers import AutoModelForCausalLM

    from tailorlm.export import export, load_gguf

    result = export(tiny_llama_dir, format="gguf", quant="f32", output=tmp_path / "f32")
    assert result.report.passed and result.report.max_abs_diff == 0.0
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).state_dict()
    reloaded, _ = load_gguf(result.gguf_file)
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name


def test_permutation_is_the_inverse_of_transformers_reverse_permutation():
    import numpy as np
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from tailorlm.export.gguf import permute_for_llama_cpp

    undo = LlamaTensorProcessor(config={"num_attention_heads": 6, "num_key_value_heads": 2})
    q, k = np.arange(48 * 8, dtype=np.float32).reshape(48, 8), np.arange(16 * 8, dtype=np.float32).reshape(16, 8)
    assert np.array_equal(undo.process(permute_for_llama_cpp(q, 6, 6), "blk.0.attn_q.weight").weights, q)
    assert np.array_equal(undo.process(permute_for_llama_cpp(k, 6, 2), "blk.0.attn_k.weight").weights, k)
    # llama.cpp's layout pairs row i of each head's first half with row i of its second half
    assert permute_for_llama_cpp(q, 6, 6)[:2, 0].tolist() == [q[0, 0], q[4, 0]]


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_prompt_learning_exports_base_plus_adapter_and_refuses_gguf(tiny_llama_dir, tmp_path, method, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec = make_specialist(tiny_llama_dir, tmp_path / "prompted", method)
    out = tmp_path / "export"
    assert main(["export", str(spec), "--format", "hf", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cannot be merged" in printed and "adapter/" in printed
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "model.safetensors").is_file()
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-3
    assert any("cannot be merged" in note for note in parity["notes"])
    # the base in the folder is the untouched base model
    base = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    assert all(torch.equal(t, original.state_dict()[n]) for n, t in base.state_dict().items())
    assert isinstance(PeftModel.from_pretrained(base, out / "adapter"), PeftModel)

    gguf_out = tmp_path / "gguf"
    assert main(["export", str(spec), "--format", "gguf", "--output", str(gguf_out)]) == 2
    err = capsys.readouterr().err
    assert "cannot be exported to GGUF" in err and "--format hf" in err and str(spec) in err
    assert not gguf_out.exists()


def test_a_failed_parity_check_exits_non_zero_and_says_why(lora_dir, tmp_path, monkeypatch, capsys):
    from tailorlm.export import parity

    monkeypatch.setitem(parity.TOLERANCES, "hf", parity.Tolerance(max_abs=0.0))
    monkeypatch.setattr(parity, "logits_of", _shifted(parity.logits_of))
    out = tmp_path / "export"
    assert main(["export", str(lora_dir), "--format", "hf", "--output", str(out)]) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and "max |logit diff|" in captured.err and "parity.json" in captured.err
    assert json.loads((out / "parity.json").read_text())["passed"] is False


def _shifted(logits_of):
    calls = []

    def shifted(model, inputs):
        calls.append(1)
        result = logits_of(model, inputs)
        return result if len(calls) == 1 else [t + 0.01 for t in result]  # the export, not the reference

    return shifted


def test_existing_output_is_kept_without_overwrite_and_replaced_with_it(lora_dir, tmp_path, capsys):
    out = tmp_path / "export"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert main(["export", str(lora_dir), "--format", "hf", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err
    assert (out / "precious.txt").read_text() == "keep me"

    assert main(["export", str(lora_dir), "--format", "hf", "--output", str(out), "--overwrite"]) == 0
    assert not (out / "precious.txt").exists() and (out / "parity.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no staging or backup folders left behind


@pytest.mark.parametrize("quant", ["q4_k", "int8"])
def test_unsupported_quantization_is_refused_before_loading_and_lists_what_is(tmp_path, capsys, quant):
    assert main(["export", str(tmp_path / "missing"), "--format", "gguf", "--quant", quant,
                 "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert repr(quant) in err and "f32, f16, q8_0" in err


def test_quant_with_hf_format_is_refused(lora_dir, tmp_path, capsys):
    assert main(["export", str(lora_dir), "--format", "hf", "--quant", "f16", "--output", str(tmp_path / "o")]) == 2
    assert "--quant applies only to --format gguf" in capsys.readouterr().err


def test_specialist_missing_its_adapter_weights_names_the_folder_and_the_file(lora_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(lora_dir, broken)
    (broken / "adapter_model.safetensors").unlink()
    assert main(["export", str(broken), "--format", "hf", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "missing files" in err and "adapter_model.safetensors" in err


def test_specialist_from_a_newer_tailorlm_is_refused(lora_dir, tmp_path, capsys):
    newer = tmp_path / "newer"
    shutil.copytree(lora_dir, newer)
    manifest = json.loads((newer / "specialist.json").read_text())
    (newer / "specialist.json").write_text(json.dumps({**manifest, "format_version": 99}))
    assert main(["export", str(newer), "--format", "gguf", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "newer tailorlm" in err and str(newer) in err


def test_adapter_whose_base_model_is_gone_says_which_base(lora_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TAILORLM_HOME", str(tmp_path / "home"))
    orphan = tmp_path / "orphan"
    shutil.copytree(lora_dir, orphan)
    manifest = json.loads((orphan / "specialist.json").read_text())
    gone = str(tmp_path / "deleted-base")
    (orphan / "specialist.json").write_text(json.dumps({**manifest, "base_model": gone, "base_model_path": gone}))
    assert main(["export", str(orphan), "--format", "hf", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "base model is not available" in err and gone in err and "specialist.json" in err


def test_a_folder_that_is_neither_specialist_nor_model_is_refused(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hi")
    assert main(["export", str(tmp_path / "notes"), "--format", "hf", "--output", str(tmp_path / "o")]) == 2
    assert "not a specialist folder or a model folder" in capsys.readouterr().err


def test_gguf_of_a_non_llama_model_lists_what_is_supported(tmp_path, tiny_tokenizer, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=64)
                    ).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    assert main(["export", str(folder), "--format", "gguf", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Llama-architecture" in err and "'gpt2'" in err and "--format hf" in err


def test_a_model_loaded_from_gguf_saves_without_its_quantization_settings(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from tailorlm.export import export
    from tailorlm.export.merge import plain_model

    result = export(tiny_llama_dir, format="gguf", quant="q8_0", output=tmp_path / "q8")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q8", gguf_file=result.gguf_file.name,
                                          dtype=torch.float32)
    assert loaded.hf_quantizer is not None  # transformers keeps it, and would refuse to save the model with it
    plain_model(loaded).save_pretrained(tmp_path / "plain")
    assert "quantization_config" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "plain", dtype=torch.float32)
    assert getattr(again, "hf_quantizer", None) is None


def test_a_classifier_specialist_exports_merged_with_its_head(tiny_llama_dir, tmp_path):
    import peft
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tailorlm.export import export
    from tailorlm.strategies.base import Manifest, save_specialist

    torch.manual_seed(2)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=3, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name or "score" in name:
                param.add_(torch.randn_like(param) * 0.5)
    spec = tmp_path / "classifier"
    manifest = Manifest(base_model=str(tiny_llama_dir), base_model_path=str(tiny_llama_dir), strategy="lora",
                        objective="classify", weights="adapter", labels=["neg", "neu", "pos"])
    save_specialist(spec, wrapped, tokenizer, manifest)
    result = export(spec, format="hf", output=tmp_path / "export")
    assert result.report.passed and result.report.max_abs_diff <= 1e-3
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    ids = tokenizer("Shares rose 5%", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, wrapped(ids).logits, atol=1e-4, rtol=0)


def test_a_plain_model_reference_exports_to_gguf_without_any_difference(tiny_llama_dir, tmp_path, capsys):
    assert main(["export", str(tiny_llama_dir), "--format", "gguf", "--quant", "f32", "--output",
                 str(tmp_path / "o")]) == 0
    parity = json.loads((tmp_path / "o" / "parity.json").read_text())
    assert parity["max_abs_diff"] == 0.0 and parity["quant"] == "f32" and parity["notes"] == []


def test_a_gguf_that_llama_cpp_cannot_read_fails_the_check_and_keeps_the_files(lora_dir, tmp_path, capsys,
                                                                              monkeypatch):
    import types

    import tailorlm.export.parity as parity

    monkeypatch.setitem(sys.modules, "llama_cpp", types.ModuleType("llama_cpp"))  # "installed"

    def cannot_load(path, inputs):
        raise ValueError(f"Failed to load model from file: {path}")

    monkeypatch.setattr(parity, "llama_cpp_logits", cannot_load)
    out = tmp_path / "f16"
    assert main(["export", str(lora_dir), "--format", "gguf", "--quant", "f16", "--output", str(out)]) == 1
    captured = capsys.readouterr()
    assert "read by llama.cpp" in captured.out and "llama.cpp could not read the file: ValueError" in captured.err
    parity_json = json.loads((out / "parity.json").read_text())
    assert parity_json["passed"] and not parity_json["llama_cpp"]["passed"]  # transformers read it; llama.cpp did not
    assert (out / "tiny-lora-f16.gguf").is_file()  # the file stays for inspection
