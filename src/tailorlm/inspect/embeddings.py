"""Nearest neighbours of words in a model's input embedding space (cosine similarity over the embedding matrix)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tailorlm.errors import ConfigError
from tailorlm.inspect.tokens import piece_label, quoted, special_token_ids, unknown_id


@dataclass
class Neighbour:
    id: int
    piece: str
    text: str
    """The piece as readable text (' queen'); bytes that are not whole characters are escaped."""
    similarity: float


@dataclass
class WordNeighbours:
    """A word, the pieces it was looked up as, and its nearest tokens."""

    word: str
    pieces: list[str]
    ids: list[int]
    neighbours: list[Neighbour] = field(default_factory=list)
    unknown: bool = False
    """The tokenizer does not know the word: it became the unknown token."""

    @property
    def averaged(self) -> bool:
        """Several pieces: the word's vector is the mean of their embeddings."""
        return len(self.ids) > 1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "averaged": self.averaged}


def inspect_embeddings(ref: str, words: list[str], *, k: int = 10, progress: bool = True) -> list[WordNeighbours]:
    """Load a model reference and list each word's `k` nearest tokens in its input embedding space."""
    from tailorlm.models.load import load_model

    check_words(words, k)
    model, tokenizer = load_model(ref, head="encoder", dtype="float32", progress=progress)
    return nearest_neighbours(model.get_input_embeddings().weight, tokenizer, words, k=k)


def nearest_neighbours(embeddings: Any, tokenizer: Any, words: list[str], *, k: int = 10) -> list[WordNeighbours]:
    """Each word's `k` nearest tokens by cosine similarity over `embeddings` (vocabulary × width).

    A word of several pieces is the mean of their embeddings. Neighbours leave out special tokens, the word's own
    pieces, the same word spelled with or without its leading space, and embedding rows that no token uses.
    """
    import torch

    check_words(words, k)
    matrix = embeddings.detach().float().cpu()
    vocabulary = min(len(tokenizer), matrix.shape[0])
    norms = matrix[:vocabulary].norm(dim=1, keepdim=True)
    unit = matrix[:vocabulary] / norms.clamp_min(1e-12)
    excluded = torch.zeros(vocabulary, dtype=torch.bool)
    excluded[norms.squeeze(1) == 0] = True  # a zero row has no direction
    unk = unknown_id(tokenizer)
    excluded[[i for i in special_token_ids(tokenizer) | {unk} if i is not None and i < vocabulary]] = True

    results = []
    for word in words:
        ids = word_pieces(tokenizer, word)
        query = matrix[ids].mean(dim=0)
        similarity = unit @ (query / query.norm().clamp_min(1e-12))  # (vocabulary,)
        similarity[excluded] = float("-inf")
        similarity[ids] = float("-inf")
        neighbours: list[Neighbour] = []
        for index in torch.argsort(similarity, descending=True).tolist():
            if len(neighbours) == k or similarity[index] == float("-inf"):
                break
            piece = tokenizer.convert_ids_to_tokens(index)
            text = piece_label(tokenizer, piece)
            if text.strip() == word.strip():  # the word itself, with or without its leading space
                continue
            neighbours.append(Neighbour(id=index, piece=piece, text=text, similarity=float(similarity[index])))
        results.append(
            WordNeighbours(
                word=word,
                pieces=tokenizer.convert_ids_to_tokens(ids),
                ids=ids,
                neighbours=neighbours,
                unknown=unk is not None and unk in ids,
            )
        )
    return results


def word_pieces(tokenizer: Any, word: str) -> list[int]:
    """The token ids of a word, in the form with the fewest pieces; on a tie, as it appears after a space.

    Byte-level and SentencePiece vocabularies hold most words twice ('king' at the start of a text, 'Ġking' after a
    space); the spaced form is the one seen inside sentences, so it is the one whose neighbours say most.
    """
    special = special_token_ids(tokenizer)
    forms = [" " + word.lstrip(), word] if not word.startswith(" ") else [word, word.lstrip()]
    encoded = [tokenizer(form, add_special_tokens=False)["input_ids"] for form in forms]
    encoded = [kept for kept in ([i for i in ids if i not in special] for ids in encoded) if kept]
    if not encoded:
        raise ConfigError("the word gives no tokens", key="words", found=repr(word), expected="a word with letters")
    return min(encoded, key=len)  # min keeps the first (spaced) form on a tie


def format_neighbours(results: list[WordNeighbours], model: str = "") -> str:
    """Each word, the pieces it was looked up as, and its neighbours with their similarity."""
    lines = [f"{model + ': ' if model else ''}nearest tokens in the input embedding space (cosine similarity)"]
    for result in results:
        pieces = " + ".join(repr(p) for p in result.pieces)
        how = f"mean of {len(result.pieces)} pieces {pieces}" if result.averaged else f"1 piece {pieces}"
        if result.unknown:
            how += "; the tokenizer does not know this word, so these are the unknown token's neighbours"
        lines.append(f"{result.word}  ({how})")
        for rank, n in enumerate(result.neighbours, start=1):
            lines.append(f"  {rank:>3}  {n.similarity:6.3f}  {quoted(n.text)}")
    return "\n".join(lines)


def check_words(words: list[str], k: int) -> None:
    if not words:
        raise ConfigError("no words given", key="words", expected="one or more words")
    for word in words:
        if not word.strip():
            raise ConfigError("a word is empty", key="words", found=repr(word), expected="a word with letters")
    if k < 1:
        raise ConfigError("the number of neighbours must be positive", key="k", found=str(k), expected="1 or more")
