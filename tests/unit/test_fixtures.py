from pathlib import Path


def test_tiny_tokenizer_round_trips_any_text(tiny_tokenizer):
    text = "Ünïcode ✓ and 42 numbers"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(ids) == text
    assert tiny_tokenizer.convert_tokens_to_ids("<|im_end|>") != tiny_tokenizer.unk_token_id


def test_tiny_llama_dir_is_safetensors_only(tiny_llama_dir: Path):
    names = {p.name for p in tiny_llama_dir.iterdir()}
    assert "model.safetensors" in names and "config.json" in names
    assert not any(n.endswith(".bin") for n in names)
