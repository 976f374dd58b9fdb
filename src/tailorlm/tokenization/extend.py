"""Extend a model's byte-level BPE tokenizer with frequent domain words and give each new token a sensible embedding.

How a word is seen: GPT-2-style byte-level tokenizers (SmolLM2, GPT-2, Llama 3, Qwen) cut text into pre-tokens
that carry the space before a word, so in running text " diabetes" (byte-level `Ġdiabetes`) is what the model
reads, and "diabetes" without the space only begins a line or follows a bracket. Words are counted in that form.

Which words: pre-tokens made of a space and letters that the base tokenizer splits into at least `min_pieces`
pieces, ranked by frequency × (pieces − 1), the tokens the word would save. They are added with
`tokenizer.add_tokens` as " word". An added token is matched in the raw text before pre-tokenization, anywhere it
occurs, so " infect" would also match the start of " infection" and cut it into " infect" + "ion", which may cost
more tokens than it saves. Each candidate's exact effect on the counted corpus, these prefix matches included, is
computed before it is taken, and a candidate that would not save tokens is skipped. The bare form ("word") is never
added: as an added token it would also match inside " word" and leave the space as a token of its own.

Verification: the counted corpus is encoded again with the extended tokenizer; the token count must equal the
predicted one, and every added token is used.

Initialisation: the new token's input embedding (and output row and bias when the head is not tied) is the mean of
the rows of the pieces it replaces, so the model starts close to how it read the word before.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from tailorlm.errors import ConfigError, ModelError
from tailorlm.tokenization.corpus import Corpus, check_fraction
from tailorlm.tokenization.fertility import Fertility, measure_fertility
from tailorlm.tokenization.train import check_output

REPORT_FILE = "tokenizer_extension.json"
LOSS_UNIT = ("nats per character: the cross-entropy summed over every token of a text, divided by the text's "
             "characters; per-token loss is not comparable across tokenizers because the extended tokenizer "
             "spends fewer tokens on the same text")
# Texts are scored after this token, the same for both models: a document separator where there is one.
_DOCUMENT_STARTS: tuple[str, ...] = ("<|endoftext|>", "<|begin_of_text|>")
_REPORT_IT = "This tokenizer matches added tokens differently from GPT-2-style tokenizers; please report it"


@dataclass
class AddedWord:
    """One added token: the text it stands for and what it does on the counted corpus."""

    token: str
    """The text, with its leading space (" diabetes")."""
    id: int
    frequency: int
    """Occurrences as a whole pre-token in the counted part of the corpus."""
    pieces: list[int]
    """Base-tokenizer ids it replaces; its embedding is their mean."""
    saved: int
    """Tokens it saves on the counted corpus (prefix matches inside longer words included)."""
    uses: int = 0
    """Times the extended tokenizer chose it when encoding the counted corpus."""


@dataclass
class DomainLoss:
    """Cross-entropy of texts under a model, summed over tokens, with the units to compare it across tokenizers."""

    nats: float
    tokens: int
    chars: int
    words: int

    @property
    def per_char(self) -> float:
        return self.nats / self.chars

    @property
    def per_word(self) -> float:
        return self.nats / self.words

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "nats_per_char": round(self.per_char, 5), "nats_per_word": round(self.per_word, 5)}


@dataclass
class ExtensionReport:
    """What `extend_tokenizer` added and measured."""

    base_model: str
    output: Path
    added: list[AddedWord]
    fertility: dict[str, dict[str, Fertility]]
    """part ("counted", "held_out") -> {"base": ..., "extended": ...}."""
    predicted_tokens: int
    """Tokens of the counted corpus that the selection predicted for the extended tokenizer (equals the measured count)."""
    loss: dict[str, DomainLoss] = field(default_factory=dict)
    """{"base": ..., "extended": ...} on the loss texts; empty when no loss was measured."""
    loss_texts: int = 0
    loss_text_source: str = "held-out"
    document_start: str | None = None
    tied_head: bool = True
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def loss_ratio(self) -> float | None:
        """Extended over base, per character; below 1.05 the initialisation kept the model within 5%."""
        return self.loss["extended"].per_char / self.loss["base"].per_char if self.loss else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "base_model": self.base_model,
            "settings": self.settings,
            "added": [asdict(word) for word in self.added],
            "fertility": {part: {name: f.to_dict() for name, f in rows.items()} for part, rows in self.fertility.items()},
            "predicted_tokens": self.predicted_tokens,
            "loss": {name: loss.to_dict() for name, loss in self.loss.items()},
            "loss_unit": LOSS_UNIT,
            "loss_ratio_per_char": round(self.loss_ratio, 5) if self.loss_ratio is not None else None,
            "loss_texts": self.loss_texts,
            "loss_text_source": self.loss_text_source,
            "document_start": self.document_start,
            "tied_head": self.tied_head,
        }


def extend_tokenizer(
    model: str | Path,
    corpus: list[str | Path],
    *,
    add: int,
    output: str | Path,
    min_pieces: int = 3,
    held_out: float = 0.05,
    loss_texts: int = 50,
    loss_chars: int = 1000,
    column: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ExtensionReport:
    """Add up to `add` domain words to the model's tokenizer, initialise their embeddings and save the model to `output`.

    Words are counted on the corpus without its held-out blocks; fertility is measured on both parts, and the loss
    of the base and the extended model on the first `loss_texts` held-out blocks (each cut to `loss_chars`
    characters at a space). All checks run before the model is loaded.
    """
    from tailorlm.models.hub import resolve
    from tailorlm.models.load import load_model, load_tokenizer

    _check_settings(add, min_pieces, loss_texts, loss_chars)
    check_fraction(held_out)
    output = check_output(output, overwrite=overwrite)
    texts = Corpus.open(corpus, column=column)
    path = resolve(str(model), progress=progress)
    base = load_tokenizer(path, progress=progress)
    check_byte_level(base, str(model))
    extended = load_tokenizer(path, progress=progress)

    def counted() -> Iterable[str]:  # streamed each time it is needed, so the corpus is never held whole
        return texts.texts(held_out=held_out, part="train")

    counts = count_words(base, _progress(counted(), "counting words", progress))
    chosen = choose_words(base, counts, add=add, min_pieces=min_pieces)
    if not chosen:
        raise ConfigError("no word to add", key="--min-pieces",
                          found=f"no word of the corpus splits into {min_pieces} or more pieces",
                          expected="a corpus with words the base tokenizer splits", hint="Lower --min-pieces")
    added = add_words(extended, chosen)
    fertility = {"counted": _verify(base, extended, counted(), added)}
    predicted = fertility["counted"]["base"].tokens - sum(word.saved for word in added)
    if fertility["counted"]["extended"].tokens != predicted:
        raise ModelError(
            "the extended tokenizer does not encode the corpus as the word selection predicted",
            found=f"{fertility['counted']['extended'].tokens} tokens (predicted {predicted})",
            expected="the predicted count", hint=_REPORT_IT,
        )
    held = measure_fertility({"base": base, "extended": extended}, texts.texts(held_out=held_out, part="held_out"))
    if held["base"].chars:
        fertility["held_out"] = held
    evaluated = list(itertools.islice(texts.texts(held_out=held_out, part="held_out"), loss_texts))

    lm, _ = load_model(path, dtype="float32", progress=progress)
    report = ExtensionReport(
        base_model=str(model), output=output, added=added, fertility=fertility, predicted_tokens=predicted,
        settings={"add": add, "min_pieces": min_pieces, "held_out": held_out, "loss_texts": loss_texts,
                  "loss_chars": loss_chars, "corpus": [str(p) for p in corpus], "column": column},
    )
    scored = [_cut(text, loss_chars) for text in (evaluated or itertools.islice(counted(), loss_texts))]
    report.loss_text_source = "held-out" if evaluated else "counted (nothing held out)"
    report.document_start = _document_start(base)
    if scored:
        report.loss["base"] = domain_loss(lm, base, _progress(scored, "base model loss", progress),
                                          report.document_start)
    report.tied_head = resize_and_initialise(lm, added, len(extended))
    if scored:
        report.loss["extended"] = domain_loss(lm, extended, _progress(scored, "extended model loss", progress),
                                              report.document_start)
        report.loss_texts = len(scored)

    output.mkdir(parents=True, exist_ok=True)
    lm.to(_saved_dtype(path)).save_pretrained(output)
    extended.save_pretrained(output)
    (output / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    return report


def check_byte_level(tokenizer: Any, where: str) -> None:
    """ModelError unless the tokenizer is GPT-2-style byte-level (pre-tokenizer and decoder), which extension relies on."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    pre, decoder = spec.get("pre_tokenizer") or {}, spec.get("decoder") or {}
    kinds = [p.get("type") for p in pre.get("pretokenizers", [pre])]
    if "ByteLevel" not in kinds or decoder.get("type") != "ByteLevel":
        raise ModelError(
            "only byte-level BPE tokenizers can be extended", where=where,
            found=f"pre-tokenizer {', '.join(str(k) for k in kinds)}; decoder {decoder.get('type')}",
            expected="a GPT-2-style byte-level tokenizer (SmolLM2, GPT-2, Llama 3, Qwen)",
        )


