"""The llama.cpp engine of `tailor serve` on a GGUF export of the tiny chat model (needs llama-cpp-python)."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tailorlm.serving.engine import Delta, Engine, Finished, Request, Sampling
from tailorlm.serving.specialists import LLAMA_CPP_MISSING, load_served

GREEDY = Sampling(max_tokens=12, temperature=0.0)
HELLO = [{"role": "user", "content": "hello, what is the capital of france?"}]


def test_a_gguf_file_without_llama_cpp_is_listed_as_unavailable_with_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if it were not installed: `import llama_cpp` fails
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    notes: list[str] = []
    table = load_served([str(path)], device="cpu", on_note=notes.append)
    assert table["model"].kind == "unavailable" and table["model"].reason == LLAMA_CPP_MISSING
    assert "pip install llama-cpp-python" in table["model"].reason and any("llama-cpp-python" in n for n in notes)


@pytest.fixture(scope="module")
def gguf_file(tiny_chat_dir: Path, tmp_path_factory) -> Path:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the optional llama.cpp engine)")
    from tailorlm.export import export

    return export(tiny_chat_dir, format="gguf", quant="f32", output=tmp_path_factory.mktemp("gguf") / "out").gguf_file


def run(served, prompt, sampling: Sampling, prompt_ids=()) -> tuple[str, Finished]:
    engine = Engine()
    parts: list[str] = []
    done: list[Finished] = []
    finished = threading.Event()

    def on_event(event):
        if isinstance(event, Delta):
            parts.append(event.text)
        else:
            done.append(event)
            finished.set()

    engine.submit(Request(served=served, sampling=sampling, on_event=on_event, prompt=prompt,
                          prompt_ids=list(prompt_ids)))
    assert finished.wait(60)
    engine.close()
    assert isinstance(done[0], Finished), done
    return "".join(parts), done[0]


def test_the_gguf_is_served_by_llama_cpp_with_its_own_tokenizer_and_chat_template(gguf_file, tiny_chat_dir):
    gguf = load_served([str(gguf_file)], device="cpu")[gguf_file.stem]
    torch_served = load_served([str(tiny_chat_dir)], device="cpu")[tiny_chat_dir.name]
    assert gguf.kind == "generate" and gguf.run_alone is not None and gguf.context == 256
    # The GGUF carries the tokenizer and the chat template: the prompt is the same tokens on both engines.
    assert gguf.encode_chat(HELLO) == torch_served.encode_chat(HELLO)
    assert gguf.encode_text("the fox") == torch_served.encode_text("the fox")

    ids = gguf.encode_chat(HELLO)
    text, end = run(gguf, HELLO, GREEDY, ids)
    assert end.reason in ("length", "stop") and 0 < end.completion_tokens <= 12 and end.prompt_tokens == len(ids)
    assert text == run(gguf, HELLO, GREEDY, ids)[0]  # greedy: the same answer twice
    # An f32 GGUF holds the model's own weights: llama.cpp's greedy answer is the PyTorch engine's, token for token.
    # (The random model writes stray byte tokens: both engines show each as U+FFFD.)
    torch_text, torch_end = run(torch_served, None, GREEDY, ids)
    assert (text, end) == (torch_text, torch_end)
    assert len(set(text)) > 3  # a real answer, not an empty or constant one


def test_stop_strings_seeds_and_max_tokens_mean_what_they_mean_on_the_pytorch_engine(gguf_file):
    gguf = load_served([str(gguf_file)], device="cpu")[gguf_file.stem]
    long = Sampling(max_tokens=30, temperature=0.0)
    text, end = run(gguf, "the quick brown fox", long)
    assert text and end.reason in ("length", "stop")
    short, end = run(gguf, "the quick brown fox", Sampling(max_tokens=3, temperature=0.0))
    assert end.reason == "length" and end.completion_tokens == 3 and text.startswith(short)
    stop = text[len(text) // 2: len(text) // 2 + 2]
    if stop.strip():
        cut, end = run(gguf, "the quick brown fox", Sampling(max_tokens=30, temperature=0.0, stop=(stop,)))
        assert cut == text[: text.find(stop)] and end.reason == "stop"
    sampled = [run(gguf, "the quick brown fox", Sampling(max_tokens=12, temperature=1.5, seed=seed))[0]
               for seed in (7, 7, 8)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]


@contextlib.contextmanager
def serving(specs: list[str], **options) -> Iterator[Any]:
    """`tailor serve` on a free local port in a thread; yields an `openai` client for it."""
    import openai

    from tailorlm.serving import bind, build_server

    sock = bind("127.0.0.1", 0)
    server = build_server(specs, sock=sock, device="cpu", log_level="warning", **options)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}/v1", api_key="x", max_retries=0)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def test_the_server_answers_for_the_gguf_beside_a_pytorch_model(gguf_file, tiny_chat_dir):
    import openai

    with serving([f"gguf={gguf_file}", f"torch={tiny_chat_dir}"], weights="fp32") as api:
        assert sorted(m.id for m in api.models.list().data) == ["gguf", "torch"]
        replies = {name: api.chat.completions.create(model=name, messages=HELLO, max_tokens=12, temperature=0)
                   for name in ("gguf", "torch")}
        assert replies["gguf"].choices[0].message.content == replies["torch"].choices[0].message.content
        assert replies["gguf"].usage == replies["torch"].usage
        streamed = api.chat.completions.create(model="gguf", messages=HELLO, max_tokens=12, temperature=0, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == \
            replies["gguf"].choices[0].message.content
        with pytest.raises(openai.BadRequestError) as err:
            api.chat.completions.create(model="gguf", messages=HELLO, max_tokens=1000)
        assert err.value.response.json()["error"]["code"] == "context_length_exceeded"


def test_a_gguf_without_a_chat_template_answers_completions_and_refuses_chat_with_400(tiny_llama_dir, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the optional llama.cpp engine)")
    import openai

    from tailorlm.export import export

    plain = export(tiny_llama_dir, format="gguf", quant="f32", output=tmp_path / "plain").gguf_file
    with serving([f"plain={plain}"]) as api:
        with pytest.raises(openai.BadRequestError) as err:
            api.chat.completions.create(model="plain", messages=HELLO, max_tokens=4)
        assert "tokenizer.chat_template" in err.value.response.json()["error"]["message"]
        reply = api.completions.create(model="plain", prompt="the quick brown fox", max_tokens=4, temperature=0)
        assert reply.usage.completion_tokens <= 4 and reply.choices[0].finish_reason in ("length", "stop")
