"""Chunking by tokens: boundaries (paragraph, sentence, word), overlap, exact offsets, budgets and bad settings."""

from __future__ import annotations

import random
import string
from types import SimpleNamespace

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from tailorlm.errors import ConfigError
from tailorlm.retrieval.chunking import chunk_document, chunk_documents, default_chunk_tokens, plain_tokenizer
from tailorlm.retrieval.documents import Document


def word_tokenizer() -> Tokenizer:
    """Every word and every punctuation mark is one token (all [UNK]), split as BERT splits."""
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def letter_tokenizer() -> Tokenizer:
    """WordPiece over single letters: a word of n letters is n tokens."""
    vocab = {"[UNK]": 0, **{c: i + 1 for i, c in enumerate(string.ascii_lowercase)}}
    vocab.update({"##" + c: len(vocab) + i for i, c in enumerate(string.ascii_lowercase)})
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=1000))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def texts(chunks: list) -> list[str]:
    return [chunk.text for chunk in chunks]


def words(n: int, first: int = 0) -> str:
    return " ".join(f"w{i}" for i in range(first, first + n))


def test_sentence_ends_are_preferred_to_filling_the_budget() -> None:
    text = "Aa bb cc dd ee. Ff gg hh ii jj. Kk ll mm nn oo."  # three sentences of 6 tokens each
    chunks = chunk_document(Document(path="d", text=text), word_tokenizer(), chunk_tokens=10, overlap=0)
    assert texts(chunks) == ["Aa bb cc dd ee.", "Ff gg hh ii jj.", "Kk ll mm nn oo."]


def test_paragraph_break_beats_a_later_sentence_end() -> None:
    text = "Aa bb cc. Dd ee ff gg.\n\nHh ii. Jj kk ll mm nn oo pp."
    chunks = chunk_document(Document(path="d", text=text), word_tokenizer(), chunk_tokens=12, overlap=0)
    assert texts(chunks) == ["Aa bb cc. Dd ee ff gg.", "Hh ii. Jj kk ll mm nn oo pp."]


def test_a_paragraph_break_early_in_the_budget_is_not_taken() -> None:
    text = "Aa bb.\n\nCc dd ee ff gg hh ii jj kk. Ll mm."  # the break is after 3 of 10 tokens: too early
    chunks = chunk_document(Document(path="d", text=text), word_tokenizer(), chunk_tokens=10, overlap=0)
    assert texts(chunks) == ["Aa bb.\n\nCc dd ee ff gg hh ii", "jj kk. Ll mm."]


def test_lower_case_after_a_full_stop_is_not_a_sentence_end() -> None:
    text = "Take e.g. water and rest now. Then sleep well tonight."
    chunks = chunk_document(Document(path="d", text=text), word_tokenizer(), chunk_tokens=10, overlap=0)
    assert texts(chunks) == ["Take e.g. water and rest now.", "Then sleep well tonight."]


def test_line_break_beats_a_space() -> None:
    text = "- aa bb cc\n- dd ee ff gg hh ii"
    chunks = chunk_document(Document(path="d", text=text), word_tokenizer(), chunk_tokens=9, overlap=0)
    assert texts(chunks) == ["- aa bb cc", "- dd ee ff gg hh ii"]


def test_without_punctuation_chunks_cut_between_words_and_overlap() -> None:
    text = words(30)
    chunks = chunk_document(Document(path="d", text=text), word_tokenizer(), chunk_tokens=10, overlap=4)
    assert texts(chunks) == [words(10), words(10, 6), words(10, 12), words(10, 18), words(6, 24)]
    for before, after in zip(chunks, chunks[1:]):
        shared = text[after.start:before.end]
        assert len(shared.split()) == 4 and before.text.endswith(shared) and after.text.startswith(shared)


def test_overlap_starts_at_a_sentence_when_one_is_near() -> None:
    text = "Aa bb cc dd. Ee ff gg.\n\nHh ii jj kk ll mm nn."
    # the first chunk ends at the paragraph (9 tokens); the second starts at the sentence in its last 6 tokens
    chunks = chunk_document(Document(path="d", text=text), word_tokenizer(), chunk_tokens=12, overlap=6)
    assert texts(chunks) == ["Aa bb cc dd. Ee ff gg.", "Ee ff gg.\n\nHh ii jj kk ll mm nn."]


def test_a_word_longer_than_the_budget_is_cut_inside() -> None:
    text = "ab " + string.ascii_lowercase[:25] + " cd"
    chunks = chunk_document(Document(path="d", text=text), letter_tokenizer(), chunk_tokens=10, overlap=0)
    assert texts(chunks) == ["ab", "abcdefghij", "klmnopqrst", "uvwxy cd"]


