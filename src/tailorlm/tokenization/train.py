"""Train a tokenizer on a domain corpus with the `tokenizers` library and save it as a transformers tokenizer folder.

Both types work on bytes: the text is split into words by GPT-2's byte-level pre-tokenizer (a space stays attached
to the word after it, ` word`), and each of the 256 byte values is a token of its own, so no input is ever unknown
and `decode(encode(text)) == text` for every string (every Python `str` that can be written as UTF-8, i.e. without
lone surrogates).

- `bpe` (default): byte-level BPE as in GPT-2, SmolLM2 and Llama 3; merges are learned from pair counts, most
  frequent first, down to `min_frequency`.
- `unigram`: a unigram language model over the same byte symbols (SentencePiece's algorithm); segmentation picks the
  most likely pieces. It carries an `<unk>` token because the model needs one, but never produces it.

Special tokens come first in the vocabulary (ids 0, 1, ...), followed by the 256 bytes and the learned pieces. The
saved tokenizer has the ChatML chat template (`tailorlm.data.templates.CHATML_TEMPLATE`).

    result = train_tokenizer(["shakespeare.txt"], vocab_size=4096, output="tok-4k")
    AutoTokenizer.from_pretrained("tok-4k")
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tailorlm.data.templates import CHATML_TEMPLATE, CHATML_TOKENS
from tailorlm.errors import ConfigError, ModelError
from tailorlm.tokenization.corpus import Corpus, check_fraction
from tailorlm.tokenization.fertility import Fertility, measure_fertility

TYPES: tuple[str, ...] = ("bpe", "unigram")
BYTE_ALPHABET = 256
DEFAULT_COMPARE = "smollm2-135m-instruct"
REPORT_FILE = "tokenizer_training.json"


@dataclass(frozen=True)
class SpecialTokens:
    """The special tokens of one tokenizer type, in vocabulary order, and the role each plays."""

    bos: str
    eos: str
    pad: str
    unk: str | None

    @property
    def all(self) -> list[str]:
        """Every special token once, in id order: the role tokens, then ChatML's."""
        tokens = [t for t in (self.unk, self.bos, self.eos, self.pad) if t is not None]
        return list(dict.fromkeys(tokens + list(CHATML_TOKENS)))


SPECIAL_TOKENS: dict[str, SpecialTokens] = {
    # GPT-2 style: one document separator serves as BOS and EOS; byte-level BPE needs no unknown token.
    "bpe": SpecialTokens(bos="<|endoftext|>", eos="<|endoftext|>", pad="<pad>", unk=None),
    # SentencePiece style: the unigram model requires an unknown token, even though bytes make it unreachable.
    "unigram": SpecialTokens(bos="<s>", eos="</s>", pad="<pad>", unk="<unk>"),
}


@dataclass
class TrainedTokenizer:
    """What `train_tokenizer` made and measured."""

    output: Path
    type: str
    vocab_size: int
    """Tokens in the saved vocabulary: the size asked for, or fewer when the corpus has too few distinct pairs or pieces."""
    asked: int
    special_tokens: dict[str, int]
    held_out_fraction: float
    fertility: dict[str, Fertility] = field(default_factory=dict)
    """Held-out fertility of the new tokenizer ("trained") and of the reference (its name); empty if nothing was held out."""
    vocab_sizes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type, "vocab_size": self.vocab_size, "vocab_size_asked": self.asked,
            "special_tokens": self.special_tokens, "held_out_fraction": self.held_out_fraction,
            "held_out_fertility": {name: f.to_dict() for name, f in self.fertility.items()},
            "vocab_sizes": self.vocab_sizes,
        }


def minimum_vocab_size(type: str) -> int:
    """The smallest vocabulary a type can have: the 256 bytes, the special tokens and (unigram) one learned piece."""
    # tokenizers' UnigramTrainer ignores vocab_size when it leaves no room for a learned piece (tokenizers 0.23).
    return BYTE_ALPHABET + len(SPECIAL_TOKENS[type].all) + (1 if type == "unigram" else 0)


def check_settings(type: str, vocab_size: int, min_frequency: int | None) -> None:
    """ConfigError for an unknown type, a vocabulary too small to hold the bytes and special tokens, or a bad frequency."""
    if type not in TYPES:
        raise ConfigError("unknown tokenizer type", key="--type", found=repr(type), expected="one of " + ", ".join(TYPES))
    minimum = minimum_vocab_size(type)
    if vocab_size < minimum:
        specials = SPECIAL_TOKENS[type].all
        extra = " and one learned piece" if type == "unigram" else ""
        raise ConfigError(
            "the vocabulary is too small", key="--vocab-size", found=str(vocab_size),
            expected=f"at least {minimum}: the byte alphabet ({BYTE_ALPHABET}), the {len(specials)} special tokens "
                     f"({', '.join(specials)}){extra}",
        )
    if min_frequency is not None:
        if type != "bpe":
            raise ConfigError("--min-frequency applies only to --type bpe", key="--min-frequency", found=str(min_frequency),
                              hint="The unigram trainer prunes pieces by likelihood, not by a count; leave the flag out")
        if min_frequency < 1:
            raise ConfigError("bad minimum frequency", key="--min-frequency", found=str(min_frequency),
                              expected="an integer ≥ 1")


