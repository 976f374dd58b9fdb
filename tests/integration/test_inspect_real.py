"""`tailor inspect` on the real built-in packs: SmolLM2's byte-level BPE and MiniLM's WordPiece."""

from __future__ import annotations

import numpy as np
import pytest

from tailorlm.cli import main
from tailorlm.inspect.attention import attention_map, draw, write_png
from tailorlm.inspect.embeddings import nearest_neighbours
from tailorlm.inspect.tokens import inspect_tokens

pytestmark = pytest.mark.integration

SMOLLM2, MINILM = "smollm2-135m-instruct", "minilm-l6"


@pytest.fixture(scope="module")
def smollm2():
    from tailorlm.models.load import load_model

    return load_model(SMOLLM2, head="encoder", device="cpu", progress=False)


def test_smollm2_tokens_are_the_tokenizer_ids_and_join_to_the_text(smollm2):
    _, tokenizer = smollm2
    table = inspect_tokens(SMOLLM2, "Hello world", progress=False)
    assert [t.id for t in table.tokens] == tokenizer("Hello world")["input_ids"]
    assert [(t.piece, t.text) for t in table.tokens] == [("Hello", "Hello"), ("Ġworld", " world")]
    text = "Dosage: 5 mg/kg 🤖 café"
    table = inspect_tokens(SMOLLM2, text, progress=False)
    assert b"".join(bytes.fromhex(t.piece_bytes) for t in table.tokens) == text.encode("utf-8")
    assert {t.text.strip() for t in table.tokens if t.partial} == {"🤖"}


def test_minilm_tokens_mark_cls_and_sep():
    table = inspect_tokens(MINILM, "Hello world", progress=False)
    assert [(t.piece, t.text, t.added) for t in table.tokens] == [
        ("[CLS]", "", True), ("hello", "Hello", False), ("world", "world", False), ("[SEP]", "", True)
    ]  # fmt: skip
    assert table.kind == "WordPiece" and table.tokens_per_word == 1.0


def test_smollm2_attention_png_layer0_head0(smollm2, tmp_path):
    from PIL import Image

    model, tokenizer = smollm2
    attention = attention_map(model, tokenizer, "The patient was given 5 mg of the drug.", layer=0, head=0)
    path = write_png(attention, tmp_path / "smollm2-l0-h0.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == draw(attention).image.size
    weights = attention.weights[0]
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
    assert attention.causal and np.all(np.triu(weights, k=1) == 0)
    assert (attention.num_layers, attention.num_heads) == (30, 9)


def test_attention_cli_on_minilm_last_layer(tmp_path, capsys):
    out = tmp_path / "minilm.png"
    args = ["inspect", "attention", "the quick brown fox", "--model", MINILM, "--layer", "-1", "--all-heads"]
    assert main([*args, "--output", str(out)]) == 0
    assert "layer 5 of 0..5, heads 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 of 0..11; 6 tokens" in capsys.readouterr().out
    assert out.stat().st_size > 1000


def test_smollm2_neighbours_of_king_are_related_words(smollm2):
    model, tokenizer = smollm2
    [king] = nearest_neighbours(model.get_input_embeddings().weight, tokenizer, ["king"], k=10)
    texts = [n.text for n in king.neighbours]
    assert king.pieces == ["Ġking"] and len(texts) == 10
    assert all(text.strip() != "king" for text in texts)
    assert 0 < king.neighbours[0].similarity < 1
    assert [n.similarity for n in king.neighbours] == sorted((n.similarity for n in king.neighbours), reverse=True)
    assert {" queen", " kings", " prince"} & set(texts)