def test_offsets_headings_pages_and_metadata() -> None:
    text = "Intro here. More words follow.\n\nMethods start. We measured things carefully today."
    doc = Document(path="paper.pdf", text=text, title="Paper", pages=[(1, 0), (2, text.index("Methods"))],
                   headings=[(0, "Intro"), (text.index("Methods"), "Methods")], metadata={"year": 2024}, doc_id="p1")
    chunks = chunk_document(doc, word_tokenizer(), chunk_tokens=8, overlap=2)
    assert [c.chunk_id for c in chunks] == [f"p1:{i}" for i in range(len(chunks))]
    for chunk in chunks:
        assert chunk.text == text[chunk.start:chunk.end] and chunk.text == chunk.text.strip()
        assert chunk.heading == ("Intro" if chunk.start < text.index("Methods") else "Methods")
        assert chunk.page == (1 if chunk.start < text.index("Methods") else 2)
        assert (chunk.doc_id, chunk.title, chunk.metadata) == ("p1", "Paper", {"path": "paper.pdf", "year": 2024})
    assert {c.heading for c in chunks} == {"Intro", "Methods"} and {c.page for c in chunks} == {1, 2}


def test_short_empty_and_cjk_documents() -> None:
    tokenizer = word_tokenizer()
    assert texts(chunk_document(Document(path="d", text="  One short line.  "), tokenizer)) == ["One short line."]
    assert chunk_document(Document(path="d", text=" \n\t "), tokenizer) == []
    cjk = "糖尿病是一种慢性病。患者需要控制血糖。"  # BERT splits every ideograph; a cut after 。 is a sentence end
    tokenizer.normalizer = normalizers.BertNormalizer(handle_chinese_chars=True)
    assert texts(chunk_document(Document(path="d", text=cjk), tokenizer, chunk_tokens=12, overlap=0)) == [
        "糖尿病是一种慢性病。", "患者需要控制血糖。"]


@pytest.mark.parametrize("seed", range(5))
def test_random_text_chunks_fit_cover_and_overlap(seed: int, tiny_tokenizer) -> None:  # noqa: ANN001
    rng = random.Random(seed)
    vocab = ["fox", "dog.", "The", "quick", "brown", "jumps", "capital", "of", "France?", "Paris", "diabetes,", "xylophone"]
    parts = []
    for _ in range(300):
        parts.append(rng.choice(vocab))
        parts.append(rng.choice([" ", " ", " ", "\n", "\n\n", "  "]))
    text = "".join(parts)
    for tokenizer in (word_tokenizer(), tiny_tokenizer):  # BERT-style splitting and byte-level BPE (no pre-split words)
        chunks = chunk_document(Document(path="d", text=text), tokenizer, chunk_tokens=20, overlap=5)
        backend = plain_tokenizer(tokenizer)
        covered = [False] * len(text)
        for chunk in chunks:
            assert chunk.text == text[chunk.start:chunk.end]
            assert len(backend.encode(chunk.text, add_special_tokens=False).ids) <= 20
            covered[chunk.start:chunk.end] = [True] * (chunk.end - chunk.start)
        assert all(covered[i] for i, ch in enumerate(text) if not ch.isspace())
        assert all(after.start > before.start for before, after in zip(chunks, chunks[1:]))
    # Words are 1-2 tokens for the word tokenizer, so every overlap window holds a word boundary.
    chunks = chunk_document(Document(path="d", text=text), word_tokenizer(), chunk_tokens=20, overlap=5)
    assert all(after.start < before.end for before, after in zip(chunks, chunks[1:]))


def test_a_tokenizer_set_to_truncate_still_sees_the_whole_document() -> None:
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_tokenizer())
    tokenizer.backend_tokenizer.enable_truncation(8)  # as a tokenizer.json saved with truncation on leaves it
    chunks = chunk_document(Document(path="d", text=words(40)), tokenizer, chunk_tokens=30, overlap=0)
    assert texts(chunks) == [words(30), words(10, 30)]
    assert tokenizer.backend_tokenizer.truncation["max_length"] == 8  # the caller's tokenizer is left as it was


def test_many_documents_at_once_match_one_at_a_time() -> None:
    docs = [Document(path=f"d{i}", text=words(25 + i)) for i in range(5)]
    together = chunk_documents(docs, word_tokenizer(), chunk_tokens=8, overlap=2)
    assert together == [c for doc in docs for c in chunk_document(doc, word_tokenizer(), chunk_tokens=8, overlap=2)]


@pytest.mark.parametrize(("chunk_tokens", "overlap", "message"), [
    (16, 16, r"bad chunk overlap \(key 'overlap'\): found 16; expected a whole number of tokens from 0 to 15"),
    (16, -1, r"bad chunk overlap"),
    (0, 0, r"bad chunk size \(key 'chunk_tokens'\): found 0"),
    (2.5, 0, r"bad chunk size"),
])
def test_bad_settings_are_config_errors(chunk_tokens: int, overlap: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        chunk_document(Document(path="d", text="hello"), word_tokenizer(), chunk_tokens=chunk_tokens, overlap=overlap)


def test_a_slow_tokenizer_is_refused() -> None:
    with pytest.raises(ConfigError, match="fast tokenizer"):
        chunk_document(Document(path="d", text="hello"), object())


def test_default_chunk_tokens_leaves_room_for_special_tokens(tiny_tokenizer) -> None:  # noqa: ANN001
    bert_like = SimpleNamespace(num_special_tokens_to_add=lambda pair=False: 2)
    assert default_chunk_tokens(SimpleNamespace(max_tokens=512, tokenizer=bert_like)) == 256
    assert default_chunk_tokens(SimpleNamespace(max_tokens=128, tokenizer=bert_like)) == 126
    assert default_chunk_tokens(SimpleNamespace(max_tokens=100, tokenizer=tiny_tokenizer)) == 100
