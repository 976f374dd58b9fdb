"""Chat rendering and assistant-only loss masks, checked token by token on three template shapes."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tailorlm.data.examples import Origin
from tailorlm.data.templates import (
    CHATML_TEMPLATE,
    IGNORE_INDEX,
    TokenizedChat,
    end_of_turn_token,
    ensure_chat_template,
    format_trained_spans,
    render_chat,
    tokenize_chat,
    tokenize_text,
)
from tailorlm.errors import ConfigError, DataError, ModelError

# Meta's Llama-3 Instruct template: BOS rendered by the template, content trimmed, <|eot_id|> closes every turn.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# HuggingFaceH4/zephyr-7b-beta's template, newlines and all: turns end with eos_token (</s>) and a newline.
ZEPHYR_TEMPLATE = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""
# Microsoft's Phi-3 template: eos_token closes the text unless a generation prompt follows.
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
# SmolLM2's shape: ChatML with a default system prompt injected when the conversation has none.
DEFAULT_SYSTEM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QUESTION = {"role": "user", "content": "What is the capital of France?"}
ANSWER = {"role": "assistant", "content": "Paris"}
MULTI_TURN = [
    {"role": "system", "content": "Answer briefly."},
    QUESTION,
    ANSWER,
    {"role": "user", "content": "And the capital of Germany?"},
    {"role": "assistant", "content": "Berlin, of course."},
]


def with_template(tokenizer, template: str, tokens: list[str], **special: str):
    """Give the tiny tokenizer another template, its control tokens and special-token names."""
    tokenizer.add_special_tokens({"extra_special_tokens": tokens}, replace_extra_special_tokens=False)
    if special:
        tokenizer.add_special_tokens(special)
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture
def chatml(tokenizer):
    ensure_chat_template(tokenizer)
    return tokenizer


@pytest.fixture
def llama3(tokenizer):
    tokens = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok = with_template(tokenizer, LLAMA3_TEMPLATE, tokens, bos_token="<|begin_of_text|>")
    # Like the real Llama-3 tokenizer, plain tokenization adds BOS; the chat path must not add a second one.
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    return tok


@pytest.fixture
def phi3(tokenizer):
    return with_template(tokenizer, PHI3_TEMPLATE, ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"])


@pytest.fixture
def merging():
    """ChatML on a tokenizer that merges the header's newline with whitespace that opens an answer."""
    tok = small_bpe(["assistant\n  Paris is\n\n\t nice\n \n\n\n"], ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    ensure_chat_template(tok)
    return tok


@pytest.fixture
def zephyr(tokenizer):
    return with_template(tokenizer, ZEPHYR_TEMPLATE, ["<|user|>", "<|assistant|>", "<|system|>"], eos_token="</s>")


def trained_text(tok, chat: TokenizedChat) -> str:
    return tok.decode([label for label in chat.labels if label != IGNORE_INDEX], clean_up_tokenization_spaces=False)


def trained_runs(chat: TokenizedChat) -> list[list[int]]:
    runs: list[list[int]] = []
    for k, label in enumerate(chat.labels):
        if label != IGNORE_INDEX:
            if not runs or runs[-1][-1] != k - 1:
                runs.append([])
            runs[-1].append(k)
    return runs


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def small_bpe(corpus: list[str], special: list[str]) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus * 8, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=special[0])


# --- ensure_chat_template -------------------------------------------------------------------------------------------


