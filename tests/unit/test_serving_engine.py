"""The serving engine on a tiny random Llama: batched decoding equals one-at-a-time, seeds, stop strings, shared bases."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from tailorlm.serving.engine import (Delta, Engine, EngineClosed, Failed, Finished, QueueFull, Request, Sampling,
                                     StopText, decode_batch)
from tailorlm.serving.specialists import load_served, parse_spec

PROMPTS = ["The quick brown fox", "What is the capital of France? Paris is", "hello", "Patients with diabetes should"]
EIGHT = [*PROMPTS, "The court held that the", "Shares rose 5% after", "thanks, please answer", "the lazy dog"]
GREEDY = Sampling(max_tokens=24, temperature=0.0)


def adapter_specialist(base_dir: Path, folder: Path, seed: int) -> Path:
    """A LoRA specialist folder over `base_dir` (random non-zero adapter weights), saved as `tailor train` saves one."""
    import peft
    from transformers import AutoTokenizer, LlamaForCausalLM

    from tailorlm.strategies.base import Manifest, save_specialist

    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base_dir)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                             init_lora_weights=False)
    model = peft.get_peft_model(model, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.5)
    manifest = Manifest(base_model=str(base_dir), base_model_path=str(base_dir), strategy="lora", objective="sft",
                        weights="adapter")
    save_specialist(folder, model, AutoTokenizer.from_pretrained(base_dir), manifest)
    return folder


@pytest.fixture(scope="module")
def lively_dir(tiny_chat_dir: Path) -> Path:
    return tiny_chat_dir


@pytest.fixture(scope="module")
def served(lively_dir: Path):
    return load_served([str(lively_dir)], device="cpu")[lively_dir.name]


def run(served, prompts, samplings) -> list[tuple[str, Finished, list[str]]]:
    """Decode `prompts` as one batch; per prompt the joined text, its Finished event and the pieces."""
    pieces: list[list[str]] = [[] for _ in prompts]
    done: list = [None] * len(prompts)

    def sink(i):
        def on_event(event):
            if isinstance(event, Delta):
                pieces[i].append(event.text)
            else:
                done[i] = event
        return on_event

    requests = [Request(served=served, sampling=s, on_event=sink(i), prompt_ids=served.encode_text(p))
                for i, (p, s) in enumerate(zip(prompts, samplings))]
    decode_batch(served, requests)
    return [("".join(pieces[i]), done[i], pieces[i]) for i in range(len(prompts))]


def test_batched_greedy_equals_one_at_a_time(served):
    lengths = [len(served.encode_text(p)) for p in PROMPTS]
    assert len(set(lengths)) > 1  # the batch is really left-padded
    batched = run(served, PROMPTS, [GREEDY] * len(PROMPTS))
    alone = [run(served, [p], [GREEDY])[0] for p in PROMPTS]
    assert [t for t, _, _ in batched] == [t for t, _, _ in alone]
    assert len({t for t, _, _ in alone}) == len(PROMPTS)  # the model says different things
    for text, done, _ in batched:
        assert done.reason in ("length", "stop") and 0 < done.completion_tokens <= GREEDY.max_tokens


def test_rows_with_different_max_tokens_leave_the_batch_and_the_rest_continue(served):
    samplings = [Sampling(max_tokens=n, temperature=0.0) for n in (3, 24, 1, 10)]
    batched = run(served, PROMPTS, samplings)
    alone = [run(served, [p], [s])[0] for p, s in zip(PROMPTS, samplings)]
    assert [t for t, _, _ in batched] == [t for t, _, _ in alone]
    assert [d.completion_tokens for _, d, _ in batched] == [3, 24, 1, 10]
    assert all(d.reason == "length" for _, d, _ in batched)


def test_a_seed_gives_the_same_sample_alone_or_in_a_batch(served):
    seeded = Sampling(max_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    first = run(served, [PROMPTS[0]], [seeded])[0][0]
    again = run(served, [PROMPTS[0]], [seeded])[0][0]
    in_batch = run(served, [PROMPTS[1], PROMPTS[0]], [GREEDY, seeded])[1][0]
    assert first == again == in_batch
    others = {run(served, [PROMPTS[0]], [Sampling(max_tokens=16, temperature=1.0, seed=s)])[0][0] for s in range(4)}
    assert len(others) > 1  # sampling does sample


def test_top_p_near_zero_is_greedy(served):
    nucleus = Sampling(max_tokens=12, temperature=1.5, top_p=1e-6, seed=3)
    assert run(served, [PROMPTS[2]], [nucleus])[0][0] == run(served, [PROMPTS[2]], [Sampling(12, temperature=0.0)])[0][0]


def test_a_stop_string_ends_the_text_before_it_and_is_never_streamed(served):
    full = run(served, [PROMPTS[1]], [GREEDY])[0][0]
    stop = full[6:9]
    assert stop and full.find(stop) >= 1
    text, done, pieces = run(served, [PROMPTS[1]], [Sampling(max_tokens=24, temperature=0.0, stop=("zzqq", stop))])[0]
    assert text == full[: full.find(stop)]
    assert done.reason == "stop"
    assert "".join(pieces) == text


def test_stop_text_holds_back_a_possible_start_of_a_stop_string():
    stream = StopText(["END"])
    assert stream.update("abc E") == ("abc ", False)
    assert stream.update("abc EN") == ("", False)
    assert stream.update("abc ENx") == ("ENx", False)
    assert stream.update("abc ENx yEND more") == (" y", True)
    assert stream.text == "abc ENx y"
    held = StopText(["\n\n"])
    assert held.update("one\n") == ("one", False)
    assert held.flush() == "\n"


def test_two_adapters_share_one_base_and_each_answers_as_it_does_alone(lively_dir, tmp_path):
    from tailorlm.models.load import load_model
    from tailorlm.strategies.base import load_specialist

    a = adapter_specialist(lively_dir, tmp_path / "spec-a", seed=11)
    b = adapter_specialist(lively_dir, tmp_path / "spec-b", seed=12)
    table = load_served([str(lively_dir), str(a), f"second={b}"], device="cpu")
    base, first, second = table[lively_dir.name], table["spec-a"], table["second"]
    assert first.model is second.model is base.model  # one PeftModel holding both adapters
    weights = [s.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight for s in (first, second)]
    assert weights[0].data_ptr() == weights[1].data_ptr()
    copies = {p.data_ptr() for n, p in base.model.named_parameters() if "lora_" not in n}
    plain, _ = load_model(str(lively_dir), device="cpu")
    assert len(copies) == len({p.data_ptr() for p in plain.parameters()})  # no second copy of any base weight

    got = {s.name: run(s, PROMPTS[:2], [GREEDY] * 2) for s in (base, first, second)}
    for name, folder in (("spec-a", a), ("second", b)):
        model, tokenizer, _ = load_specialist(folder, device="cpu")
        alone = load_served_model(model, tokenizer, name)
        assert [t for t, _, _ in got[name]] == [t for t, _, _ in (run(alone, [p], [GREEDY])[0] for p in PROMPTS[:2])]
    plain_served = load_served_model(plain, table[lively_dir.name].tokenizer, "plain")
    assert [t for t, _, _ in got[lively_dir.name]] == [run(plain_served, [p], [GREEDY])[0][0] for p in PROMPTS[:2]]
    assert len({got[n][0][0] for n in got}) == 3  # each adapter changes the answer
    # After the others, the base alone is still the base: selecting adapters per batch leaves no adapter on.
    assert [t for t, _, _ in run(base, PROMPTS[:2], [GREEDY] * 2)] == [t for t, _, _ in got[lively_dir.name]]


def load_served_model(model, tokenizer, name):
    from tailorlm.serving.specialists import _generator

    return _generator(name, name, model, tokenizer)


def test_spec_names_come_from_folders_references_or_name_equals(tmp_path):
    (tmp_path / "legal-lora").mkdir()
    assert parse_spec(str(tmp_path / "legal-lora")) == ("legal-lora", str(tmp_path / "legal-lora"))
    assert parse_spec("smollm2-135m-instruct") == ("smollm2-135m-instruct", "smollm2-135m-instruct")
    assert parse_spec(f"legal={tmp_path / 'legal-lora'}") == ("legal", str(tmp_path / "legal-lora"))


class Blocking:
    """A one-at-a-time specialist whose generation waits until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.tokenizer = None
        self.name = "blocking"

    def run_alone(self, prompt, sampling, on_text):
        self.release.wait(10)
        on_text(f"answer to {prompt}")
        return f"answer to {prompt}"