def count_words(tokenizer: Any, texts: Iterable[str]) -> Counter[str]:
    """How often each pre-token occurs, as raw text with its leading space (" diabetes", not `Ġdiabetes`)."""
    pre_tokenize = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text[start:end] for _, (start, end) in pre_tokenize(text))
    return counts


def choose_words(tokenizer: Any, counts: Counter[str], *, add: int, min_pieces: int) -> list[AddedWord]:
    """Up to `add` words (" " + letters) of at least `min_pieces` pieces, by frequency × (pieces − 1), each saving tokens.

    A word's saving is exact on the counted corpus: an added token also matches the start of longer words
    (leftmost-longest among the added tokens), which then cost 1 + the pieces of their rest.
    """
    words = sorted(w for w in counts if _is_spaced_word(w))
    pieces = dict(zip(words, _encode(tokenizer, words)))
    rest_pieces: dict[str, int] = {}

    def cost(word: str, match: str | None) -> int:
        if match is None:
            return len(pieces[word])
        rest = word[len(match):]
        if rest and rest not in rest_pieces:
            rest_pieces[rest] = len(_encode(tokenizer, [rest])[0])
        return 1 + (rest_pieces[rest] if rest else 0)

    candidates = sorted((w for w in words if len(pieces[w]) >= min_pieces),
                        key=lambda w: (-counts[w] * (len(pieces[w]) - 1), w))
    match: dict[str, str] = {}  # word -> the longest added token that is a prefix of it
    chosen: list[AddedWord] = []
    for candidate in candidates:
        if len(chosen) == add:
            break
        start = bisect.bisect_left(words, candidate)
        end = bisect.bisect_left(words, candidate + "\U0010ffff")
        affected = [w for w in words[start:end] if len(candidate) > len(match.get(w, ""))]
        saved = sum(counts[w] * (cost(w, match.get(w)) - cost(w, candidate)) for w in affected)
        if saved <= 0:
            continue
        for w in affected:
            match[w] = candidate
        chosen.append(AddedWord(candidate, -1, counts[candidate], pieces[candidate], saved))
    return chosen