def test_chatml_default_is_installed_only_when_missing(tokenizer):
    assert tokenizer.chat_template is None
    assert ensure_chat_template(tokenizer) is True
    assert tokenizer.chat_template == CHATML_TEMPLATE
    assert render_chat(tokenizer, [QUESTION, ANSWER]) == (
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis<|im_end|>\n"
    )
    prompt = render_chat(tokenizer, [QUESTION], add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert ensure_chat_template(tokenizer) is False
    tokenizer.chat_template = ZEPHYR_TEMPLATE
    assert ensure_chat_template(tokenizer) is False
    assert tokenizer.chat_template == ZEPHYR_TEMPLATE


def test_default_template_adds_missing_chatml_tokens_and_is_saved(tmp_path):
    tok = small_bpe(["plain text without any chat tokens"], ["<|endoftext|>"])
    size = len(tok)
    assert len(ids(tok, "<|im_end|>")) > 1

    assert ensure_chat_template(tok) is True
    assert len(tok) == size + 2  # the caller must resize the model's embeddings to len(tok)
    assert len(ids(tok, "<|im_start|>")) == 1 and len(ids(tok, "<|im_end|>")) == 1
    assert end_of_turn_token(tok) == "<|im_end|>"

    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.chat_template == CHATML_TEMPLATE
    assert ensure_chat_template(reloaded) is False
    conversation = [QUESTION, ANSWER]
    assert tokenize_chat(reloaded, conversation) == tokenize_chat(tok, conversation)


def test_without_a_template_rendering_says_how_to_get_one(tokenizer):
    with pytest.raises(ModelError, match="no chat template.*ensure_chat_template"):
        render_chat(tokenizer, [QUESTION])


# --- end_of_turn_token ----------------------------------------------------------------------------------------------


def test_end_of_turn_token_chatml(chatml):
    assert end_of_turn_token(chatml) == "<|im_end|>"


def test_end_of_turn_token_llama3(llama3):
    assert end_of_turn_token(llama3) == "<|eot_id|>"


def test_end_of_turn_token_zephyr(zephyr):
    assert end_of_turn_token(zephyr) == "</s>"


def test_template_without_an_end_of_turn_token_is_reported(tokenizer):
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ModelError, match="cannot learn to stop"):
        end_of_turn_token(tokenizer)
    chat = tokenize_chat(tokenizer, [QUESTION, ANSWER])
    assert chat.assistant_turns == 1 and chat.turns_ending_with_eot == 0
    assert trained_text(tokenizer, chat) == "assistant: Paris"  # no generation prompt: the model writes the header


# --- masks: exact positions -----------------------------------------------------------------------------------------


def test_single_turn_chatml_trains_exactly_the_answer_and_end_of_turn(chatml):
    chat = tokenize_chat(chatml, [QUESTION, ANSWER])
    tokens = chatml.convert_ids_to_tokens(chat.input_ids)
    assert tokens == ["<|im_start|>", "user", "Ċ", "What", "Ġis", "Ġthe", "Ġcapital", "Ġof", "ĠFrance", "?",
                      "<|im_end|>", "Ċ", "<|im_start|>", "as", "sis", "tan", "t", "Ċ",
                      "Par", "is", "<|im_end|>", "Ċ"]
    answer = ids(chatml, "Paris") + ids(chatml, "<|im_end|>")
    assert chat.labels == [IGNORE_INDEX] * 18 + answer + [IGNORE_INDEX]
    assert len(chat.labels) == len(chat.input_ids) == chat.length == 22
    assert trained_text(chatml, chat) == "Paris<|im_end|>"
    assert (chat.assistant_turns, chat.turns_ending_with_eot, chat.truncated) == (1, 1, False)
    assert chat.trained_tokens == 3


def test_multi_turn_trains_every_answer_and_nothing_else(chatml):
    chat = tokenize_chat(chatml, MULTI_TURN)
    assert trained_text(chatml, chat) == "Paris<|im_end|>Berlin, of course.<|im_end|>"
    text = render_chat(chatml, MULTI_TURN)
    assert chatml.decode(chat.input_ids) == text
    runs = trained_runs(chat)
    assert len(runs) == 2
    for run, answer in zip(runs, ["Paris", "Berlin, of course."]):
        assert [chat.input_ids[k] for k in run] == ids(chatml, answer) + ids(chatml, "<|im_end|>")
        # the token just before each run is the header's newline, which is not trained
        assert chatml.convert_ids_to_tokens(chat.input_ids[run[0] - 1]) == "Ċ"
    untrained = [t for t, label in zip(chat.input_ids, chat.labels) if label == IGNORE_INDEX]
    assert "Answer briefly." in chatml.decode(untrained) and "Germany" in chatml.decode(untrained)
    assert chat.assistant_turns == chat.turns_ending_with_eot == 2


def test_train_on_last_assistant_and_all(chatml):
    last = tokenize_chat(chatml, MULTI_TURN, train_on="last_assistant")
    assert trained_text(chatml, last) == "Berlin, of course.<|im_end|>"
    everything = tokenize_chat(chatml, MULTI_TURN, train_on="all")
    assert everything.labels == everything.input_ids
    with pytest.raises(ConfigError, match="train_on"):
        tokenize_chat(chatml, MULTI_TURN, train_on="assistants")


def test_llama3_bos_once_content_trimmed_eot_trained(llama3):
    assert llama3("hi")["input_ids"][0] == llama3.bos_token_id  # plain tokenization would add BOS
    messages = [QUESTION, {"role": "assistant", "content": "  Paris \n"}, {"role": "user", "content": "Sure?"},
                {"role": "assistant", "content": "Yes."}]
    chat = tokenize_chat(llama3, messages)
    assert chat.input_ids.count(llama3.bos_token_id) == 1 and chat.input_ids[0] == llama3.bos_token_id
    assert trained_text(llama3, chat) == "Paris<|eot_id|>Yes.<|eot_id|>"
    header = ids(llama3, "<|start_header_id|>assistant<|end_header_id|>\n\n")
    first = trained_runs(chat)[0]
    assert chat.input_ids[first[0] - len(header):first[0]] == header
    assert all(chat.labels[k] == IGNORE_INDEX for k in range(first[0]))
    assert chat.turns_ending_with_eot == 2


