"""Chat rendering with the model's own template, and loss masks that train only what the assistant says.

A conversation is rendered once with the chat template and tokenized once with character offsets. The character
span of each assistant turn (from the end of the generation prompt to the end of the end-of-turn token) is found by
rendering the conversation's prefixes, and a token is trained when its first character lies inside such a span. So
the trained tokens are what the model must generate at inference after `add_generation_prompt=True`.

Example (a tokenizer without a template gets ChatML):
    ensure_chat_template(tok)
    chat = tokenize_chat(tok, [{"role": "user", "content": "Capital of France?"},
                               {"role": "assistant", "content": "Paris"}])
    format_trained_spans(tok, chat)
    # '<|im_start|>user\\nCapital of France?<|im_end|>\\n<|im_start|>assistant\\n[[Paris<|im_end|>]]\\n'
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

from jinja2 import TemplateError

from tailorlm.data.examples import ROLES
from tailorlm.errors import ConfigError, DataError, ModelError

IGNORE_INDEX = -100
TRAIN_ON: tuple[str, ...] = ("assistant", "last_assistant", "all")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHATML_TOKENS: tuple[str, ...] = ("<|im_start|>", "<|im_end|>")

_PROBE_QUESTION = "tailorlm probe question"
_PROBE_ANSWER = "tailorlm probe answer"


@dataclass
class TokenizedChat:
    """Token ids of one rendered example and its labels (IGNORE_INDEX where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]
    assistant_turns: int
    turns_ending_with_eot: int
    """Assistant turns whose span ends with the end-of-turn token (counted before truncation)."""
    length: int
    """Token count before truncation."""
    truncated: bool

    @property
    def trained_tokens(self) -> int:
        """How many positions carry a label; 0 means the example teaches nothing (e.g. truncated away)."""
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass(frozen=True)
class _TemplateFacts:
    header: str  # what add_generation_prompt appends, i.e. the text just before an assistant turn's content
    end_of_turn: str | None
    end_of_turn_id: int | None


_facts_cache: "weakref.WeakKeyDictionary[Any, tuple[tuple, _TemplateFacts]]" = weakref.WeakKeyDictionary()


def ensure_chat_template(tokenizer: Any) -> bool:
    """Install CHATML_TEMPLATE when the tokenizer has no chat template; return True when the default was installed.

    `<|im_start|>` and `<|im_end|>` are added as special tokens where the tokenizer lacks them, so the caller must then
    resize the model's embeddings (`model.resize_token_embeddings(len(tokenizer))`) and stop generation at
    `end_of_turn_token(tokenizer)`. The template lives on the tokenizer, so `tokenizer.save_pretrained` writes it
    beside the weights and training and inference use the same one.
    """
    if tokenizer.chat_template:
        return False
    added = {token.content for token in tokenizer.added_tokens_decoder.values()}
    missing = [token for token in CHATML_TOKENS if token not in added]
    if missing:
        # A token already in the vocabulary keeps its id; registering it only stops the pre-tokenizer splitting it.
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    tokenizer.chat_template = CHATML_TEMPLATE
    return True


def render_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    *,
    add_generation_prompt: bool = False,
    where: str | None = None,
) -> str:
    """Render messages to text with the tokenizer's chat template."""
    _check_messages(messages, where, need_assistant=False)
    return _render(tokenizer, messages, add_generation_prompt, where)


def end_of_turn_token(tokenizer: Any) -> str:
    """The special token that closes an assistant turn in this tokenizer's chat template (e.g. `<|im_end|>`)."""
    facts = _template_facts(tokenizer)
    if facts.end_of_turn is None:
        raise ModelError(
            "the chat template does not close an assistant turn with a special token, so a model cannot learn to stop",
            key="chat_template",
            found=repr(_render(tokenizer, _probe(), False, None)),
            expected="a template that writes an end-of-turn token (such as <|im_end|> or eos) after each answer",
        )
    return facts.end_of_turn