def add_words(tokenizer: Any, words: list[AddedWord]) -> list[AddedWord]:
    """Add the words to the tokenizer as ordinary (not special) tokens and record their ids."""
    from tokenizers import AddedToken

    added = tokenizer.add_tokens([AddedToken(word.token, special=False, normalized=False) for word in words])
    if added != len(words):
        raise ModelError("the tokenizer refused some of the new tokens", found=f"{added} of {len(words)} added",
                         expected="every chosen word to be new to the tokenizer")
    for word in words:
        word.id = tokenizer.convert_tokens_to_ids(word.token)
    return words


def resize_and_initialise(model: Any, words: list[AddedWord], vocab_size: int) -> bool:
    """Grow the embeddings to hold `vocab_size` tokens; each new row is the mean of its pieces' rows. True when tied.

    A matrix already larger than the vocabulary (padded checkpoints) is kept, and its spare rows are used.
    """
    import torch

    rows = model.get_input_embeddings().weight.shape[0]
    if vocab_size > rows:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    embeddings = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is None or head.weight is embeddings
    with torch.no_grad():
        for word in words:
            pieces = torch.tensor(word.pieces, device=embeddings.device)
            embeddings[word.id] = embeddings[pieces].mean(dim=0)
            if not tied:
                head.weight[word.id] = head.weight[pieces].mean(dim=0)
                if getattr(head, "bias", None) is not None:
                    head.bias[word.id] = head.bias[pieces].mean()
    return tied