def test_zephyr_trains_answer_and_eos_not_the_trailing_newline(zephyr):
    chat = tokenize_chat(zephyr, [{"role": "system", "content": "Be brief."}, QUESTION, ANSWER])
    assert render_chat(zephyr, [QUESTION, ANSWER]).endswith("<|assistant|>\nParis</s>\n")
    assert trained_text(zephyr, chat) == "Paris</s>"
    assert chat.labels[-1] == IGNORE_INDEX and zephyr.convert_ids_to_tokens(chat.input_ids[-1]) == "Ċ"
    assert chat.turns_ending_with_eot == 1


def test_injected_default_system_prompt_is_never_trained(tokenizer):
    tok = with_template(tokenizer, DEFAULT_SYSTEM_TEMPLATE, [])
    assert render_chat(tok, [QUESTION]).startswith("<|im_start|>system\nYou are a helpful assistant<|im_end|>")
    chat = tokenize_chat(tok, [QUESTION, ANSWER, {"role": "user", "content": "Germany?"},
                               {"role": "assistant", "content": "Berlin"}])
    assert trained_text(tok, chat) == "Paris<|im_end|>Berlin<|im_end|>"
    # An assistant turn first: rendering no messages injects no system prompt, so the prefix rule cannot apply.
    greeting = tokenize_chat(tok, [{"role": "assistant", "content": "Hello! Ask me anything."}, QUESTION, ANSWER])
    assert trained_text(tok, greeting) == "Hello! Ask me anything.<|im_end|>Paris<|im_end|>"
    assert "helpful" not in trained_text(tok, greeting)


def test_phi3_assistant_first_and_closing_eos(phi3):
    tok = phi3
    assert end_of_turn_token(tok) == "<|end|>"
    chat = tokenize_chat(tok, [{"role": "assistant", "content": "Hello!"}, QUESTION, ANSWER])
    assert render_chat(tok, [QUESTION, ANSWER]).endswith("<|assistant|>\nParis<|end|>\n<|endoftext|>")
    assert trained_text(tok, chat) == "Hello!<|end|>Paris<|end|>"
    assert chat.turns_ending_with_eot == 2


