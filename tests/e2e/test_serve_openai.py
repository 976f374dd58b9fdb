"""`tailor serve` end to end: the official `openai` client against a live server on a loopback port (tiny models)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

openai = pytest.importorskip("openai")

from tailorlm.errors import ConfigError  # noqa: E402
from tailorlm.serving import bind, build_server  # noqa: E402

KEY = "test-key"
CHAT = "tiny-chat"
EMBED = "tiny-embed"
HELLO = [{"role": "user", "content": "What is the capital of France?"}]


def sentence_encoder(folder: Path) -> Path:
    """A tiny random BERT saved as a sentence-transformers folder (mean pooling)."""
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # sentence-transformers before 5.x
        from sentence_transformers.models import Pooling, Transformer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz", "the", "fox", "paris"]
    hf = folder / "hf"
    hf.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(words), encoding="utf-8")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(hf)
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(hf)
    out = folder / "st"
    SentenceTransformer(modules=[Transformer(str(hf), max_seq_length=64), Pooling(32)]).save(str(out))
    return out


@contextlib.contextmanager
def live_server(specs: list[str], **options) -> Iterator[tuple[str, object]]:
    """A server on a free loopback port, run in a thread; yields (base URL, uvicorn server) and stops it after."""
    sock = bind("127.0.0.1", 0)
    server = build_server(specs, sock=sock, device="cpu", log_level="warning", **options)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def client(url: str, key: str = KEY) -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def models_dir(tiny_chat_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {"chat": tiny_chat_dir,
            "embed": sentence_encoder(tmp_path_factory.mktemp("embed"))}


@pytest.fixture(scope="module")
def url(models_dir) -> Iterator[str]:
    specs = [f"{CHAT}={models_dir['chat']}", f"{EMBED}={models_dir['embed']}"]
    with live_server(specs, api_key=KEY, max_queue=32, max_batch=8) as (base, _):
        yield base


def slowed(server, name: str, seconds: float):
    """Make every forward pass of a served model take at least `seconds` (a loaded server, in this process)."""
    model = server.config.app.state.served[name].model
    return model.register_forward_pre_hook(lambda *args: time.sleep(seconds))


def test_models_lists_every_served_name(url):
    assert sorted(m.id for m in client(url).models.list().data) == [CHAT, EMBED]


def test_chat_completion_and_its_stream_say_the_same(url):
    api = client(url)
    reply = api.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=12, temperature=0)
    text = reply.choices[0].message.content
    assert text and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("length", "stop")
    assert reply.usage.completion_tokens <= 12 and reply.usage.prompt_tokens > 5
    chunks = list(api.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=12, temperature=0, stream=True,
                                              stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reply.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


def test_a_stream_is_server_sent_events_ending_with_done(url):
    body = {"model": CHAT, "messages": HELLO, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


def test_seed_and_stop(url):
    api = client(url)
    sample = dict(model=CHAT, messages=HELLO, max_tokens=16, temperature=1.0, seed=5)
    first = api.chat.completions.create(**sample).choices[0].message.content
    assert api.chat.completions.create(**sample).choices[0].message.content == first
    greedy = api.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=16, temperature=0).choices[0]
    stop = greedy.message.content[4:7]
    cut = api.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=16, temperature=0, stop=[stop]).choices[0]
    assert cut.message.content == greedy.message.content[: greedy.message.content.find(stop)]
    assert cut.finish_reason == "stop"


def test_completion(url):
    reply = client(url).completions.create(model=CHAT, prompt="The quick brown fox", max_tokens=6, temperature=0)
    assert reply.choices[0].text and reply.usage.completion_tokens == 6 and reply.choices[0].finish_reason == "length"
    streamed = client(url).completions.create(model=CHAT, prompt="The quick brown fox", max_tokens=6, temperature=0,
                                              stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text


def test_embeddings_are_the_encoders_unit_vectors(url, models_dir):
    from tailorlm.retrieval.embeddings import Embedder

    texts = ["the fox", "paris"]
    reply = client(url).embeddings.create(model=EMBED, input=texts)
    vectors = np.array([d.embedding for d in reply.data], dtype=np.float32)
    assert vectors.shape == (2, 32)
    np.testing.assert_allclose(vectors, Embedder(str(models_dir["embed"]), device="cpu").embed(texts), atol=1e-5)
    as_floats = client(url).embeddings.create(model=EMBED, input="paris", encoding_format="float").data[0].embedding
    np.testing.assert_allclose(as_floats, vectors[1], atol=1e-5)


def error_of(call) -> tuple[int, dict]:
    with pytest.raises(openai.APIStatusError) as err:
        call()
    body = err.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return err.value.status_code, body["error"]


def test_unknown_model_is_404(url):
    status, error = error_of(lambda: client(url).chat.completions.create(model="nope", messages=HELLO))
    assert status == 404 and error["code"] == "model_not_found" and CHAT in error["message"]


@pytest.mark.parametrize("options, param", [
    ({"max_tokens": 10_000}, "max_tokens"),
    ({"temperature": 5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 2}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
])
def test_invalid_parameters_are_400(url, options, param):
    status, error = error_of(lambda: client(url).chat.completions.create(model=CHAT, messages=HELLO, **options))
    assert status == 400 and error["param"] == param


def test_a_body_that_is_not_json_is_400_and_the_server_keeps_serving(url):
    r = httpx.post(f"{url}/v1/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(f"{url}/v1/embeddings", json={"model": CHAT, "input": "x"}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400
    assert client(url).chat.completions.create(model=CHAT, messages=HELLO, max_tokens=2, temperature=0).choices[0].message.content


def test_api_key_is_required_on_every_route_but_health(url):
    status, error = error_of(lambda: client(url, key="wrong").models.list())
    assert status == 401 and error["code"] == "invalid_api_key"
    assert httpx.post(f"{url}/v1/embeddings", json={"model": EMBED, "input": "x"}).status_code == 401
    health = httpx.get(f"{url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_eight_concurrent_streams_each_answer_as_the_same_request_alone(models_dir):
    def stream(i: int) -> tuple[str, str, int]:
        chunks = client(base).chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": f"Question number {i}?"}], max_tokens=24,
            temperature=0, stream=True, stream_options={"include_usage": True})
        text, reason, tokens = "", None, None
        for chunk in chunks:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                reason = chunk.choices[0].finish_reason or reason
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return text, reason, tokens

    with live_server([f"{CHAT}={models_dir['chat']}"], max_batch=8) as (base, server):
        hook = slowed(server, CHAT, 0.01)  # long enough for the eight streams to overlap
        running: list[int] = []
        watching = threading.Event()

        def watch() -> None:
            while not watching.is_set():
                running.append(httpx.get(f"{base}/health").json()["running"])
                time.sleep(0.005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with ThreadPoolExecutor(8) as pool:
                together = list(pool.map(stream, range(8)))
        finally:
            watching.set()
            watcher.join()
        alone = [stream(i) for i in range(8)]
        hook.remove()
    assert max(running) > 1  # the streams were generated in one batch, not one after another
    # Greedy in fp32: a row's logits do not depend on the other rows or on left padding (masked positions get exactly
    # zero attention), so each stream's text, finish reason and token count equal the request's alone.
    assert together == alone
    assert len({text for text, _, _ in alone}) == 8  # eight different answers: equality is not trivial
    assert all(reason in ("length", "stop") and 0 < tokens <= 24 for _, reason, tokens in alone)


def test_a_full_queue_answers_429_and_the_server_recovers(models_dir):
    with live_server([f"{CHAT}={models_dir['chat']}"], max_queue=1, max_batch=1) as (base, server):
        hook = slowed(server, CHAT, 0.05)

        def ask(i: int):
            try:
                client(base).chat.completions.create(model=CHAT, messages=HELLO, max_tokens=10, temperature=0)
                return 200
            except openai.APIStatusError as err:
                return err.status_code, err.response.json()["error"]

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(ask, range(6)))
        hook.remove()
        refused = [r for r in results if r != 200]
        assert results.count(200) >= 1 and refused  # one runs, one may wait in the queue, the rest are refused
        assert all(status == 429 and error["code"] == "queue_full" for status, error in refused)
        assert client(base).chat.completions.create(model=CHAT, messages=HELLO, max_tokens=2, temperature=0).choices[0].message.content


def test_a_request_over_the_time_limit_is_504_or_a_timeout_finish(models_dir):
    with live_server([f"{CHAT}={models_dir['chat']}"], timeout=0.3) as (base, server):
        hook = slowed(server, CHAT, 0.05)
        status, error = error_of(lambda: client(base).chat.completions.create(
            model=CHAT, messages=HELLO, max_tokens=100, temperature=0))
        assert status == 504 and error["code"] == "timeout"
        # Greedy, as above: the same answer runs past the limit. (Sampled, the tiny random model may end its answer
        # within the first few tokens, before the limit: then "stop" is right and the test would say nothing.)
        chunks = list(client(base).chat.completions.create(model=CHAT, messages=HELLO, max_tokens=100, temperature=0,
                                                           stream=True))
        assert chunks[-1].choices[0].finish_reason == "timeout"
        hook.remove()


def test_shutdown_stops_listening_and_finishes_the_request_in_flight_in_full(models_dir):
    request = dict(model=CHAT, messages=HELLO, max_tokens=20, temperature=0)
    with live_server([f"{CHAT}={models_dir['chat']}"]) as (base, server):
        expected = client(base).chat.completions.create(**request)  # the same request, undisturbed
        assert expected.choices[0].finish_reason == "length" and expected.usage.completion_tokens == 20
        gate = threading.Event()
        # Hold generation mid-flight until the gate opens (`and None`: a hook's non-None result replaces the inputs).
        hook = server.config.app.state.served[CHAT].model.register_forward_pre_hook(
            lambda *args: gate.wait(30) and None)
        try:
            with ThreadPoolExecutor(1) as pool:
                future = pool.submit(lambda: client(base).chat.completions.create(**request))
                deadline = time.monotonic() + 20
                while httpx.get(f"{base}/health").json()["running"] == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
                server.should_exit = True  # what Ctrl-C does
                refused = False
                while not refused and time.monotonic() < deadline:
                    try:
                        httpx.get(f"{base}/health", timeout=2)
                        time.sleep(0.05)
                    except httpx.ConnectError:
                        refused = True
                assert refused, "a shutting-down server must stop taking connections"
                assert not future.done()  # the request in flight was neither answered nor cut off
                gate.set()
                reply = future.result(30)
        finally:
            gate.set()
            hook.remove()
    # Shutdown drains: the request in flight is generated in full, as if nothing had happened, not cancelled.
    assert reply.choices[0].message.content == expected.choices[0].message.content
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 20


def test_a_port_in_use_is_a_clear_error_before_loading(capsys):
    from tailorlm.cli import main

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ConfigError, match="choose another with --port"):
            bind("127.0.0.1", port)
        assert main(["serve", "no-such-model-anywhere", "--port", str(port)]) == 2
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "--port" in err and "no-such-model" not in err


@pytest.mark.integration
def test_the_built_in_packs_chat_and_embed_through_the_server():
    from tailorlm.models.generate import generate
    from tailorlm.models.load import load_model
    from tailorlm.retrieval.embeddings import Embedder

    question = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    with live_server(["smollm2-135m-instruct", "minilm-l6"], api_key=KEY) as (base, _):
        api = client(base)
        reply = api.chat.completions.create(model="smollm2-135m-instruct", messages=question, max_tokens=16,
                                            temperature=0)
        vector = api.embeddings.create(model="minilm-l6", input="Paris is the capital of France.").data[0].embedding
    model, tokenizer = load_model("smollm2-135m-instruct", device="cpu")
    assert reply.choices[0].message.content == generate(model, tokenizer, question, max_new_tokens=16)
    assert "Paris" in reply.choices[0].message.content
    expected = Embedder("minilm-l6", device="cpu", dtype="float32").embed(["Paris is the capital of France."])[0]
    assert len(vector) == 384
    np.testing.assert_allclose(vector, expected, atol=2e-2)
