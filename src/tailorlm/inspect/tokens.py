"""The token pieces of a text: ids, each piece as the tokenizer stores it, and the exact text it covers.

Byte-level BPE (GPT-2, Llama 3, SmolLM2) stores pieces in a 256-character alphabet that stands for bytes (`Ġ` is a
space), and byte-fallback tokenizers store raw bytes as `<0xF0>`; a piece may then hold only part of a character's
UTF-8 bytes. Each piece is turned back into its bytes, so the table shows readable text and says honestly when a piece
is only part of a character.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from tailorlm.errors import ConfigError, ModelError

BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@dataclass
class Token:
    """One token of a text."""

    index: int
    id: int
    piece: str
    """The piece as the vocabulary stores it, e.g. 'Ġworld', '##ing', '<0xF0>' or '[CLS]'."""
    text: str
    """The input text this token covers, from the tokenizer's offsets ('' for a special token it added)."""
    piece_bytes: str | None
    """The piece's own bytes as hex ('20f09f'); None for special and unknown tokens."""
    start: int | None
    end: int | None
    special: bool = False
    added: bool = False
    """A special token the tokenizer added (such as BERT's [CLS]); it covers no input text."""
    partial: bool = False
    """The piece's bytes are not whole UTF-8 characters: the character is split over several pieces."""
    unknown: bool = False
    """The tokenizer's unknown token: the model sees [UNK], not the text."""

    @property
    def note(self) -> str:
        """What a reader should know beyond the piece and its text."""
        if self.added:
            return "special, added by the tokenizer"
        if self.special:
            return "special"
        if self.unknown:
            return "unknown: the model sees only this piece"
        if self.partial:
            hexed = " ".join(self.piece_bytes[i : i + 2] for i in range(0, len(self.piece_bytes or ""), 2))
            return f"byte{'s' if len(hexed) > 2 else ''} {hexed}: part of {self.text.strip() or self.text!r}"
        return ""


@dataclass
class TokenTable:
    """A text's tokens and totals."""

    model: str
    text: str
    kind: str
    """The tokenizer's algorithm, e.g. 'BPE, byte-level' or 'WordPiece'."""
    tokens: list[Token] = field(default_factory=list)

    @property
    def characters(self) -> int:
        return len(self.text)

    @property
    def words(self) -> int:
        return len(self.text.split())

    @property
    def content_tokens(self) -> int:
        """Tokens that stand for text: all but special tokens."""
        return sum(not t.special for t in self.tokens)

    @property
    def tokens_per_word(self) -> float | None:
        return self.content_tokens / self.words if self.words else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "text": self.text,
            "kind": self.kind,
            "tokens": [asdict(t) for t in self.tokens],
            "totals": {
                "tokens": len(self.tokens),
                "special_tokens": len(self.tokens) - self.content_tokens,
                "characters": self.characters,
                "words": self.words,
                "tokens_per_word": self.tokens_per_word,
            },
        }


def inspect_tokens(ref: str, text: str, *, progress: bool = True) -> TokenTable:
    """Load the tokenizer of a model reference and tokenize `text` into a table."""
    from tailorlm.models.load import load_tokenizer

    check_text(text)
    return token_table(load_tokenizer(ref, progress=progress), text, model=str(ref))


def token_table(tokenizer: Any, text: str, *, model: str = "", add_special_tokens: bool = True) -> TokenTable:
    """Tokenize `text` as the model sees it (with the special tokens the tokenizer adds) and describe each token.

    With SmolLM2's tokenizer, "Hello world" gives pieces 'Hello' and 'Ġworld', covering 'Hello' and ' world'.
    """
    check_text(text)
    require_fast(tokenizer, model)
    encoding = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    pieces = tokenizer.convert_ids_to_tokens(ids)
    unk_id = unknown_id(tokenizer)
    special_ids = special_token_ids(tokenizer)
    tokens = []
    for index, (token_id, piece, (start, end)) in enumerate(zip(ids, pieces, encoding["offset_mapping"])):
        special = token_id in special_ids
        added = special and start == end
        unknown = unk_id is not None and token_id == unk_id
        raw = None if special or unknown else piece_bytes(tokenizer, piece)
        tokens.append(
            Token(
                index=index,
                id=int(token_id),
                piece=piece,
                text="" if added else text[start:end],
                piece_bytes=None if raw is None else raw.hex(),
                start=None if added else int(start),
                end=None if added else int(end),
                special=special,
                added=added,
                partial=raw is not None and not _is_utf8(raw),
                unknown=unknown,
            )
        )
    return TokenTable(model=model, text=text, kind=tokenizer_kind(tokenizer), tokens=tokens)