def tokenize_chat(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    *,
    max_length: int | None = None,
    train_on: str = "assistant",
    where: str | None = None,
) -> TokenizedChat:
    """Render and tokenize a conversation; labels cover each assistant turn's content and its end-of-turn token.

    `train_on` is "assistant" (every assistant turn), "last_assistant" (only the final one) or "all" (every token).
    Tokens past `max_length` are cut from the right. `where` (file and row) is named in every error.
    """
    if train_on not in TRAIN_ON:
        raise ConfigError("unknown train_on", key="train_on", found=repr(train_on),
                          expected=f"one of {', '.join(TRAIN_ON)}")
    _check_max_length(max_length)
    _check_messages(messages, where, need_assistant=train_on != "all")
    facts = _template_facts(tokenizer)
    text = _render(tokenizer, messages, False, where)
    spans = _assistant_spans(tokenizer, messages, text, facts, where)

    encoding = _encode(tokenizer, text)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    labels = list(ids) if train_on == "all" else [IGNORE_INDEX] * len(ids)
    ending_with_eot, k = 0, 0
    trained = {len(spans) - 1} if train_on == "last_assistant" else set(range(len(spans)))
    for n, (start, end) in enumerate(spans):
        while k < len(ids) and offsets[k][0] < start:
            k += 1
        first = k
        while k < len(ids) and offsets[k][0] < end:
            k += 1
        if k > first and facts.end_of_turn_id is not None and ids[k - 1] == facts.end_of_turn_id:
            ending_with_eot += 1
        if train_on != "all" and n in trained:
            labels[first:k] = ids[first:k]

    return TokenizedChat(
        input_ids=list(ids[:max_length]),
        labels=labels[:max_length],
        assistant_turns=len(spans),
        turns_ending_with_eot=ending_with_eot,
        length=len(ids),
        truncated=max_length is not None and len(ids) > max_length,
    )


def tokenize_text(
    tokenizer: Any, text: str, *, max_length: int | None = None, where: str | None = None
) -> TokenizedChat:
    """Tokenize pre-training text with the tokenizer's own special tokens and EOS appended; every token is trained."""
    if not isinstance(text, str):
        raise DataError("text must be a string", where=where, key="text", found=_show(text), expected="a string")
    _check_max_length(max_length)
    ids = list(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    kept = ids[:max_length]
    return TokenizedChat(kept, list(kept), 0, 0, len(ids), len(kept) < len(ids))


def format_trained_spans(
    tokenizer: Any, tokenized: TokenizedChat, *, open_mark: str = "[[", close_mark: str = "]]"
) -> str:
    """Decode a tokenized example with every trained run of tokens wrapped in open_mark ... close_mark."""
    pieces: list[str] = []
    run: list[int] = []
    run_trained = False
    for token, label in zip(tokenized.input_ids, tokenized.labels):
        is_trained = label != IGNORE_INDEX
        if run and is_trained != run_trained:
            pieces.append(_decode_run(tokenizer, run, run_trained, open_mark, close_mark))
            run = []
        run.append(token)
        run_trained = is_trained
    if run:
        pieces.append(_decode_run(tokenizer, run, run_trained, open_mark, close_mark))
    return "".join(pieces)


def _decode_run(tokenizer: Any, ids: list[int], trained: bool, open_mark: str, close_mark: str) -> str:
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return f"{open_mark}{text}{close_mark}" if trained else text


def _check_messages(messages: Any, where: str | None, *, need_assistant: bool) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise DataError("a chat example needs a non-empty list of messages", where=where, key="messages",
                        found=_show(messages), expected="a list of {role, content} objects")
    for n, message in enumerate(messages):
        key = f"messages[{n}]"
        if not isinstance(message, dict):
            raise DataError("a message must be an object", where=where, key=key, found=_show(message),
                            expected="an object with role and content")
        if message.get("role") not in ROLES:
            raise DataError("unknown message role", where=where, key=f"{key}.role", found=_show(message.get("role")),
                            expected=f"one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            found = "no content" if "content" not in message else _show(message["content"])
            raise DataError("message content must be text", where=where, key=f"{key}.content", found=found,
                            expected="a string")
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise DataError("nothing to train on: the conversation has no assistant turn", where=where, key="messages",
                        found="roles " + ", ".join(m["role"] for m in messages),
                        expected="at least one assistant message")


def _check_max_length(max_length: Any) -> None:
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ConfigError("max_length must be a positive integer", key="max_length", found=repr(max_length))


def _show(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{type(value).__name__} {text}" if not isinstance(value, str) else text


def _require_template(tokenizer: Any) -> Any:
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ModelError("the tokenizer has no chat template", key="chat_template", found="none",
                         expected="a Jinja chat template",
                         hint="ensure_chat_template(tokenizer) in tailorlm.data.templates installs the ChatML default")
    return template


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], add_generation_prompt: bool, where: str | None) -> str:
    _require_template(tokenizer)
    try:
        return tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except TemplateError as error:
        raise DataError("the chat template refused this conversation", where=where, key="messages",
                        found=str(error)) from error


def _encode(tokenizer: Any, text: str) -> Any:
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError("loss masks need a fast (Rust) tokenizer with offsets", found=type(tokenizer).__name__,
                         expected="a tokenizers-backed tokenizer")
    # The template already writes every special token it wants (BOS included); adding them again would double them,
    # and it is also what apply_chat_template(tokenize=True) does at inference.
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)