def domain_loss(model: Any, tokenizer: Any, texts: Iterable[str], start: str | None) -> DomainLoss:
    """Cross-entropy of each text under the model, summed over its tokens, each text scored after the `start` token.

    One text at a time, so no padding touches the numbers.
    """
    import torch

    start_ids = [tokenizer.convert_tokens_to_ids(start)] if start is not None else []
    device = next(model.parameters()).device
    total = 0.0
    tokens = chars = words = 0
    with torch.inference_mode():
        for text in texts:
            ids = start_ids + tokenizer(text, add_special_tokens=False)["input_ids"]
            batch = torch.tensor([ids], device=device)
            logits = model(batch).logits.float()  # (1, T, V)
            total += torch.nn.functional.cross_entropy(logits[0, :-1], batch[0, 1:], reduction="sum").item()
            tokens += len(ids) - 1
            chars += len(text)
            words += len(text.split())
    return DomainLoss(total, tokens, chars, words)


def _verify(base: Any, extended: Any, texts: Iterable[str], added: list[AddedWord]) -> dict[str, Fertility]:
    """Encode the counted corpus with both tokenizers; record each added token's uses (ModelError if one is unused)."""
    uses: Counter[int] = Counter()
    base_tokens = extended_tokens = words = chars = 0
    for batch in _batched(texts, 256):
        base_tokens += sum(len(ids) for ids in _encode(base, batch))
        for ids in _encode(extended, batch):
            extended_tokens += len(ids)
            uses.update(ids)
        words += sum(len(text.split()) for text in batch)
        chars += sum(len(text) for text in batch)
    for word in added:
        word.uses = uses[word.id]
    unused = [word.token for word in added if word.uses == 0]
    if unused:
        raise ModelError("added tokens are not used when encoding the corpus", found=", ".join(map(repr, unused[:5])),
                         expected="every added token used",
                         hint=_REPORT_IT)
    return {"base": Fertility(base_tokens, words, chars), "extended": Fertility(extended_tokens, words, chars)}


def _batched(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(texts)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _encode(tokenizer: Any, texts: list[str], batch: int = 256) -> list[list[int]]:
    out: list[list[int]] = []
    for start in range(0, len(texts), batch):
        out.extend(tokenizer(texts[start : start + batch], add_special_tokens=False)["input_ids"])
    return out


def _is_spaced_word(pre_token: str) -> bool:
    """A space followed by letters only: the form a word takes in running text."""
    return len(pre_token) > 1 and pre_token[0] == " " and pre_token[1:].isalpha()


def _cut(text: str, limit: int) -> str:
    """The text cut to at most `limit` characters, at the last space before the limit when there is one."""
    if len(text) <= limit:
        return text
    space = text.rfind(" ", 0, limit + 1)
    return text[: space if space > 0 else limit]


def _document_start(tokenizer: Any) -> str | None:
    """The token both models read before each scored text: a document separator, else BOS, else EOS."""
    vocab = tokenizer.get_vocab()
    for token in (*_DOCUMENT_STARTS, tokenizer.bos_token, tokenizer.eos_token):
        if token is not None and token in vocab:
            return token
    return None


def _saved_dtype(path: Path) -> Any:
    """The dtype the checkpoint was stored in (float32 when it does not say)."""
    import torch

    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")
    return getattr(torch, name, torch.float32)


def _check_settings(add: int, min_pieces: int, loss_texts: int, loss_chars: int) -> None:
    if add < 1:
        raise ConfigError("nothing to add", key="--add", found=str(add), expected="an integer ≥ 1")
    if min_pieces < 2:
        raise ConfigError("bad --min-pieces", key="--min-pieces", found=str(min_pieces),
                          expected="an integer ≥ 2 (a word already one token saves nothing)")
    if loss_texts < 0:
        raise ConfigError("bad --loss-texts", key="--loss-texts", found=str(loss_texts),
                          expected="an integer ≥ 0 (0 skips the loss)")
    if loss_chars < 1:
        raise ConfigError("bad --loss-chars", key="--loss-chars", found=str(loss_chars), expected="an integer ≥ 1")


def _progress(items: Iterable[str], label: str, enabled: bool) -> Iterable[str]:
    """The items, with a rich progress bar when enabled."""
    if not enabled:
        return items
    from rich.progress import track

    total = len(items) if isinstance(items, list) else None
    return track(items, description=label, total=total)