def test_a_full_queue_refuses_and_closing_finishes_what_was_queued():
    served = Blocking()
    engine = Engine(max_queue=1, max_batch=4)
    events: dict[str, list] = {"a": [], "b": []}
    engine.submit(Request(served=served, sampling=GREEDY, on_event=events["a"].append, prompt="a"))
    deadline = time.monotonic() + 5
    while engine.running == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.submit(Request(served=served, sampling=GREEDY, on_event=events["b"].append, prompt="b"))
    with pytest.raises(QueueFull):
        engine.submit(Request(served=served, sampling=GREEDY, on_event=print, prompt="c"))
    closing = threading.Thread(target=engine.close)
    closing.start()
    served.release.set()
    closing.join(10)
    assert not closing.is_alive()
    for key in "ab":
        # Closing drains: both run to their natural end ('stop': the specialist returned its answer), none is
        # 'cancelled'. No tokenizer and no prompt ids, so both counts are 0.
        assert events[key] == [Delta(f"answer to {key}"), Finished("stop", 0, 0)]


def test_a_request_out_of_time_in_the_queue_finishes_with_timeout(served):
    engine = Engine()
    got: list = []
    finished = threading.Event()

    def on_event(event):
        got.append(event)
        if isinstance(event, (Finished, Failed)):
            finished.set()

    engine.submit(Request(served=served, sampling=GREEDY, on_event=on_event, prompt_ids=served.encode_text("hi"),
                          deadline=time.monotonic() - 1))
    assert finished.wait(10)
    engine.close()
    assert got == [Finished("timeout", len(served.encode_text("hi")), 0)]