def format_table(table: TokenTable) -> str:
    """A compact text table: one token a line, then the totals."""
    rows = [("#", "id", "piece", "text", "")]
    rows += [(str(t.index), str(t.id), repr(t.piece), repr(t.text), t.note) for t in table.tokens]
    widths = [max(_columns(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(
            [
                row[0].rjust(widths[0]),
                row[1].rjust(widths[1]),
                row[2] + " " * (widths[2] - _columns(row[2])),
                row[3] + " " * (widths[3] - _columns(row[3])),
                row[4],
            ]
        ).rstrip()
        for row in rows
    ]
    special = len(table.tokens) - table.content_tokens
    totals = f"{len(table.tokens)} tokens"
    if special:
        totals += f" ({special} special)"
    totals += f", {table.characters} characters, {table.words} words"
    if table.tokens_per_word is not None:
        totals += f": {table.tokens_per_word:.2f} tokens per word (special tokens not counted)"
    header = f"{table.model} ({table.kind})" if table.model else table.kind
    return "\n".join([header, *lines, totals])


def piece_bytes(tokenizer: Any, piece: str) -> bytes:
    """The bytes a vocabulary piece stands for: byte-level alphabet, <0xNN> byte fallback, ▁ and ## markers undone."""
    decoder = _component(tokenizer, "decoder")
    types = _types(decoder)
    if "ByteLevel" in types or "ByteLevel" in _types(_component(tokenizer, "pre_tokenizer")):
        table = _byte_decoder()
        if all(ch in table for ch in piece):
            return bytes(table[ch] for ch in piece)
        return piece.encode("utf-8")  # an added token stored as plain text
    match = BYTE_FALLBACK.match(piece)
    if match and "ByteFallback" in types:
        return bytes([int(match.group(1), 16)])
    if "WordPiece" in types:
        return piece.removeprefix(_setting(decoder, "prefix") or "##").encode("utf-8")
    if types & {"Metaspace", "Replace"}:  # SentencePiece marks a word's leading space with ▁
        piece = piece.replace(_setting(decoder, "replacement") or "\u2581", " ")
    return piece.encode("utf-8")


def piece_label(tokenizer: Any, piece: str) -> str:
    """A readable form of a piece: its text, with bytes that are not whole characters escaped (\\xf0).

    WordPiece continuations keep their '##', which tells a reader the piece continues a word.
    """
    if tokenizer.convert_tokens_to_ids(piece) in special_token_ids(tokenizer):
        return piece
    if "WordPiece" in _types(_component(tokenizer, "decoder")):
        return piece
    return piece_bytes(tokenizer, piece).decode("utf-8", errors="backslashreplace")


def tokenizer_kind(tokenizer: Any) -> str:
    """The algorithm and byte handling of a fast tokenizer, e.g. 'BPE, byte-level'."""
    model = _component(tokenizer, "model")
    kind = type(model).__name__ if model is not None else type(tokenizer).__name__
    decoder = _types(_component(tokenizer, "decoder"))
    if "ByteLevel" in decoder or "ByteLevel" in _types(_component(tokenizer, "pre_tokenizer")):
        kind += ", byte-level"
    elif "ByteFallback" in decoder:
        kind += ", byte fallback"
    return kind


def unknown_id(tokenizer: Any) -> int | None:
    """The id of the piece for text the vocabulary cannot hold; None where every text has pieces (byte-level BPE).

    Some tokenizers name a real special token as their `unk_token` (SmolLM2 names <|endoftext|>) although their
    byte-level model never produces it, so the tokenizer model is asked first.
    """
    model = _component(tokenizer, "model")
    if model is not None and hasattr(model, "unk_token"):
        return tokenizer.convert_tokens_to_ids(model.unk_token) if model.unk_token else None
    return tokenizer.unk_token_id


def special_token_ids(tokenizer: Any) -> set[int]:
    """Ids of the special tokens (BOS, EOS, [CLS], chat and file markers...), not counting the unknown token."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    marked = {int(i) for i, token in added.items() if getattr(token, "special", False)}
    return (set(tokenizer.all_special_ids) | marked) - {unknown_id(tokenizer)}


def quoted(label: str) -> str:
    """A label in quotes with control characters escaped, keeping the \\x escapes of partial bytes as they are."""
    shown = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in label)
    return f"'{shown}'"


def check_text(text: str, *, what: str = "text") -> None:
    """Refuse empty text before any model is loaded."""
    if not text:
        raise ConfigError(f"the {what} is empty", key=what, found="''", expected="some text to tokenize")


def require_fast(tokenizer: Any, model: str = "") -> None:
    """Offsets (which text a token covers) come only from fast tokenizers."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            "this model's tokenizer cannot say which text each token covers",
            where=model or None,
            found=f"a slow (Python) tokenizer {type(tokenizer).__name__}",
            expected="a fast tokenizer (tokenizer.json)",
        )


def _columns(text: str) -> int:
    """Terminal columns a string takes: wide (East Asian, emoji) characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the others are shifted past 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def _component(tokenizer: Any, name: str) -> Any:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return getattr(backend, name, None) if backend is not None else None


def _state(component: Any) -> dict:
    """A tokenizers component's settings, as it serialises them."""
    if component is None:
        return {}
    try:
        return json.loads(component.__getstate__())
    except (AttributeError, TypeError, ValueError):
        return {"type": type(component).__name__}


def _types(component: Any) -> set[str]:
    """Every component type inside a (possibly nested Sequence) tokenizers component."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "type" in node:
                found.add(node["type"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(_state(component))
    return found


def _setting(component: Any, key: str) -> Any:
    state = _state(component)
    if key in state:
        return state[key]
    for inner in state.get("decoders") or state.get("pretokenizers") or []:
        if key in inner:
            return inner[key]
    return None
