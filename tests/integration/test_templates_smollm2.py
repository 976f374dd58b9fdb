"""Loss masks with the real SmolLM2-135M-Instruct tokenizer and its template (which injects a default system prompt)."""

from __future__ import annotations

import pytest

from tailorlm.data.templates import (
    IGNORE_INDEX,
    end_of_turn_token,
    ensure_chat_template,
    format_trained_spans,
    render_chat,
    tokenize_chat,
)

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def smollm2():
    """The built-in pack's tokenizer, as tailorlm saves it (pulled into the cache once)."""
    from tailorlm.models.load import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct", progress=False)


QUESTION = {"role": "user", "content": "What is the capital of France?"}
ANSWER = {"role": "assistant", "content": "Paris"}


def trained(tok, chat) -> str:
    return tok.decode([label for label in chat.labels if label != IGNORE_INDEX], clean_up_tokenization_spaces=False)


def test_smollm2_has_its_own_template_and_closes_turns_with_im_end(smollm2):
    assert ensure_chat_template(smollm2) is False
    assert end_of_turn_token(smollm2) == "<|im_end|>"


def test_smollm2_injected_system_prompt_and_header_are_not_trained(smollm2):
    chat = tokenize_chat(smollm2, [QUESTION, ANSWER])
    system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM"
    assert render_chat(smollm2, [QUESTION]).startswith(system)
    assert trained(smollm2, chat) == "Paris<|im_end|>"
    assert format_trained_spans(smollm2, chat).endswith("<|im_start|>assistant\n[[Paris<|im_end|>]]\n")
    # the same ids as Hugging Face's own tokenization of the template (no doubled BOS or special tokens)
    assert chat.input_ids == list(smollm2.apply_chat_template([QUESTION, ANSWER], tokenize=True)["input_ids"])
    # what inference feeds the model is exactly the untrained prefix of a training example
    prompt = list(smollm2.apply_chat_template([QUESTION], add_generation_prompt=True, tokenize=True)["input_ids"])
    assert chat.input_ids[: len(prompt)] == prompt
    assert all(label == IGNORE_INDEX for label in chat.labels[: len(prompt)])
    assert chat.labels[len(prompt)] != IGNORE_INDEX


def test_smollm2_multi_turn_with_system_and_leading_space(smollm2):
    messages = [
        {"role": "system", "content": "Answer in one word."},
        QUESTION,
        ANSWER,
        {"role": "user", "content": "And Germany?"},
        {"role": "assistant", "content": "  Berlin"},
    ]
    chat = tokenize_chat(smollm2, messages)
    # the real tokenizer merges the header's "\n" with the first of two leading spaces ("ĊĠ"); that token is untrained
    assert trained(smollm2, chat) == "Paris<|im_end|> Berlin<|im_end|>"
    assert chat.assistant_turns == chat.turns_ending_with_eot == 2
    assert "SmolLM" not in smollm2.decode(chat.input_ids)