def test_a_failing_batch_reports_failure_and_the_engine_keeps_serving(served):
    engine = Engine()
    results: list = []
    finished = threading.Semaphore(0)

    def on_event(event):
        if isinstance(event, (Finished, Failed)):
            results.append(event)
            finished.release()

    engine.submit(Request(served=served, sampling=GREEDY, on_event=on_event, prompt_ids=[10**6]))  # no such token
    assert finished.acquire(timeout=20)
    engine.submit(Request(served=served, sampling=GREEDY, on_event=on_event, prompt_ids=served.encode_text("hello")))
    assert finished.acquire(timeout=20)
    engine.close()
    assert isinstance(results[0], Failed) and isinstance(results[1], Finished) and results[1].completion_tokens > 0


def test_chat_prompts_use_the_chat_template(served):
    ids = served.encode_chat([{"role": "user", "content": "hello"}])
    text = served.tokenizer.decode(ids)
    assert text == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert served.tokenizer.convert_tokens_to_ids("<|im_end|>") in served.eos_ids


def test_a_prompt_specialist_puts_its_system_prompt_and_shots_first(lively_dir, tmp_path):
    from tailorlm.strategies.prompting import PromptSpecialist
    from tailorlm.tasks.task import TaskExample

    shot = TaskExample(id="train-0", input="2+2?", references=["4"])
    folder = PromptSpecialist(base_model=str(lively_dir), strategy="few_shot", instruction="Answer briefly.",
                              system="You are terse.", shots=[shot], settings={"k": 1, "selection": "random"},
                              base_model_path=str(lively_dir)).save(tmp_path / "terse")
    served_prompt = load_served([str(folder)], device="cpu")["terse"]
    messages = served_prompt.chat_messages([{"role": "user", "content": "3+3?"}])
    assert messages == [{"role": "system", "content": "You are terse."},
                        {"role": "user", "content": "Answer briefly.\n\n2+2?"}, {"role": "assistant", "content": "4"},
                        {"role": "user", "content": "Answer briefly.\n\n3+3?"}]


def test_requests_of_one_specialist_waiting_together_run_as_one_batch(served, monkeypatch):
    import tailorlm.serving.engine as engine_module

    sizes: list[int] = []
    real = engine_module.decode_batch
    monkeypatch.setattr(engine_module, "decode_batch",
                        lambda s, requests, **kw: (sizes.append(len(requests)), real(s, requests, **kw)))
    blocker = Blocking()
    engine = Engine(max_batch=3)
    engine.submit(Request(served=blocker, sampling=GREEDY, on_event=lambda e: None, prompt="wait"))
    while engine.running == 0:
        time.sleep(0.01)
    done = threading.Semaphore(0)
    for p in PROMPTS:
        engine.submit(Request(served=served, sampling=GREEDY, prompt_ids=served.encode_text(p),
                              on_event=lambda e: done.release() if isinstance(e, (Finished, Failed)) else None))
    blocker.release.set()
    for _ in PROMPTS:
        assert done.acquire(timeout=20)
    engine.close()
    assert sizes[0] == 3 and len(sizes) <= 2  # the fourth joined the running batch, or ran after it


