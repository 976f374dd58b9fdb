"""Two scripted turns of `tailor chat` with the built-in smollm2-135m-instruct (greedy, short answers): the second
prompt carries the first exchange, and what the terminal shows is the streamed answers."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from tailorlm.chat import open_chat, run_chat

pytestmark = pytest.mark.integration


def test_two_turns_keep_the_first_exchange_in_the_second_prompt() -> None:
    chat = open_chat("smollm2-135m-instruct", system="You are a helpful assistant.", max_new_tokens=16, device="cpu")
    assert chat.context == 8192 and chat.temperature == 0.0
    script = ["What is the capital of France?", "And what river flows through it?"]
    prompts: list[str] = []  # the prompt the model was last given, seen before each line is read

    def read(prompt: str) -> str:
        prompts.append(chat.last_prompt)
        if not script:
            raise EOFError  # as Ctrl-D
        return script.pop(0)

    out = io.StringIO()
    assert run_chat(chat, read=read, console=Console(file=out, force_terminal=False, width=200)) == 0

    assert [m["role"] for m in chat.history] == ["user", "assistant", "user", "assistant"]
    first_answer, second_answer = chat.history[1]["content"], chat.history[3]["content"]
    assert "paris" in first_answer.lower()
    first_prompt, second_prompt = prompts[1], prompts[2]
    assert first_prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    assert second_prompt.startswith(first_prompt + first_answer + "<|im_end|>\n")
    assert second_prompt.endswith("<|im_start|>user\nAnd what river flows through it?<|im_end|>\n"
                                  "<|im_start|>assistant\n")
    assert out.getvalue() == f"{first_answer}\n{second_answer}\n\n"  # the last newline ends the line Ctrl-D left