def train_tokenizer(
    corpus: list[str | Path],
    *,
    vocab_size: int,
    output: str | Path,
    type: str = "bpe",
    compare: str | None = DEFAULT_COMPARE,
    held_out: float = 0.05,
    min_frequency: int | None = None,
    column: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainedTokenizer:
    """Train a `type` tokenizer of exactly `vocab_size` tokens on the corpus (held-out blocks left out), save it to
    `output`, and measure held-out fertility next to the `compare` tokenizer (None: no comparison).

    Every check (settings, output folder, every corpus file, the reference) runs before training.
    """
    check_settings(type, vocab_size, min_frequency)
    check_fraction(held_out)
    output = check_output(output, overwrite=overwrite)
    texts = Corpus.open(corpus, column=column)
    reference = load_reference(compare) if compare else None

    tokenizer, trainer = _tokenizer_and_trainer(type, vocab_size, 2 if min_frequency is None else min_frequency)
    with _Progress(enabled=progress) as bar:
        tokenizer.train_from_iterator(bar.train_blocks(texts, held_out), trainer=trainer)
    trained = to_transformers(tokenizer, SPECIAL_TOKENS[type])
    output.mkdir(parents=True, exist_ok=True)
    trained.save_pretrained(output)

    result = TrainedTokenizer(
        output=output, type=type, vocab_size=len(trained), asked=vocab_size, held_out_fraction=held_out,
        special_tokens={token: trained.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS[type].all},
    )
    if held_out > 0:
        tokenizers = {"trained": trained} | ({compare: reference} if reference is not None else {})
        fertility = measure_fertility(tokenizers, texts.texts(held_out=held_out, part="held_out"))
        if fertility["trained"].chars:
            result.fertility = fertility
            result.vocab_sizes = {name: len(tok) for name, tok in tokenizers.items()}
    (output / REPORT_FILE).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return result


def to_transformers(tokenizer: Any, specials: SpecialTokens) -> Any:
    """Wrap a trained `tokenizers.Tokenizer` as a transformers tokenizer with its special tokens and the ChatML template."""
    from transformers import PreTrainedTokenizerFast

    roles = {"bos_token": specials.bos, "eos_token": specials.eos, "pad_token": specials.pad}
    if specials.unk is not None:
        roles["unk_token"] = specials.unk
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        additional_special_tokens=list(CHATML_TOKENS),
        chat_template=CHATML_TEMPLATE,
        # transformers' clean-up turns " ." into "." on decode, which would break decode(encode(x)) == x.
        clean_up_tokenization_spaces=False,
        **roles,
    )


def check_output(output: str | Path, *, overwrite: bool) -> Path:
    """The output folder: refused when it is a file, or a folder with files in it unless `overwrite`."""
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise ConfigError("the output is a file", key="--output", found=str(path), expected="a folder (new or empty)")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ConfigError("the output folder is not empty", key="--output", found=str(path),
                          expected="a new or empty folder", hint="Pass --overwrite to write into it anyway")
    return path


def load_reference(ref: str) -> Any:
    """A reference tokenizer: a tokenizer folder (tokenizer.json without weights) or any model reference."""
    from transformers import AutoTokenizer

    from tailorlm.models.load import load_tokenizer

    path = Path(ref).expanduser()
    if path.is_dir() and not (path / "config.json").exists():
        try:
            return AutoTokenizer.from_pretrained(path)
        except (ValueError, OSError) as err:
            raise ModelError("cannot load the reference tokenizer", where=str(path), key="--compare", found=str(err),
                             expected="a folder saved by save_pretrained (tokenizer.json) or a model reference") from None
    return load_tokenizer(ref)


def _tokenizer_and_trainer(type: str, vocab_size: int, min_frequency: int) -> tuple[Any, Any]:
    """An untrained byte-level tokenizer of the type and its trainer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = SPECIAL_TOKENS[type]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if type == "bpe":
        tokenizer = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials.all,
                                      initial_alphabet=alphabet, show_progress=False)
    else:
        tokenizer = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials.all, unk_token=specials.unk,
                                          initial_alphabet=alphabet, show_progress=False)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer, trainer


class _Progress:
    """A rich progress bar over the corpus bytes read, then a spinner while the trainer learns its vocabulary."""

    def __init__(self, *, enabled: bool) -> None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), disable=not enabled)

    def __enter__(self) -> "_Progress":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def train_blocks(self, corpus: Corpus, held_out: float) -> Iterator[str]:
        """The training blocks, advancing the bar by each block's bytes (held-out blocks are read and skipped)."""
        from tailorlm.tokenization.corpus import is_held_out

        task = self.progress.add_task("reading the corpus", total=corpus.size, detail="")
        done, current, read = 0, None, 0
        for index, source, text in corpus.blocks():
            if source is not current:
                done, current, read = done + (current.size if current else 0), source, 0
            read += len(text.encode("utf-8"))
            completed = done + min(read, source.size)
            self.progress.update(task, completed=completed, detail=f"{completed / 1e6:,.1f}/{corpus.size / 1e6:,.1f} MB")
            if not is_held_out(index, held_out):
                yield text
        self.progress.update(task, completed=corpus.size, detail=f"{corpus.size / 1e6:,.1f} MB")
        self.progress.add_task("learning the vocabulary", total=None, detail="")