def _probe(answer: bool = True) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": _PROBE_QUESTION}]
    return messages + [{"role": "assistant", "content": _PROBE_ANSWER}] if answer else messages


def _template_facts(tokenizer: Any) -> _TemplateFacts:
    """What a probe conversation reveals about the template: the generation header and the end-of-turn token."""
    template = _require_template(tokenizer)
    key = (str(template), len(tokenizer), str(tokenizer.special_tokens_map))
    cached = _facts_cache.get(tokenizer)
    if cached is not None and cached[0] == key:
        return cached[1]
    where = "chat template probe"
    without = _render(tokenizer, _probe(answer=False), False, where)
    prompt = _render(tokenizer, _probe(answer=False), True, where)
    # Phi-3 closes a conversation with eos unless a generation prompt follows, so compare only the common start.
    header = prompt[len(os.path.commonprefix([prompt, without])):]
    full = _render(tokenizer, _probe(), False, where)
    eot, eot_id = None, None
    at = full.find(_PROBE_ANSWER)
    if at >= 0:
        after = full[at + len(_PROBE_ANSWER):].lstrip()
        ids = _encode(tokenizer, after)["input_ids"] if after else []
        if ids and ids[0] in tokenizer.added_tokens_decoder:
            eot_id = ids[0]
            eot = tokenizer.added_tokens_decoder[eot_id].content
    facts = _TemplateFacts(header=header, end_of_turn=eot, end_of_turn_id=eot_id)
    _facts_cache[tokenizer] = (key, facts)
    return facts


def _assistant_spans(
    tokenizer: Any, messages: Sequence[dict[str, str]], text: str, facts: _TemplateFacts, where: str | None
) -> list[tuple[int, int]]:
    """Character spans [start, end) of each assistant turn in the rendered text: content plus end-of-turn token."""
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _turn_start(tokenizer, messages, i, text, cursor, facts, where)
        needle = message["content"].strip()  # templates such as Llama-3's trim the content
        eot = facts.end_of_turn
        found = text.find(needle, start) if needle else start
        if found >= 0 and eot is not None and text.find(eot, start, found) >= 0:
            found = -1  # what matched lies in a later turn
        if found >= 0:
            end = found + len(needle)
            eot_at = text.find(eot, end) if eot is not None else -1
            # Only whitespace may separate the content from its end-of-turn token; otherwise the token belongs to
            # something else and this turn is left open (`tailor data check` reports it).
            if eot_at >= 0 and not text[end:eot_at].strip():
                end = eot_at + len(eot)
        else:
            # The template rewrote the content (stripped reasoning, say): the turn still ends at its end-of-turn token.
            eot_at = text.find(eot, start) if eot is not None else -1
            if eot_at < 0:
                raise DataError(
                    f"cannot find assistant turn {i} in the rendered conversation; the chat template changes it",
                    where=where, key=f"messages[{i}].content", found=_show(text[start:start + 60]),
                    expected=_show(message["content"]))
            end = eot_at + len(eot)
        spans.append((start, end))
        cursor = end
    return spans


def _turn_start(tokenizer: Any, messages: Sequence[dict[str, str]], i: int, text: str, cursor: int,
                facts: _TemplateFacts, where: str | None) -> int:
    """Where assistant message i starts: the end of the rendered prefix with its generation prompt."""
    if i > 0:
        try:
            prompt = _render(tokenizer, messages[:i], True, where)
        except (DataError, ValueError):
            prompt = None
        if prompt is not None and len(prompt) >= cursor and text.startswith(prompt):
            return len(prompt)
    # The prefix does not render as a prefix (no messages before it, or a template that injects text such as a
    # default system prompt only for some prefixes): fall back to the next generation header after the last turn.
    if facts.header:
        at = text.find(facts.header, cursor)
        if at >= 0:
            return at + len(facts.header)
    elif i == 0:
        return 0
    raise DataError(
        f"cannot find where assistant turn {i} starts: the chat template does not render this conversation's prefix "
        "as a prefix of the whole",
        where=where, key=f"messages[{i}]", found=_show(text[cursor:cursor + 60]),
        expected=f"the generation prompt {facts.header!r}")
