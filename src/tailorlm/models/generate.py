"""Generate text from a loaded model: chat messages through the tokenizer's chat template, greedy unless asked."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tailorlm.errors import ModelError

Messages = Sequence[dict[str, str]]


def render_prompt(tokenizer: Any, messages_or_prompt: str | Messages) -> str:
    """The exact text the model sees: a plain prompt as given, chat messages through the chat template."""
    if isinstance(messages_or_prompt, str):
        return messages_or_prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            "the tokenizer has no chat template, so chat messages cannot be rendered",
            found=f"{len(messages_or_prompt)} message(s)",
            expected="a model with a chat template (such as smollm2-135m-instruct) or a plain string prompt",
        )
    for i, message in enumerate(messages_or_prompt):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ModelError(
                "a chat message needs 'role' and 'content'", where=f"message {i}", found=repr(message)[:80]
            )
    return tokenizer.apply_chat_template(list(messages_or_prompt), tokenize=False, add_generation_prompt=True)


def plain_prompt(messages: Messages) -> str:
    r"""Chat messages as one plain text, for a model without a chat template (an encoder-decoder): the system prompt,
    each shot as "input\nanswer" and the last input, joined with blank lines.

    >>> plain_prompt([{"role": "system", "content": "Translate."}, {"role": "user", "content": "Hi"},
    ...               {"role": "assistant", "content": "Hallo"}, {"role": "user", "content": "Thanks"}])
    'Translate.\n\nHi\nHallo\n\nThanks'
    """
    blocks: list[str] = []
    for i, message in enumerate(messages):
        if message["role"] == "assistant" and i and messages[i - 1]["role"] == "user":
            blocks[-1] += "\n" + message["content"]
        else:
            blocks.append(message["content"])
    return "\n\n".join(blocks)


def generate(
    model: Any,
    tokenizer: Any,
    messages_or_prompt: str | Messages,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    on_text: Callable[[str], None] | None = None,
) -> str:
    """Only the newly generated text for a prompt or chat messages; greedy when temperature is 0.

    `on_text` receives the text in pieces as it is generated; the pieces joined are the returned text.
    """
    import torch

    text = render_prompt(tokenizer, messages_or_prompt)
    # The chat template already wrote any BOS token; adding special tokens again would double it.
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=isinstance(messages_or_prompt, str))
    inputs = {k: v.to(model.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    prompt_len = inputs["input_ids"].shape[1]
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and prompt_len + max_new_tokens > limit:
        raise ModelError(
            "the prompt is too long for the model's context",
            found=f"{prompt_len} prompt tokens + {max_new_tokens} new tokens",
            expected=f"at most {limit} tokens in all",
        )
    eos = {t for t in _as_list(model.generation_config.eos_token_id) + [tokenizer.eos_token_id] if t is not None}
    sampling = temperature > 0
    options: dict[str, Any] = {"do_sample": sampling}
    if sampling:
        options.update(temperature=temperature, top_p=top_p)
        if seed is not None:
            torch.manual_seed(seed)
    else:
        # Greedy: clear sampling defaults a checkpoint's generation_config may carry, so transformers does not warn.
        options.update(temperature=None, top_p=None, top_k=None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(sorted(eos)), None)
    streamer = None if on_text is None else TextPieces(tokenizer, on_text)
    with torch.inference_mode():
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, eos_token_id=sorted(eos) or None, pad_token_id=pad,
            streamer=streamer, **options
        )
    # An encoder-decoder's output is what its decoder wrote (its start token, skipped as special), not the prompt.
    start = 0 if getattr(model.config, "is_encoder_decoder", False) else prompt_len
    return tokenizer.decode(output[0, start:], skip_special_tokens=True)


class TextPieces:
    """A streamer for `model.generate` (transformers' BaseStreamer protocol: `put`, `end`) that hands new text to a
    callback, skipping the prompt. It does not subclass BaseStreamer so that importing this module stays free of
    transformers.

    Each step decodes all new tokens so far (as `generate` decodes them at the end) and passes on what was added
    since the last piece; text ending in an unfinished character (a split UTF-8 byte sequence decodes to U+FFFD)
    waits for the next token. So the pieces joined are exactly the final decoded text.
    """

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]) -> None:
        self.tokenizer, self.on_text = tokenizer, on_text
        self.ids: list[int] = []
        self.sent = ""
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        """Take the next token ids (the first call brings the prompt, which is skipped)."""
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.ids.extend(int(t) for t in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            self._send(text)

    def end(self) -> None:
        """Send whatever text is left."""
        self._send(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def _send(self, text: str) -> None:
        # Decoding more tokens only appends to the text of fewer (no clean-up of spaces in generative tokenizers).
        if len(text) > len(self.sent) and text.startswith(self.sent):
            piece, self.sent = text[len(self.sent):], text
            self.on_text(piece)


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