def test_requests_arriving_during_a_batch_join_it_and_answer_as_they_would_alone(served, monkeypatch):
    import tailorlm.serving.engine as engine_module

    calls: list[int] = []
    real = engine_module.decode_batch
    monkeypatch.setattr(engine_module, "decode_batch", lambda s, r, **kw: (calls.append(len(r)), real(s, r, **kw)))
    hook = served.model.register_forward_pre_hook(lambda *args: time.sleep(0.01))
    engine = Engine(max_batch=4)
    texts: dict[int, list[str]] = {i: [] for i in range(4)}
    done = threading.Semaphore(0)

    def sink(i):
        def on_event(event):
            if isinstance(event, Delta):
                texts[i].append(event.text)
            else:
                done.release()
        return on_event

    samplings = [Sampling(max_tokens=40, temperature=0.0), GREEDY, Sampling(max_tokens=8, temperature=0.0),
                 Sampling(max_tokens=16, temperature=1.0, seed=3)]
    try:
        engine.submit(Request(served=served, sampling=samplings[0], on_event=sink(0),
                              prompt_ids=served.encode_text(PROMPTS[0])))
        while engine.running == 0:
            time.sleep(0.005)
        time.sleep(0.05)  # a few steps in
        for i in (1, 2, 3):
            engine.submit(Request(served=served, sampling=samplings[i], on_event=sink(i),
                                  prompt_ids=served.encode_text(PROMPTS[i])))
            time.sleep(0.03)
        for _ in range(4):
            assert done.acquire(timeout=30)
    finally:
        hook.remove()
        engine.close()
    assert calls == [1]  # one batch: the later requests joined it
    alone = [run(served, [p], [s])[0][0] for p, s in zip(PROMPTS, samplings)]
    assert ["".join(texts[i]) for i in range(4)] == alone


