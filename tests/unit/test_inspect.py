"""`tailor inspect`: token tables, attention maps and their PNGs, embedding neighbours; tiny models from configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tailorlm.cli import main
from tailorlm.errors import ConfigError
from tailorlm.inspect.attention import attention_map, draw, footnotes, write_png
from tailorlm.inspect.embeddings import nearest_neighbours, word_pieces
from tailorlm.inspect.heatmap import BACKGROUND, colour
from tailorlm.inspect.tokens import format_table, piece_bytes, token_table

BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "king", "queen", "##s", "token", "##ization",
              "hello", "world", ",", "!", "dog", "cat", "fox", "quick", "brown"]  # fmt: skip
TEXT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILORLM_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    from tailorlm.models.load import load_model

    return load_model(tiny_llama_dir, head="encoder", device="cpu", progress=False)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny random BERT encoder with a WordPiece tokenizer, saved as a model folder."""
    from transformers import BertConfig, BertModel, BertTokenizer

    torch.manual_seed(0)
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(BERT_VOCAB)})
    config = BertConfig(vocab_size=len(BERT_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bert(bert_dir):
    from tailorlm.models.load import load_model

    return load_model(bert_dir, head="encoder", device="cpu", progress=False)


def model_attentions(model, tokenizer, text: str) -> tuple:
    """The model's own attention tensors, asked for directly (eager attention returns the probabilities)."""
    model.set_attn_implementation("eager")
    encoding = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=encoding["input_ids"], attention_mask=encoding["attention_mask"],
                     output_attentions=True).attentions  # fmt: skip


# ---- tokens -----------------------------------------------------------------------------------------------------


def test_bpe_table_ids_are_the_tokenizer_ids_and_spans_rebuild_the_text(tokenizer):
    table = token_table(tokenizer, TEXT)
    assert [t.id for t in table.tokens] == tokenizer(TEXT)["input_ids"]
    assert [t.piece for t in table.tokens] == tokenizer.convert_ids_to_tokens(tokenizer(TEXT)["input_ids"])
    assert "".join(t.text for t in table.tokens) == TEXT
    assert all(TEXT[t.start : t.end] == t.text for t in table.tokens)
    assert table.kind == "BPE, byte-level"
    assert table.words == 9 and table.characters == len(TEXT)
    assert table.tokens_per_word == pytest.approx(len(table.tokens) / 9)


def test_byte_level_pieces_give_back_the_exact_bytes_and_flag_partial_characters(tokenizer):
    text = "naïve 🤖 ok"
    table = token_table(tokenizer, text)
    assert b"".join(bytes.fromhex(t.piece_bytes) for t in table.tokens) == text.encode("utf-8")
    # The tiny vocabulary has no merges for 'ï' or the emoji: each of their bytes is a piece of its own.
    partial = [(t.text, bytes.fromhex(t.piece_bytes)) for t in table.tokens if t.partial]
    assert partial == [("ï", bytes([b])) for b in "ï".encode()] + [("🤖", bytes([b])) for b in "🤖".encode()]
    assert [t.note for t in table.tokens if t.partial][-1] == "byte 96: part of '🤖'"
    assert piece_bytes(tokenizer, "Ġ") == b" "


def test_special_tokens_in_the_text_are_marked_but_cover_their_text(tokenizer):
    table = token_table(tokenizer, "<|im_start|>user hi")
    first = table.tokens[0]
    assert (first.piece, first.special, first.added, first.text) == ("<|im_start|>", True, False, "<|im_start|>")
    assert table.content_tokens == len(table.tokens) - 1
    assert "(1 special)" in format_table(table)


def test_wordpiece_table_marks_added_special_and_unknown_tokens(bert):
    _, tokenizer = bert
    text = "Hello kings, tokenization 🤖!"
    table = token_table(tokenizer, text, model="tiny-bert")
    assert [t.id for t in table.tokens] == tokenizer(text)["input_ids"]
    assert [t.piece for t in table.tokens] == ["[CLS]", "hello", "king", "##s", ",", "token", "##ization", "[UNK]",
                                               "!", "[SEP]"]  # fmt: skip
    assert [t.text for t in table.tokens] == ["", "Hello", "king", "s", ",", "token", "ization", "🤖", "!", ""]
    assert [t.added for t in table.tokens] == [True] + [False] * 8 + [True]
    unknown = table.tokens[7]
    assert unknown.unknown and not unknown.special and unknown.note.startswith("unknown")
    assert table.kind == "WordPiece" and table.content_tokens == 8 and table.words == 4
    lines = format_table(table).splitlines()
    assert lines[0] == "tiny-bert (WordPiece)"
    assert lines[-1] == "10 tokens (2 special), 28 characters, 4 words: 2.00 tokens per word (special tokens not counted)"
    assert "special, added by the tokenizer" in lines[2]


def test_byte_fallback_pieces_are_shown_as_their_bytes():
    """A SentencePiece-style vocabulary with byte fallback stores a character it lacks as <0xNN> pieces."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "▁": 1, "a": 2, "▁a": 3, **{f"<0x{b:02X}>": 4 + b for b in range(256)}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("▁", "a")], unk_token="<unk>", byte_fallback=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    table = token_table(tokenizer, "a é")
    assert table.kind == "BPE, byte fallback"
    by_piece = {t.piece: t for t in table.tokens}
    assert by_piece["▁a"].piece_bytes == b" a".hex() and not by_piece["▁a"].partial
    assert by_piece["<0xC3>"].piece_bytes == "c3" and by_piece["<0xC3>"].partial
    assert by_piece["<0xA9>"].piece_bytes == "a9" and by_piece["<0xA9>"].text == "é"


# ---- attention --------------------------------------------------------------------------------------------------


def test_llama_attention_is_the_model_output_rows_sum_to_one_and_causal(llama):
    model, tokenizer = llama
    attention = attention_map(model, tokenizer, TEXT, layer=1, head=2)
    expected = model_attentions(model, tokenizer, TEXT)[1][0, 2].numpy()
    assert attention.weights.shape == (1, *expected.shape)
    np.testing.assert_array_equal(attention.weights[0], expected)
    np.testing.assert_allclose(attention.weights[0].sum(axis=1), 1.0, atol=1e-5)
    assert np.all(np.triu(attention.weights[0], k=1) == 0) and attention.causal
    assert "".join(attention.labels) == TEXT  # byte-level labels are the exact text of each piece


def test_last_layer_and_all_heads(llama):
    model, tokenizer = llama
    every = attention_map(model, tokenizer, TEXT, layer=-1, head=None)
    assert every.layer == 1 and every.heads == [0, 1, 2, 3] and every.weights.shape[0] == 4
    np.testing.assert_array_equal(every.weights, model_attentions(model, tokenizer, TEXT)[1][0].numpy())


def test_encoder_attention_is_not_causal_and_matches_the_model(bert):
    model, tokenizer = bert
    text = "the quick brown fox"
    attention = attention_map(model, tokenizer, text, layer=0, head=1)
    expected = model_attentions(model, tokenizer, text)[0][0, 1].numpy()
    np.testing.assert_array_equal(attention.weights[0], expected)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, atol=1e-5)
    assert not attention.causal and expected[np.triu_indices(len(expected), k=1)].min() > 0  # sees later tokens
    assert attention.labels == ["[CLS]", "the", "quick", "brown", "fox", "[SEP]"]


def test_long_text_is_cut_to_the_cap_and_says_so(llama):
    model, tokenizer = llama
    text = " ".join([TEXT] * 5)
    attention = attention_map(model, tokenizer, text, layer=0, head=0, max_tokens=8)
    assert len(attention.labels) == 8 and attention.truncated
    assert attention.total_tokens == len(tokenizer(text)["input_ids"])
    first = tokenizer.decode(tokenizer(text)["input_ids"][:8])
    np.testing.assert_array_equal(attention.weights[0], model_attentions(model, tokenizer, first)[0][0, 0].numpy())
    assert f"only the first 8 of {attention.total_tokens} tokens" in " ".join(footnotes(attention))


def luminance(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def test_png_cells_follow_the_weights(llama, tmp_path):
    from PIL import Image

    model, tokenizer = llama
    attention = attention_map(model, tokenizer, TEXT, layer=0, head=1)
    path = write_png(attention, tmp_path / "maps" / "attention.png")
    drawing = draw(attention)
    image = Image.open(path)
    assert image.format == "PNG" and image.size == drawing.image.size
    image = image.convert("RGB")
    weights, vmax = attention.weights[0], float(attention.weights.max())
    size = len(attention.labels)
    seen = {}
    for q in range(size):
        for k in range(size):
            pixel = image.getpixel(drawing.centre(0, q, k))
            if k > q:
                assert pixel == BACKGROUND  # a causal model cannot see later tokens: the cell stays blank
            else:
                assert pixel == colour(float(weights[q, k]), vmax)
                seen[(q, k)] = luminance(pixel)
    cells = sorted(seen, key=lambda cell: weights[cell])
    assert all(seen[a] <= seen[b] for a, b in zip(cells, cells[1:]))  # brighter means a larger weight
    visible = np.tril(np.ones_like(weights, dtype=bool))
    argmax = np.unravel_index(np.where(visible, weights, -1).argmax(), weights.shape)
    assert max(seen, key=seen.get) == tuple(argmax)


def test_encoder_png_brightest_and_darkest_cells_are_the_extreme_weights(bert, tmp_path):
    from PIL import Image

    model, tokenizer = bert
    attention = attention_map(model, tokenizer, "the quick brown fox", layer=1, head=0)
    drawing = draw(attention)
    image = Image.open(write_png(attention, tmp_path / "bert.png")).convert("RGB")
    weights, size = attention.weights[0], len(attention.labels)
    light = {(q, k): luminance(image.getpixel(drawing.centre(0, q, k))) for q in range(size) for k in range(size)}
    assert max(light, key=light.get) == np.unravel_index(weights.argmax(), weights.shape)
    darkest = min(light, key=light.get)  # colours are whole RGB steps: the darkest may tie with the smallest weight
    assert colour(float(weights[darkest]), float(weights.max())) == colour(float(weights.min()), float(weights.max()))


def test_all_heads_png_has_one_panel_per_head_on_one_scale(llama, tmp_path):
    model, tokenizer = llama
    attention = attention_map(model, tokenizer, "the quick brown fox", layer=0, head=None)
    drawing = draw(attention)
    assert len(drawing.origins) == 4
    vmax = float(attention.weights.max())
    for head in range(4):
        pixel = drawing.image.getpixel(drawing.centre(head, 1, 0))
        assert pixel == colour(float(attention.weights[head, 1, 0]), vmax)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"layer": 2}, "no layer 2: this model has 2 layers (key 'layer'): found 2; expected 0..1 (or -1 for the last)"),
        ({"layer": -2}, "expected 0..1 (or -1 for the last)"),
        ({"layer": 0, "head": 4}, "no head 4: this model has 4 heads (key 'head'): found 4; expected 0..3."),
        ({"layer": 0, "head": -1}, "expected 0..3."),
        ({"layer": 0, "text": ""}, "the text is empty"),
        ({"layer": 0, "max_tokens": 1}, "too few tokens to draw"),
    ],
)
def test_bad_attention_requests_are_refused(llama, kwargs, expected):
    model, tokenizer = llama
    text = kwargs.pop("text", TEXT)
    with pytest.raises(ConfigError) as caught:
        attention_map(model, tokenizer, text, **{"head": 0, **kwargs})
    assert expected in str(caught.value)


# ---- embeddings -------------------------------------------------------------------------------------------------


def test_neighbours_come_out_in_the_order_of_a_hand_made_matrix(llama):
    model, tokenizer = llama
    ids = word_pieces(tokenizer, "fox")
    width = model.config.hidden_size
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(len(tokenizer), width, generator=generator)
    matrix[:, 0] = 0  # every other row is orthogonal to the word's direction...
    matrix[ids] = 0
    matrix[ids, 0] = 1  # ...which is the first axis
    picks = {}
    for token, cos in (("dog", 0.9), ("sugar", 0.8), ("capital", 0.7)):
        token_id = tokenizer.get_vocab()["Ġ" + token]
        matrix[token_id] = 0
        matrix[token_id, 0], matrix[token_id, 1] = cos, (1 - cos**2) ** 0.5
        picks[token_id] = cos
    matrix[tokenizer.convert_tokens_to_ids("<|im_start|>")] = matrix[ids[0]]  # special: never a neighbour
    weights = model.get_input_embeddings().weight
    saved = weights.detach().clone()
    with torch.no_grad():
        weights.copy_(matrix)
    try:
        [result] = nearest_neighbours(weights, tokenizer, ["fox"], k=3)
    finally:
        with torch.no_grad():
            weights.copy_(saved)
    assert [n.id for n in result.neighbours] == list(picks)
    assert [n.similarity for n in result.neighbours] == pytest.approx(list(picks.values()), abs=1e-6)
    assert [n.text for n in result.neighbours] == [" dog", " sugar", " capital"]
    assert result.ids == ids and not result.unknown


def test_a_word_of_several_pieces_uses_the_mean_of_their_embeddings(llama):
    model, tokenizer = llama
    word = "zyxw"
    ids = word_pieces(tokenizer, word)
    assert len(ids) > 1
    matrix = model.get_input_embeddings().weight.detach().float()
    query = matrix[ids].mean(0)
    cos = torch.nn.functional.cosine_similarity(matrix, query[None], dim=1)
    special = set(tokenizer.all_special_ids)
    expected = [i for i in cos.argsort(descending=True).tolist() if i not in special and i not in ids]
    [result] = nearest_neighbours(matrix, tokenizer, [word], k=5)
    assert result.averaged and result.pieces == tokenizer.convert_ids_to_tokens(ids)
    assert [n.id for n in result.neighbours] == expected[:5]
    assert [n.similarity for n in result.neighbours] == pytest.approx(cos[expected[:5]].tolist(), abs=1e-6)


def test_the_word_spelled_without_its_space_is_not_its_own_neighbour(llama):
    model, tokenizer = llama
    spaced, bare = tokenizer.get_vocab()["Ġpleas"], tokenizer.get_vocab()["pleas"]
    matrix = model.get_input_embeddings().weight.detach().clone()
    matrix[bare] = matrix[spaced]  # as similar as can be, yet the same word
    [result] = nearest_neighbours(matrix, tokenizer, ["pleas"], k=5)
    assert result.ids == [spaced] and result.pieces == ["Ġpleas"]
    assert bare not in [n.id for n in result.neighbours] and len(result.neighbours) == 5


def test_wordpiece_unknown_word_is_flagged(bert):
    model, tokenizer = bert
    [result] = nearest_neighbours(model.get_input_embeddings().weight, tokenizer, ["zebra"], k=3)
    assert result.unknown and result.pieces == ["[UNK]"]
    assert not {n.piece for n in result.neighbours} & {"[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"}


@pytest.mark.parametrize(("words", "k", "expected"), [(["fox", " "], 3, "a word is empty"), (["fox"], 0, "key 'k'")])
def test_bad_embedding_requests_are_refused(llama, words, k, expected):
    model, tokenizer = llama
    with pytest.raises(ConfigError, match=expected):
        nearest_neighbours(model.get_input_embeddings().weight, tokenizer, words, k=k)


# ---- the command ------------------------------------------------------------------------------------------------


def test_cli_tokens_json(tiny_llama_dir, tokenizer, capsys):
    assert main(["inspect", "tokens", TEXT, "--model", str(tiny_llama_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [t["id"] for t in data["tokens"]] == tokenizer(TEXT)["input_ids"]
    assert data["totals"]["words"] == 9 and data["totals"]["special_tokens"] == 0


def test_cli_attention_writes_the_png(tiny_llama_dir, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "a.png"
    args = ["inspect", "attention", TEXT, "--model", str(tiny_llama_dir), "--layer", "-1", "--head", "3"]
    assert main([*args, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out}\n") and "layer 1 of 0..1, head 3 of 0..3" in printed
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100


def test_cli_embeddings_text(tiny_llama_dir, capsys):
    assert main(["inspect", "embeddings", "dog", "fox", "--model", str(tiny_llama_dir), "--k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "dog  (1 piece 'Ġdog')" and lines[2].lstrip().startswith("1 ")
    assert lines[4] == "fox  (mean of 2 pieces 'Ġfo' + 'x')" and len(lines) == 7


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["inspect", "tokens", "hi", "--model", "no-such-model"], "unknown model reference 'no-such-model'"),
        (["inspect", "tokens", "", "--model", "MODEL"], "the text is empty"),
        (["inspect", "attention", "hi", "--model", "MODEL", "--layer", "5"], "expected 0..1 (or -1 for the last)"),
        (["inspect", "attention", "hi", "--model", "MODEL", "--layer", "0", "--output", "x.jpg"], "a .png file"),
        (["inspect", "attention", "hi", "--model", "MODEL", "--layer", "0", "--head", "1", "--all-heads"], "conflict"),
        (["inspect", "embeddings", "fox", "--model", "MODEL", "--k", "0"], "key 'k'"),
    ],
)
def test_cli_bad_input_is_one_paragraph(tiny_llama_dir, tmp_path, monkeypatch, capsys, argv, expected):
    monkeypatch.chdir(tmp_path)
    argv = [str(tiny_llama_dir) if a == "MODEL" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1
    assert not list(tmp_path.glob("*.png"))


def test_the_standard_library_inspect_module_is_not_shadowed():
    import inspect
    import sysconfig

    import tailorlm.inspect

    assert inspect.__file__.startswith(sysconfig.get_paths()["stdlib"]) and callable(inspect.signature)
    assert tailorlm.inspect.__name__ == "tailorlm.inspect"
