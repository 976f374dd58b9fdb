"""`tailor tokenizer extend` on tiny random Llama models: which words, exact embeddings, tied and untied heads."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from tailorlm.cli import main
from tailorlm.errors import ConfigError, ModelError
from tailorlm.tokenization.corpus import Corpus
from tailorlm.tokenization.extend import REPORT_FILE, choose_words, count_words, extend_tokenizer

DOMAIN = [
    "Patients with hypertension and hyperlipidemia need statins and antihypertensive therapy.",
    "Hypertension is common; hypertension raises the risk of stroke. Statins lower cholesterol.",
    "The zebrafish model of hyperlipidemia responds to statins, and antihypertensive drugs help.",
    "Untreated hypertension damages the kidneys (nephropathy) and the retina (retinopathy).",
]


@pytest.fixture
def domain_file(tmp_path) -> Path:
    path = tmp_path / "domain.txt"
    path.write_text("\n\n".join(DOMAIN * 5) + "\n", encoding="utf-8")
    return path


def _models(base_dir: Path, out: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(base_dir), AutoTokenizer.from_pretrained(base_dir),
            AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out))


def test_extension_adds_exactly_the_reported_tokens_with_piece_mean_embeddings(tiny_llama_dir, domain_file, tmp_path):
    out = tmp_path / "extended"
    report = extend_tokenizer(tiny_llama_dir, [domain_file], add=5, output=out, held_out=0.1, loss_texts=2, progress=False)
    base, base_tok, ext, ext_tok = _models(tiny_llama_dir, out)

    n = len(base_tok)
    # frequency × (pieces − 1) on the 18 counted blocks: 10 × 12, 10 × 12 (ties by text), 13 × 9, 5 × 7, 5 × 6
    assert [(w.token, w.frequency, len(w.pieces), w.saved) for w in report.added] == [
        (" antihypertensive", 10, 13, 120), (" hyperlipidemia", 10, 13, 120), (" hypertension", 13, 10, 117),
        (" responds", 5, 8, 35), (" zebrafish", 5, 7, 30)]
    new = {tok.content: id_ for id_, tok in ext_tok.added_tokens_decoder.items() if id_ >= n}
    assert new == {w.token: w.id for w in report.added}
    assert sorted(new.values()) == list(range(n, n + 5)) and len(ext_tok) == n + 5
    assert json.loads((out / REPORT_FILE).read_text())["added"][0]["token"] == " antihypertensive"

    old, grown = base.get_input_embeddings().weight, ext.get_input_embeddings().weight
    assert grown.shape == (n + 5, old.shape[1]) and ext.config.vocab_size == n + 5
    assert torch.equal(grown[:n], old)
    for word in report.added:
        assert word.pieces == base_tok(word.token, add_special_tokens=False)["input_ids"] and len(word.pieces) >= 3
        assert torch.equal(grown[word.id], old[word.pieces].mean(dim=0))
    assert report.tied_head and ext.config.tie_word_embeddings
    assert ext.get_output_embeddings().weight.data_ptr() == grown.data_ptr()


def test_added_tokens_are_used_in_running_text_and_save_what_was_predicted(tiny_llama_dir, domain_file, tmp_path):
    from transformers import AutoTokenizer

    report = extend_tokenizer(tiny_llama_dir, [domain_file], add=3, output=tmp_path / "x", held_out=0, loss_texts=0, progress=False)
    base_tok, ext_tok = AutoTokenizer.from_pretrained(tiny_llama_dir), AutoTokenizer.from_pretrained(tmp_path / "x")
    text = domain_file.read_text(encoding="utf-8")
    blocks = list(Corpus.open([domain_file]).texts(held_out=0, part="all"))
    assert "".join(blocks) == text
    ids = [i for block in blocks for i in ext_tok(block, add_special_tokens=False)["input_ids"]]
    uses = Counter(ids)
    assert [uses[w.id] for w in report.added] == [w.uses for w in report.added]
    assert all(w.uses == w.frequency for w in report.added)  # every " word" in the text became the one token
    base_total = sum(len(base_tok(b, add_special_tokens=False)["input_ids"]) for b in blocks)
    assert base_total - len(ids) == sum(w.saved for w in report.added) == base_total - report.predicted_tokens
    counted = report.fertility["counted"]
    assert (counted["base"].tokens, counted["extended"].tokens) == (base_total, len(ids))
    assert counted["extended"].per_char < counted["base"].per_char
    assert ext_tok.decode(ext_tok(text, add_special_tokens=False)["input_ids"]) == text
    # the bare form (start of a line) is left to the base tokenizer, so " hypertension" never loses its space
    hyper = next(w for w in report.added if w.token == " hypertension")
    assert hyper.id not in ext_tok("hypertension", add_special_tokens=False)["input_ids"]
    assert ext_tok("Untreated hypertension", add_special_tokens=False)["input_ids"][-1] == hyper.id


def test_a_prefix_that_would_cost_tokens_in_longer_words_is_skipped(tiny_tokenizer):
    pieces = {w: len(tiny_tokenizer(w, add_special_tokens=False)["input_ids"]) for w in (" suga", " sugar", "r")}
    assert pieces == {" suga": 4, " sugar": 1, "r": 1}
    # Adding " suga" saves 3 tokens on each of its 10 uses but cuts each " sugar" (one token) into " suga" + "r".
    assert choose_words(tiny_tokenizer, Counter({" suga": 10, " sugar": 100}), add=5, min_pieces=3) == []
    chosen = choose_words(tiny_tokenizer, Counter({" suga": 40, " sugar": 100}), add=5, min_pieces=3)
    assert [(w.token, w.saved) for w in chosen] == [(" suga", 40 * 3 - 100)]


def test_words_are_counted_with_their_leading_space(tiny_tokenizer):
    counts = count_words(tiny_tokenizer, ["Hypertension: hypertension, (hypertension)\nhypertension"])
    assert counts[" hypertension"] == 1 and counts["hypertension"] == 2 and counts["Hypertension"] == 1


def test_untied_head_and_a_padded_matrix(tmp_path, domain_file):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import build_tiny_tokenizer

    torch.manual_seed(1)
    tok = build_tiny_tokenizer()
    spare = 8  # a checkpoint whose matrix is larger than its vocabulary: the new tokens take the spare rows
    config = LlamaConfig(vocab_size=len(tok) + spare, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    base_dir = tmp_path / "untied"
    LlamaForCausalLM(config).save_pretrained(base_dir)
    tok.save_pretrained(base_dir)

    out = tmp_path / "extended"
    report = extend_tokenizer(base_dir, [domain_file], add=3, output=out, held_out=0.1, loss_texts=1, progress=False)
    base, _, ext, ext_tok = _models(base_dir, out)
    assert not report.tied_head and len(ext_tok) == len(tok) + 3
    rows = len(tok) + spare
    for layer in ("get_input_embeddings", "get_output_embeddings"):
        old, grown = getattr(base, layer)().weight, getattr(ext, layer)().weight
        assert grown.shape[0] == rows
        new_ids = {w.id for w in report.added}
        untouched = [i for i in range(rows) if i not in new_ids]
        assert torch.equal(grown[untouched], old[untouched])
        for word in report.added:
            assert torch.equal(grown[word.id], old[word.pieces].mean(dim=0))
    assert not torch.equal(ext.get_input_embeddings().weight, ext.get_output_embeddings().weight)


def test_cli_report_and_loss_per_character(tiny_llama_dir, domain_file, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["tokenizer", "extend", str(tiny_llama_dir), "--corpus", str(domain_file), "--add", "4",
                 "--output", str(out), "--held-out", "0.1", "--loss-texts", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / REPORT_FILE).read_text())
    base, ext = report["loss"]["base"], report["loss"]["extended"]
    assert base["chars"] == ext["chars"] > 0 and base["tokens"] > ext["tokens"]
    assert report["loss_ratio_per_char"] == round(ext["nats_per_char"] / base["nats_per_char"], 5)
    assert "nats per character" in printed and "per-token loss is not comparable" in printed
    assert "' hypertension'" in printed and f"{report['loss_ratio_per_char']:.4f}" in printed
    assert report["loss_texts"] == 2 and report["document_start"] == "<|endoftext|>"


def test_bad_settings_fail_before_the_model_loads(tiny_llama_dir, domain_file, tmp_path, capsys):
    base = ["tokenizer", "extend", str(tiny_llama_dir), "--corpus", str(domain_file), "--output", str(tmp_path / "o")]
    assert main(base + ["--add", "0"]) == 2
    assert "nothing to add" in capsys.readouterr().err
    assert main(base + ["--add", "3", "--min-pieces", "1"]) == 2
    assert "--min-pieces" in capsys.readouterr().err
    assert main(base + ["--add", "3", "--min-pieces", "50"]) == 2
    assert "no word to add" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_only_byte_level_tokenizers_are_extended(tmp_path, domain_file):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path / "wordlevel"
    LlamaForCausalLM(LlamaConfig(vocab_size=2, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(folder)
    with pytest.raises(ModelError, match="only byte-level BPE tokenizers"):
        extend_tokenizer(folder, [domain_file], add=1, output=tmp_path / "o", progress=False)
    with pytest.raises(ConfigError, match="output folder is not empty"):
        extend_tokenizer(folder, [domain_file], add=1, output=folder, progress=False)
