"""The llama.cpp engine of `tailor serve`: a GGUF file (an export of `tailor export --format gguf`, or any chat GGUF)
served through llama-cpp-python, behind the same OpenAI API as the PyTorch engine.

The server renders the chat with the chat template stored in the GGUF's metadata (as llama-cpp-python's own chat
handler does), counts and checks the prompt's tokens with the GGUF's tokenizer, and streams the answer from
`Llama.generate` over those tokens, decoding each token's bytes as they come. Sampling follows OpenAI's parameters
only: temperature (0 is greedy), top_p and seed, with llama.cpp's extra samplers off (top_k 0, min_p 0, no repeat
penalty), so that a request means the same on both engines. One request runs at a time (a `Llama` holds one
sequence); the engine's queue, time limits and stop strings apply as for any one-at-a-time specialist.
"""

from __future__ import annotations

import codecs
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tailorlm.errors import ModelError

MAX_CONTEXT = 8192
"""Tokens of context the engine allocates at most (a GGUF may declare 128k; its KV cache would not fit)."""


class GgufTokens:
    """The tokenizer face the server needs (`__call__`, `chat_template`) over a GGUF's own tokenizer."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.chat_template: str | None = llm.metadata.get("tokenizer.chat_template") or None
        self.eos_token_id = llm.token_eos()

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens and self._adds_bos(), special=True)
        return {"input_ids": list(ids)}

    def render(self, messages: list[dict[str, str]]) -> str:
        """The chat as the template writes it, with the assistant's turn opened."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        if not self.chat_template:
            raise ModelError("this GGUF file has no chat template, so it cannot answer chat messages",
                             where=str(self.llm.model_path), key="tokenizer.chat_template",
                             expected="a GGUF with a chat template (`tailor export` writes one); or use /v1/completions")
        formatter = Jinja2ChatFormatter(template=self.chat_template, eos_token=self._text(self.llm.token_eos()),
                                        bos_token=self._text(self.llm.token_bos()), add_generation_prompt=True)
        return formatter(messages=messages).prompt

    def apply_chat_template(self, messages: list[dict[str, str]], *, tokenize: bool = False,
                            add_generation_prompt: bool = True) -> str:
        """The rendered chat, as `transformers` tokenizers give it (text only, the assistant's turn opened)."""
        if tokenize or not add_generation_prompt:
            raise ValueError("a GGUF's chat template renders text with the assistant's turn opened only")
        return self.render(messages)

    def _text(self, token: int) -> str:
        return self.llm._model.token_get_text(token) if token >= 0 else ""

    def _adds_bos(self) -> bool:
        return bool(self.llm._model.add_bos_token()) and self.llm.token_bos() >= 0


@dataclass
class GgufModel:
    """A loaded GGUF: the llama-cpp-python model, its tokenizer face and its context."""

    path: Path
    llm: Any
    tokens: GgufTokens

    @property
    def context(self) -> int:
        return int(self.llm.n_ctx())

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        # The template writes any BOS itself, as with the PyTorch engine.
        return self.tokens(self.tokens.render(messages), add_special_tokens=False)["input_ids"]

    def run_alone(self, prompt: Any, sampling: Any, on_text: Callable[[str], None]) -> Any:
        """Generate one request; `prompt` is chat messages or plain text. Text goes to `on_text` piece by piece."""
        import llama_cpp

        from tailorlm.serving.engine import Answer

        ids = self.encode_chat(prompt) if isinstance(prompt, list) else self.tokens(prompt)["input_ids"]
        self.llm.set_seed(sampling.seed if sampling.seed is not None else random.getrandbits(32))
        text = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span tokens
        parts: list[str] = []
        count, reason = 0, "length"
        tokens = self.llm.generate(ids, top_k=0, top_p=sampling.top_p, min_p=0.0, temp=sampling.temperature,
                                   repeat_penalty=1.0)
        try:
            for token in tokens:
                if llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token):
                    reason = "stop"
                    break
                count += 1
                piece = text.decode(self.llm.detokenize([token], special=False))
                if piece:
                    parts.append(piece)
                on_text(piece)  # also with no text yet: the time limit and a client gone are checked each token
                if count >= sampling.max_tokens:
                    break
        finally:
            tokens.close()  # a request stopped early (stop string, time limit, client gone) ends here
        rest = text.decode(b"", final=True)
        if rest:
            parts.append(rest)
            on_text(rest)
        return Answer("".join(parts), count, reason)


def load_gguf(path: str | Path, *, threads: int | None = None) -> GgufModel:
    """Open a GGUF file with llama-cpp-python (which must be installed) on the CPU."""
    from llama_cpp import Llama

    path = Path(path)
    if not path.is_file():
        raise ModelError("no such GGUF file", where=str(path), expected="a .gguf file")
    context = min(_trained_context(path) or MAX_CONTEXT, MAX_CONTEXT)
    try:
        llm = Llama(model_path=str(path), n_ctx=context, n_threads=threads or _threads(),
                    n_threads_batch=threads or _threads(), verbose=False)
    except (ValueError, RuntimeError) as err:
        raise ModelError("llama.cpp cannot load this GGUF file", where=str(path), found=str(err).splitlines()[0],
                         expected="a GGUF model file that llama.cpp reads (`tailor export --format gguf` writes one)"
                         ) from None
    return GgufModel(path=path, llm=llm, tokens=GgufTokens(llm))


def _trained_context(path: Path) -> int | None:
    """The context length the GGUF declares (`<architecture>.context_length`), if any."""
    try:
        import gguf

        reader = gguf.GGUFReader(str(path))
        arch_field = reader.fields.get("general.architecture")
        if arch_field is None:
            return None
        arch = bytes(arch_field.parts[arch_field.data[0]]).decode("utf-8")
        field = reader.fields.get(f"{arch}.context_length")
        return int(field.parts[field.data[0]][0]) if field is not None else None
    except Exception:  # noqa: BLE001 - llama.cpp gives the real error when the file is unreadable
        return None


def _threads() -> int:
    """The threads PyTorch would use (the physical cores), which is also llama.cpp's best setting on a CPU."""
    import torch

    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))