def test_an_adapter_whose_base_is_gone_or_whose_files_are_missing_is_a_clear_error(lively_dir, tmp_path):
    import json

    from tailorlm.errors import ModelError

    folder = adapter_specialist(lively_dir, tmp_path / "orphan", seed=3)
    manifest = json.loads((folder / "specialist.json").read_text())
    manifest["base_model"] = manifest["base_model_path"] = str(tmp_path / "deleted-base")
    (folder / "specialist.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="base model of this adapter specialist is not available"):
        load_served([str(folder)], device="cpu")
    broken = adapter_specialist(lively_dir, tmp_path / "broken", seed=4)
    (broken / "adapter_config.json").unlink()
    with pytest.raises(ModelError, match="missing files"):
        load_served([str(broken)], device="cpu")


def test_a_prompt_tuning_specialist_runs_alone_and_answers_as_generate_does(lively_dir, tmp_path):
    import peft
    from transformers import AutoTokenizer, LlamaForCausalLM

    from tailorlm.models.generate import generate
    from tailorlm.strategies.base import Manifest, load_specialist, save_specialist

    torch.manual_seed(5)
    model = peft.get_peft_model(LlamaForCausalLM.from_pretrained(lively_dir),
                                peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.normal_(0.0, 1.0)
    save_specialist(tmp_path / "pt", model, AutoTokenizer.from_pretrained(lively_dir),
                    Manifest(base_model=str(lively_dir), base_model_path=str(lively_dir), strategy="prompt_tuning",
                             objective="sft", weights="adapter"))
    target = load_served([str(tmp_path / "pt")], device="cpu")["pt"]
    assert target.run_alone is not None
    loaded, tokenizer, _ = load_specialist(tmp_path / "pt", device="cpu")
    expected = generate(loaded, tokenizer, PROMPTS[0], max_new_tokens=12)
    engine = Engine()
    pieces: list[str] = []
    finished = threading.Event()

    def on_event(event):
        if isinstance(event, Delta):
            pieces.append(event.text)
        else:
            pieces.append(event)
            finished.set()

    engine.submit(Request(served=target, sampling=Sampling(max_tokens=12, temperature=0.0), on_event=on_event,
                          prompt=PROMPTS[0], prompt_ids=target.encode_text(PROMPTS[0])))
    assert finished.wait(30)
    engine.close()
    assert "".join(pieces[:-1]) == expected and pieces[-1].reason == "length"


def test_a_rag_specialist_answers_with_its_sources_through_the_engine(lively_dir, tmp_path, monkeypatch):
    import json

    from _retrieval_fakes import FakeEmbedder

    from tailorlm.retrieval.index import build_index
    from tailorlm.strategies.rag import RagSpecialist, save_rag_specialist

    monkeypatch.setattr("tailorlm.retrieval.embeddings.Embedder", lambda ref="fake-bow", **kw: FakeEmbedder(ref, 256))
    model_dir = tmp_path / "long"
    shutil.copytree(lively_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1024}))  # room for passages
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"_id": "paris", "title": "France", "text": "Paris is the capital of France."}) + "\n"
                    + json.dumps({"_id": "fish", "title": "Fish", "text": "Goldfish swim in a bowl."}) + "\n")
    build_index([docs], tmp_path / "index", embedder=FakeEmbedder(dimension=256), chunk_tokens=64, overlap=0,
                progress=False)
    folder = save_rag_specialist(tmp_path / "rag", model=str(model_dir), index=tmp_path / "index",
                                 overrides={"k": 1, "mode": "dense", "min_score": 0.0})
    question = [{"role": "user", "content": "What is the capital of France?"}]
    with RagSpecialist.load(folder, device="cpu") as alone:
        expected = alone.generate(question, max_new_tokens=6, temperature=0.0)
    target = load_served([str(folder)], device="cpu")["rag"]
    engine = Engine()
    events: list = []
    finished = threading.Event()
    engine.submit(Request(served=target, sampling=Sampling(max_tokens=6, temperature=0.0), prompt=question,
                          on_event=lambda e: (events.append(e), isinstance(e, Finished) and finished.set())))
    assert finished.wait(60)
    engine.close()
    assert "".join(e.text for e in events if isinstance(e, Delta)) == expected
    assert "France" in expected.split("\n\n", 1)[1]  # the source is listed after the answer


