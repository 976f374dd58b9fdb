"""`tailor tokenizer train`: byte-level BPE and unigram tokenizers, their guarantees, fertility and bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tailorlm.cli import main
from tailorlm.data.templates import CHATML_TEMPLATE
from tailorlm.errors import ConfigError, DataError
from tailorlm.tokenization import corpus as corpus_module
from tailorlm.tokenization.corpus import Corpus, is_held_out, text_blocks
from tailorlm.tokenization.fertility import Fertility, measure_fertility
from tailorlm.tokenization.train import minimum_vocab_size, train_tokenizer

ROOT = Path(__file__).resolve().parents[2]
SHAKESPEARE = ROOT / "examples" / "data" / "pretraining_text" / "tiny_shakespeare" / "input.txt"

# Every Python string that has a UTF-8 encoding: all code points but the surrogates (U+D800..U+DFFF), which on
# their own are not characters and cannot be written as bytes, so no byte-level tokenizer can see them. Emoji
# (with ZWJ sequences and skin tones), combining marks, control characters, private-use and unassigned code
# points, NUL and the byte-order mark are all in; the samples make them frequent rather than merely possible.
TRICKY = ["\u0301", "e\u0301", "\u200d", "👩‍👩‍👧", "👍🏽", "🤖", "\x00", "\x07", "\r\n", "\t", "\ufeff", "\U0010ffff",
          "\ue000", "\u0378", "  ", "\n\n", "ǅ", "ﬁ", "中文", "עברית", "<|im_end|>", "<pad>", "Ġ", "Ċ"]
ANY_TEXT = st.lists(st.one_of(st.characters(codec="utf-8"), st.sampled_from(TRICKY)), max_size=60).map("".join)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    path.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_file):
    """(result, AutoTokenizer loaded back) for each type, trained once."""
    from transformers import AutoTokenizer

    out = {}
    for kind, size in (("bpe", 600), ("unigram", 600)):
        folder = tmp_path_factory.mktemp(kind)
        result = train_tokenizer([corpus_file], vocab_size=size, output=folder, type=kind, compare=None, progress=False)
        out[kind] = (result, AutoTokenizer.from_pretrained(folder))
    return out


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=ANY_TEXT)
def test_round_trip_on_any_unicode(trained, kind, text):
    # Unigram guarantees the same as BPE here: its pieces are made of the 256 byte symbols, every one of which is
    # kept in the vocabulary, so every string has a segmentation and <unk> is never produced.
    _, tokenizer = trained[kind]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    if kind == "unigram":
        assert tokenizer.unk_token_id not in ids


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_vocabulary_size_is_exact_and_holds_every_byte(trained, kind):
    from tokenizers.pre_tokenizers import ByteLevel

    result, tokenizer = trained[kind]
    assert result.vocab_size == len(tokenizer) == tokenizer.backend_tokenizer.get_vocab_size() == 600
    vocab = tokenizer.get_vocab()
    assert all(symbol in vocab for symbol in ByteLevel.alphabet())


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_smallest_vocabulary_is_exact(tmp_path, corpus_file, kind):
    size = minimum_vocab_size(kind)
    assert size == {"bpe": 260, "unigram": 263}[kind]
    result = train_tokenizer([corpus_file], vocab_size=size, output=tmp_path / "t", type=kind, compare=None, progress=False)
    assert result.vocab_size == size


def test_special_tokens_and_their_ids(trained):
    bpe, bpe_tok = trained["bpe"]
    assert bpe.special_tokens == {"<|endoftext|>": 0, "<pad>": 1, "<|im_start|>": 2, "<|im_end|>": 3}
    assert (bpe_tok.bos_token, bpe_tok.eos_token, bpe_tok.pad_token, bpe_tok.unk_token) == ("<|endoftext|>", "<|endoftext|>", "<pad>", None)
    unigram, uni_tok = trained["unigram"]
    assert unigram.special_tokens == {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "<|im_start|>": 4, "<|im_end|>": 5}
    assert (uni_tok.bos_token, uni_tok.eos_token, uni_tok.pad_token, uni_tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    for result, tok in (trained["bpe"], trained["unigram"]):
        for token, id_ in result.special_tokens.items():
            assert tok(f"a{token}b", add_special_tokens=False)["input_ids"].count(id_) == 1


def test_chat_template_renders_chatml(trained):
    from tailorlm.data.templates import end_of_turn_token, tokenize_chat

    _, tok = trained["bpe"]
    assert tok.chat_template == CHATML_TEMPLATE
    messages = [{"role": "user", "content": "Who art thou?"}, {"role": "assistant", "content": "A friend."}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == "<|im_start|>user\nWho art thou?<|im_end|>\n<|im_start|>assistant\nA friend.<|im_end|>\n"
    assert end_of_turn_token(tok) == "<|im_end|>"
    chat = tokenize_chat(tok, messages)
    assert tok.decode([i for i, label in zip(chat.input_ids, chat.labels) if label != -100]) == "A friend.<|im_end|>"


def test_fertility_arithmetic():
    class CharTokenizer:  # one token per non-space character
        def __call__(self, batch, add_special_tokens):
            return {"input_ids": [[0] * len(text.replace(" ", "")) for text in batch]}

    f = measure_fertility({"chars": CharTokenizer()}, iter(["to be or", "not  to be\n"]))["chars"]
    # words: 3 + 3; characters: 8 + 11; tokens: 6 + 8 (the newline is a character and a token)
    assert f == Fertility(tokens=14, words=6, chars=19)
    assert f.per_word == 14 / 6 and f.per_char == 14 / 19
    assert f.to_dict() == {"tokens": 14, "words": 6, "chars": 19, "tokens_per_word": 2.3333, "tokens_per_char": 0.7368}


def test_held_out_blocks_are_every_twentieth_and_left_out_of_training(tmp_path):
    assert [i for i in range(100) if is_held_out(i, 0.05)] == [19, 39, 59, 79, 99]
    assert sum(is_held_out(i, 0.1) for i in range(1000)) == 100
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"line {i}\n\n" for i in range(40)), encoding="utf-8")
    corpus = Corpus.open([path])
    held = list(corpus.texts(held_out=0.05, part="held_out"))
    train = list(corpus.texts(held_out=0.05, part="train"))
    assert held == ["line 19\n\n", "line 39\n\n"]
    assert len(train) == 38 and not set(held) & set(train)


def test_text_blocks_stream_in_bounded_pieces(monkeypatch):
    monkeypatch.setattr(corpus_module, "_PIECE_CHARS", 7)
    text = "x" * 50 + "\npara one\nstill one\n\npara two\n"
    blocks = list(text_blocks(io.StringIO(text, newline=""), block_chars=20))
    assert "".join(blocks) == text
    assert all(len(block) <= 20 + 7 for block in blocks)
    assert blocks[-1] == "para two\n"


def test_jsonl_column_and_folders(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"answer number {i}"} for i in range(3)]
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("second file\n", encoding="utf-8")
    (folder / "sub" / "a.md").write_text("first file\n", encoding="utf-8")
    (folder / "empty.txt").write_text("", encoding="utf-8")
    (folder / ".hidden.txt").write_text("secret\n", encoding="utf-8")
    corpus = Corpus.open([data, folder], column="answer")
    assert list(corpus.texts(held_out=0, part="all")) == [
        "answer number 0", "answer number 1", "answer number 2", "second file\n", "first file\n"]
    with pytest.raises(DataError, match="--column") as err:
        Corpus.open([data])
    assert "qa.jsonl, row 1" in str(err.value) and "question, answer" in str(err.value)


def test_cli_prints_held_out_fertility_next_to_the_reference(tmp_path, corpus_file, tiny_tokenizer, capsys):
    reference = tmp_path / "reference"
    tiny_tokenizer.save_pretrained(reference)
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", str(corpus_file), "--vocab-size", "500", "--output", str(out),
                 "--compare", str(reference), "--quiet"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "tokenizer_training.json").read_text())
    trained, ref = report["held_out_fertility"]["trained"], report["held_out_fertility"][str(reference)]
    assert trained["words"] == ref["words"] > 0 and trained["chars"] == ref["chars"]
    assert report["vocab_sizes"] == {"trained": 500, str(reference): 400}
    for row in (trained, ref):
        assert f"{row['tokens']:,}" in printed and f"{row['tokens_per_word']:.3f}" in printed
    assert "fertility on the held-out 0.05 of the corpus" in printed
    # the fertility of the reference is measured on the same held-out text the tokenizer never saw
    from transformers import AutoTokenizer

    held = list(Corpus.open([corpus_file]).texts(held_out=0.05, part="held_out"))
    assert measure_fertility({"t": AutoTokenizer.from_pretrained(out)}, held)["t"].tokens == trained["tokens"]


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_bad_input_errors_before_any_compute(tmp_path, corpus_file, capsys):
    out = tmp_path / "out"
    base = ["tokenizer", "train", "--output", str(out), "--compare", "none", "--quiet"]
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n", encoding="utf-8")
    assert "empty.txt: the file is empty" in _error(capsys, base + [str(empty), "--vocab-size", "300"])
    folder = tmp_path / "blank"
    folder.mkdir()
    (folder / "a.txt").write_text("", encoding="utf-8")
    (folder / "b.jsonl").write_text("", encoding="utf-8")
    assert "blank: every text file in the folder is empty" in _error(capsys, base + [str(folder), "--vocab-size", "300"])

    binary = tmp_path / "model.txt"
    binary.write_bytes(b"hello\nworld\n\x00\x01\x02")
    err = _error(capsys, base + [str(corpus_file), str(binary), "--vocab-size", "300"])
    assert "model.txt, line 3: binary data, not text" in err and "NUL byte at byte offset 12" in err

    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf".encode() + b"\xe9\n")
    err = _error(capsys, base + [str(latin), "--vocab-size", "300"])
    assert "latin.txt, line 1: the file is not UTF-8 text" in err and "byte 0xe9 at byte offset 3" in err

    err = _error(capsys, base + [str(corpus_file), "--vocab-size", "259"])
    assert "the vocabulary is too small (key '--vocab-size'): found 259; expected at least 260" in err
    err = _error(capsys, base + [str(corpus_file), "--vocab-size", "262", "--type", "unigram"])
    assert "expected at least 263" in err and "<unk>" in err
    assert "--min-frequency applies only to --type bpe" in _error(
        capsys, base + [str(corpus_file), "--vocab-size", "300", "--type", "unigram", "--min-frequency", "3"])
    assert "no such file" in _error(capsys, base + [str(tmp_path / "missing.txt"), "--vocab-size", "300"])
    assert not out.exists()  # nothing was trained or written

    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert "the output folder is not empty" in _error(capsys, base + [str(corpus_file), "--vocab-size", "300"])


def test_non_utf8_byte_found_across_read_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_module, "_CHECK_BYTES", 3)
    path = tmp_path / "mixed.txt"
    raw = "héllo\nwörld €\n".encode() + b"\xff" + b"tail\n"
    path.write_bytes(raw)
    with pytest.raises(DataError) as err:
        Corpus.open([path])
    assert err.value.where == f"{path}, line 3"
    bad = raw.index(b"\xff")
    assert err.value.found == f"byte 0xff at byte offset {bad}"
    cut = tmp_path / "cut.txt"
    cut.write_bytes("ok €".encode()[:-1])
    with pytest.raises(DataError, match="cut-off UTF-8 sequence"):
        Corpus.open([cut])


def test_bad_held_out_fraction(tmp_path, corpus_file):
    with pytest.raises(ConfigError, match="held-out fraction"):
        train_tokenizer([corpus_file], vocab_size=300, output=tmp_path / "o", held_out=0.9, compare=None, progress=False)