def test_token_straddling_header_and_answer_is_not_trained():
    """A token is trained when its first character is inside the answer; one that starts in the header is not."""
    tok = small_bpe(["assistant\n  Paris is\n  nice"], ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    ensure_chat_template(tok)
    chat = tokenize_chat(tok, [{"role": "user", "content": "Paris?"}, {"role": "assistant", "content": "  Paris"}])
    tokens = tok.convert_ids_to_tokens(chat.input_ids)
    # the header's "\n" and the answer's first space merge into "ĊĠ" (SmolLM2's real tokenizer does the same)
    assert tokens[-5:] == ["assistant", "ĊĠ", "ĠParis", "<|im_end|>", "Ċ"]
    assert chat.labels == [IGNORE_INDEX] * (len(tokens) - 3) + chat.input_ids[-3:-1] + [IGNORE_INDEX]
    assert trained_text(tok, chat) == " Paris<|im_end|>"


def test_answer_that_repeats_the_question_is_located_in_its_own_turn(chatml):
    messages = [{"role": "user", "content": "Paris"}, {"role": "assistant", "content": "Paris"},
                {"role": "user", "content": "Paris"}, {"role": "assistant", "content": ""}]
    chat = tokenize_chat(chatml, messages)
    assert trained_text(chatml, chat) == "Paris<|im_end|><|im_end|>"
    assert chat.turns_ending_with_eot == 2


# --- truncation, text, display --------------------------------------------------------------------------------------


def test_truncation_cuts_from_the_right(chatml):
    full = tokenize_chat(chatml, MULTI_TURN)
    cut = tokenize_chat(chatml, MULTI_TURN, max_length=20)
    assert cut.truncated and not full.truncated
    assert cut.input_ids == full.input_ids[:20] and cut.labels == full.labels[:20]
    assert cut.length == full.length > 20
    same = tokenize_chat(chatml, MULTI_TURN, max_length=full.length)
    assert not same.truncated and same == full
    with pytest.raises(ConfigError, match="max_length"):
        tokenize_chat(chatml, MULTI_TURN, max_length=0)


def test_tokenize_text_trains_every_token_and_appends_eos(tokenizer):
    text = tokenize_text(tokenizer, "The quick brown fox")
    assert text.input_ids == ids(tokenizer, "The quick brown fox") + [tokenizer.eos_token_id]
    assert text.labels == text.input_ids
    cut = tokenize_text(tokenizer, "The quick brown fox", max_length=2)
    assert cut.truncated and cut.input_ids == text.input_ids[:2] and cut.length == text.length
    with pytest.raises(DataError, match="text must be a string"):
        tokenize_text(tokenizer, None, where="a.jsonl, row 1")  # type: ignore[arg-type]


def test_format_trained_spans_marks_each_answer(chatml):
    shown = format_trained_spans(chatml, tokenize_chat(chatml, MULTI_TURN))
    assert shown == (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n[[Paris<|im_end|>]]\n<|im_start|>user\nAnd the capital of Germany?<|im_end|>\n"
        "<|im_start|>assistant\n[[Berlin, of course.<|im_end|>]]\n"
    )
    assert format_trained_spans(chatml, tokenize_chat(chatml, [QUESTION, ANSWER]), open_mark="<<", close_mark=">>") \
        .endswith("assistant\n<<Paris<|im_end|>>>\n")


# --- bad input ------------------------------------------------------------------------------------------------------

WHERE = str(Origin("data/chat.jsonl", 3))


@pytest.mark.parametrize(
    ("messages", "key", "found"),
    [
        ([QUESTION, {"role": "bot", "content": "Paris"}], "messages[1].role", "'bot'"),
        ([{"content": "hi"}, ANSWER], "messages[0].role", "None"),
        ([QUESTION, {"role": "assistant", "content": None}], "messages[1].content", "NoneType None"),
        ([QUESTION, {"role": "assistant", "content": ["Paris"]}], "messages[1].content", "list ['Paris']"),
        ([QUESTION, {"role": "assistant"}], "messages[1].content", "no content"),
        ([QUESTION, "Paris"], "messages[1]", "'Paris'"),
        ([], "messages", "list []"),
        ([QUESTION], "messages", "roles user"),
    ],
)
def test_bad_messages_name_the_origin_key_and_value(chatml, messages, key, found):
    with pytest.raises(DataError) as error:
        tokenize_chat(chatml, messages, where=WHERE)
    message = str(error.value)
    assert message.startswith("data/chat.jsonl, row 3: ")
    assert f"(key {key!r})" in message and f"found {found}" in message
    assert error.value.key == key


def test_prompt_only_conversation_renders_and_trains_with_all(chatml):
    assert render_chat(chatml, [QUESTION], add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    assert tokenize_chat(chatml, [QUESTION], train_on="all").trained_tokens > 0


def test_template_refusal_becomes_a_data_error(tokenizer):
    tokenizer.chat_template = (
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}{{ m['content'] }}</s>{% endfor %}"
    )
    with pytest.raises(DataError, match=r"row 3: the chat template refused.*roles must alternate"):
        tokenize_chat(tokenizer, [QUESTION, QUESTION, ANSWER], where=WHERE)


# --- property: the trained text is the answers --------------------------------------------------------------------

TEXT = st.text(alphabet=st.sampled_from(string.printable + "éß漢字😀"), max_size=40)


@st.composite
def conversations(draw):
    messages = [{"role": "system", "content": draw(TEXT)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 4))):
        messages += [{"role": "user", "content": draw(TEXT)}, {"role": "assistant", "content": draw(TEXT)}]
    return messages


@pytest.mark.parametrize("shape", ["chatml", "merging", "llama3", "zephyr", "phi3"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=conversations())
def test_trained_tokens_decode_to_the_answers(request, shape, messages):
    """Each assistant turn trains one run of tokens that decodes to its content plus the end-of-turn token, except
    that leading whitespace of the content may merge into the header's last token and then stays untrained."""
    tok = request.getfixturevalue(shape)
    eot = end_of_turn_token(tok)
    assume(not any(eot in m["content"] or "<|" in m["content"] for m in messages))
    chat = tokenize_chat(tok, messages)
    assert len(chat.labels) == len(chat.input_ids) == chat.length
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(chat.labels, chat.input_ids))
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    runs = trained_runs(chat)
    assert len(runs) == len(answers) == chat.turns_ending_with_eot
    for run, answer in zip(runs, answers):
        target = (answer.strip() if shape == "llama3" else answer) + eot
        got = tok.decode([chat.input_ids[k] for k in run], clean_up_tokenization_spaces=False)
        assert target.endswith(got)
        assert target[: len(target) - len(got)].strip() == ""
        if not answer[:1].isspace():
            assert got == target