class Collect:
    """Events of one request: its text pieces, its Finished or Failed event, and a flag set when it ends."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.end: Finished | Failed | None = None
        self.done = threading.Event()

    def __call__(self, event) -> None:
        if isinstance(event, Delta):
            self.pieces.append(event.text)
        else:
            self.end = event
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def test_eight_concurrent_requests_decode_as_one_batch_and_each_equals_the_request_alone(served, monkeypatch):
    import tailorlm.serving.engine as engine_module

    sizes: list[int] = []
    real = engine_module.decode_batch
    monkeypatch.setattr(engine_module, "decode_batch",
                        lambda s, requests, **kw: (sizes.append(len(requests)), real(s, requests, **kw)))
    assert len({len(served.encode_text(p)) for p in EIGHT}) > 3  # eight prompts of several lengths: real padding
    blocker = Blocking()
    engine = Engine(max_batch=8)
    streams = [Collect() for _ in EIGHT]
    try:
        # While a one-at-a-time request holds the worker, all eight wait in the queue: they start as one batch.
        engine.submit(Request(served=blocker, sampling=GREEDY, on_event=lambda e: None, prompt="wait"))
        while engine.running == 0:
            time.sleep(0.01)
        for prompt, sink in zip(EIGHT, streams):
            engine.submit(Request(served=served, sampling=GREEDY, on_event=sink, prompt_ids=served.encode_text(prompt)))
        blocker.release.set()
        assert all(sink.done.wait(30) for sink in streams)
    finally:
        blocker.release.set()
        engine.close()
    assert sizes == [8]
    alone = [run(served, [p], [GREEDY])[0] for p in EIGHT]
    # fp32 on the CPU with left padding: masked positions get exactly zero attention weight, so every row's logits
    # equal its logits alone and greedy picks the same tokens. Equal text and equal token counts (the events carry
    # no ids) would not both hold if a row had read another row's cache or a padded position.
    assert [s.text for s in streams] == [text for text, _, _ in alone]
    assert [s.end for s in streams] == [done for _, done, _ in alone]  # same reason, prompt and completion tokens
    assert len({text for text, _, _ in alone}) == len(EIGHT)  # eight different answers: the comparison has teeth


def test_closing_finishes_the_running_and_the_queued_requests_in_full_and_refuses_new_ones(served):
    gate = threading.Event()
    # Hold generation mid-flight until the gate opens (`and None`: a hook's non-None result would replace the inputs).
    hook = served.model.register_forward_pre_hook(lambda *args: gate.wait(30) and None)
    engine = Engine(max_batch=1)  # so that the second request waits in the queue instead of joining
    sinks = [Collect(), Collect()]
    try:
        engine.submit(Request(served=served, sampling=GREEDY, on_event=sinks[0],
                              prompt_ids=served.encode_text(PROMPTS[0])))
        while engine.running == 0:
            time.sleep(0.01)
        engine.submit(Request(served=served, sampling=GREEDY, on_event=sinks[1],
                              prompt_ids=served.encode_text(PROMPTS[1])))
        assert engine.queued == 1
        engine.close(timeout=0.3)  # closing has begun; the worker is still held by the gate
        assert engine.running == 1 and engine.queued == 1
        assert sinks[0].end is None and sinks[1].end is None  # closing cancelled nothing
        with pytest.raises(EngineClosed):
            engine.submit(Request(served=served, sampling=GREEDY, on_event=print, prompt_ids=[1]))
        gate.set()
        engine.close(timeout=30)
    finally:
        gate.set()
        hook.remove()
    alone = [run(served, [p], [GREEDY])[0] for p in PROMPTS[:2]]
    assert all(s.done.is_set() for s in sinks)
    assert [s.end for s in sinks] == [done for _, done, _ in alone]
    assert [s.end.reason for s in sinks] == ["length", "length"]  # both ran to max_tokens, neither was 'cancelled'
    assert [s.text for s in sinks] == [text for text, _, _ in alone]


def news_task():
    from tailorlm.tasks.task import Task

    return Task(name="news", instruction="Classify the headline.", system="You read financial news.", answer="label",
                labels={"0": "bearish", "1": "bullish"}, metric="accuracy", data=None,  # type: ignore[arg-type]
                input_template="Headline: {input}")


NEWS_TURNS = [{"role": "system", "content": "You read financial news."},
              {"role": "user", "content": "Classify the headline.\n\nHeadline: Shares doubled.\n\n"
                                          "Answer with one of: bearish, bullish."}]


def test_a_trained_specialist_with_its_task_wraps_the_user_turn_and_shares_its_base(lively_dir, tmp_path):
    from tailorlm.strategies.base import record_task

    with_task = record_task(adapter_specialist(lively_dir, tmp_path / "news", seed=11), news_task())
    assert with_task.config["task"]["instruction"] == "Classify the headline."
    plain = adapter_specialist(lively_dir, tmp_path / "plain", seed=12)
    table = load_served([str(tmp_path / "news"), str(plain)], device="cpu")
    news, other = table["news"], table["plain"]
    assert news.model is other.model and news.run_alone is None  # still one batch loop over the shared base
    asked = [{"role": "user", "content": "Shares doubled."}]
    assert news.chat_messages(asked) == NEWS_TURNS
    assert news.tokenizer.decode(news.encode_chat(asked)) == (
        "<|im_start|>system\nYou read financial news.<|im_end|>\n<|im_start|>user\nClassify the headline.\n\n"
        "Headline: Shares doubled.\n\nAnswer with one of: bearish, bullish.<|im_end|>\n<|im_start|>assistant\n")
    # Earlier turns stay as they were; the request's own system prompt follows the task's.
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
               {"role": "assistant", "content": "bullish"}, *asked]
    assert news.chat_messages(history) == [
        {"role": "system", "content": "You read financial news.\n\nBe brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "bullish"}, NEWS_TURNS[1]]
    assert other.prompt is None and other.chat_messages(asked) == asked  # trained by `tailor train`: as it was


def test_a_prompt_learning_specialist_with_its_task_gets_the_wrapped_turn_when_run_alone(lively_dir, tmp_path):
    import peft
    from transformers import AutoTokenizer, LlamaForCausalLM

    from tailorlm.strategies.base import Manifest, record_task, save_specialist

    model = peft.get_peft_model(LlamaForCausalLM.from_pretrained(lively_dir),
                                peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    save_specialist(tmp_path / "pt", model, AutoTokenizer.from_pretrained(lively_dir),
                    Manifest(base_model=str(lively_dir), base_model_path=str(lively_dir), strategy="p_tuning",
                             objective="sft", weights="adapter"))
    record_task(tmp_path / "pt", news_task())
    target = load_served([str(tmp_path / "pt")], device="cpu")["pt"]
    assert target.run_alone is not None
    assert target.chat_messages([{"role": "user", "content": "Shares doubled."}]) == NEWS_TURNS


def test_a_failure_mid_batch_fails_only_the_requests_still_running(served):
    calls = []

    def fail_third_pass(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory (simulated)")

    hook = served.model.register_forward_pre_hook(fail_third_pass)
    events: dict[str, list] = {"short": [], "long": []}
    done = threading.Semaphore(0)
    engine = Engine(max_batch=2)
    try:
        for name, tokens in (("short", 1), ("long", 20)):
            def on_event(event, name=name):
                events[name].append(event)
                if isinstance(event, (Finished, Failed)):
                    done.release()
            engine.submit(Request(served=served, sampling=Sampling(max_tokens=tokens, temperature=0.0),
                                  prompt_ids=served.encode_text("hello"), on_event=on_event))
        assert done.acquire(timeout=30) and done.acquire(timeout=30)
        time.sleep(0.1)
    finally:
        engine.close()
        hook.remove()
    ends = {name: [e for e in got if isinstance(e, (Finished, Failed))] for name, got in events.items()}
    assert len(ends["short"]) == 1 and isinstance(ends["short"][0], Finished)  # its answer stands, no Failed after it
    assert ends["short"][0].reason == "length" and ends["short"][0].completion_tokens == 1
    assert len(ends["long"]) == 1 and isinstance(ends["long"][0], Failed) and "simulated" in str(ends["long"][0].error)
    assert len(calls) == 3  # prefill, one step, the failing step: both requests were in the one batch


def test_calls_run_on_the_engine_thread_between_decoding_steps(served):
    engine = Engine(max_batch=2)
    try:
        worker = engine.call(threading.current_thread)
        assert worker.name == "tailorlm-engine" and worker is not threading.current_thread()
        with pytest.raises(ValueError, match="bad input"):
            engine.call(lambda: (_ for _ in ()).throw(ValueError("bad input")))
        # A long generation is running: a call does not wait for it to end, it runs between two of its steps.
        steps: list[int] = []
        hook = served.model.register_forward_pre_hook(lambda *args: (steps.append(1), time.sleep(0.02)) and None)
        ended = threading.Event()
        end: list = []
        engine.submit(Request(served=served, sampling=Sampling(max_tokens=60, temperature=0.0),
                              prompt_ids=served.encode_text("hello"),
                              on_event=lambda e: (end.append(e), ended.set()) if isinstance(e, (Finished, Failed))
                              else None))
        while len(steps) < 3:
            time.sleep(0.005)
        at_call = engine.call(lambda: len(steps))
        assert ended.wait(30)
        assert isinstance(end[0], Finished) and end[0].completion_tokens > 10  # a long answer, so the next holds
        assert 3 <= at_call < len(steps)  # the call ran while the batch still had steps to go
        hook.remove()
    finally:
        engine.close()
    with pytest.raises(EngineClosed):
        engine.call(lambda: None)


class Trickling:
    """A one-at-a-time specialist that writes its answer a piece at a time, slowly."""

    tokenizer = None
    name = "trickling"

    def __init__(self, pieces: int) -> None:
        self.pieces, self.written = pieces, 0

    def run_alone(self, prompt, sampling, on_text):
        for _ in range(self.pieces):
            time.sleep(0.01)
            self.written += 1
            on_text("x")
        return "x" * self.pieces


def test_calls_also_run_between_the_pieces_of_a_one_at_a_time_answer():
    served = Trickling(200)
    engine = Engine()
    ended = threading.Event()
    try:
        engine.submit(Request(served=served, sampling=GREEDY, prompt="p",
                              on_event=lambda e: ended.set() if isinstance(e, (Finished, Failed)) else None))
        while served.written < 3:
            time.sleep(0.005)
        at_call = engine.call(lambda: served.written)
        assert 3 <= at_call < 200 and not ended.is_set()  # an embedding does not wait for the whole answer
        assert ended.wait(30)
    finally:
        engine.close()
