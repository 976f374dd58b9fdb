"""Tokenize examples the way training will, and keep only what a data check needs from each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from tailorlm.data.examples import ChatExample, ClassificationExample, Example, PreferenceExample
from tailorlm.data.templates import TokenizedChat, format_trained_spans, tokenize_chat, tokenize_text
from tailorlm.errors import TailorError


@dataclass
class Measured:
    """One example as training would see it: token count, truncation, assistant turns, or why it failed."""

    length: int | None = None
    """Tokens before truncation (the longer side of a preference pair)."""
    truncated: bool = False
    trained_tokens: int = 0
    """Positions that carry a label after truncation."""
    assistant_turns: int = 0
    turns_ending_with_eot: int = 0
    no_assistant: bool = False
    sample: str | None = None
    """The rendered text with trained spans in [[ ]]; filled for the first example measured only."""
    error: str | None = None


def measure_examples(
    tokenizer: Any, examples: Sequence[Example], *, max_length: int | None, progress: bool = False, label: str = ""
) -> list[Measured]:
    """Measure every example; chats go through the chat template, text and classification are tokenized plainly."""
    from rich.console import Console
    from rich.progress import track

    rows = track(examples, description=f"tokenizing {label}".strip(), console=Console(stderr=True),
                 transient=True, disable=not progress or len(examples) < 2000)
    measured: list[Measured] = []
    have_sample = False
    for example in rows:
        try:
            one = _measure(tokenizer, example, max_length, want_sample=not have_sample)
        except TailorError as err:
            one = Measured(error=str(err))
        have_sample = have_sample or one.sample is not None
        measured.append(one)
    return measured


def _measure(tokenizer: Any, example: Example, max_length: int | None, *, want_sample: bool) -> Measured:
    where = str(example.origin) if example.origin else None
    if isinstance(example, ChatExample):
        if not any(m.get("role") == "assistant" for m in example.messages):
            chat = tokenize_chat(tokenizer, example.messages, max_length=max_length, train_on="all", where=where)
            return Measured(chat.length, chat.truncated, 0, no_assistant=True)
        chat = tokenize_chat(tokenizer, example.messages, max_length=max_length, where=where)
        return _from_chat([chat], tokenizer if want_sample else None, example.messages, max_length)
    if isinstance(example, PreferenceExample):
        prompt = [{"role": "user", "content": example.prompt}] if example.prompt.strip() else []
        pair = [prompt + [{"role": "assistant", "content": answer}] for answer in (example.chosen, example.rejected)]
        chats = [tokenize_chat(tokenizer, messages, max_length=max_length, where=where) for messages in pair]
        return _from_chat(chats, tokenizer if want_sample else None, pair[0], max_length)
    tokens = tokenize_text(tokenizer, example.text, max_length=max_length, where=where)
    sample = None
    if isinstance(example, ClassificationExample) and want_sample:
        sample = f"{example.text}\n-> label {example.label!r}"
    elif want_sample:
        sample = format_trained_spans(tokenizer, tokenize_text(tokenizer, example.text, where=where) if tokens.truncated else tokens)
        sample += _cut_note(tokens.truncated, max_length)
    return Measured(tokens.length, tokens.truncated, tokens.trained_tokens, sample=sample)


def _from_chat(chats: list[TokenizedChat], sample_tokenizer: Any, first: list[dict[str, str]], max_length: int | None) -> Measured:
    """Combine the tokenized chats of one example (two for a preference pair: chosen, then rejected)."""
    sample = None
    if sample_tokenizer is not None:
        # The sample shows the whole conversation, so a short max_length does not hide what would be trained.
        shown = tokenize_chat(sample_tokenizer, first) if chats[0].truncated else chats[0]
        sample = format_trained_spans(sample_tokenizer, shown) + _cut_note(chats[0].truncated, max_length)
    return Measured(
        length=max(c.length for c in chats),
        truncated=any(c.truncated for c in chats),
        trained_tokens=min(c.trained_tokens for c in chats),
        assistant_turns=sum(c.assistant_turns for c in chats),
        turns_ending_with_eot=sum(c.turns_ending_with_eot for c in chats),
        sample=sample,
    )


def _cut_note(truncated: bool, max_length: int | None) -> str:
    return f"\n(training cuts this example at {max_length} tokens)" if truncated else ""
