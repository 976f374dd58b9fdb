"""`tailor chat`: the ChatSession (history fitted to the context, /commands) driven by scripted input on the tiny
random Llama, given the ChatML template it lacks."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from tailorlm.chat import COMMANDS, ChatSession, open_chat, run_chat
from tailorlm.errors import ConfigError, ModelError

CONTEXT = 256  # the tiny Llama's max_position_embeddings
SYSTEM = "You are a careful assistant."


@pytest.fixture(scope="module")
def chat_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with ChatML installed in its tokenizer (its tokens already exist, so no resize)."""
    from transformers import AutoTokenizer

    from tailorlm.data.templates import ensure_chat_template

    folder = tmp_path_factory.mktemp("tiny-chat") / "model"
    shutil.copytree(tiny_llama_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template is None
    before = len(tokenizer)
    assert ensure_chat_template(tokenizer) is True and len(tokenizer) == before
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(chat_dir: Path):
    from tailorlm.models.load import load_model

    return load_model(str(chat_dir), device="cpu", progress=False)


def session(loaded, **options) -> ChatSession:
    model, tokenizer = loaded
    return ChatSession(model, tokenizer, **{"system": SYSTEM, "max_new_tokens": 8, **options})


def test_streamed_pieces_join_to_the_answer_kept_in_history(loaded) -> None:
    chat = session(loaded)
    pieces: list[str] = []
    reply = chat.ask("hello, what is the capital of France?", on_text=pieces.append)
    assert pieces and "".join(pieces) == reply.text
    assert chat.history == [{"role": "user", "content": "hello, what is the capital of France?"},
                            {"role": "assistant", "content": reply.text}]
    assert reply.prompt_tokens == chat.prompt_tokens(chat.messages()[:-1]) and reply.dropped == 0
    assert chat.last_prompt.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n")
    assert chat.last_prompt.endswith("<|im_start|>assistant\n")


def test_history_is_trimmed_oldest_first_to_fit_and_the_system_prompt_stays(loaded) -> None:
    chat = session(loaded, max_new_tokens=16)
    budget = CONTEXT - 16
    asked: list[str] = []
    notes: list[str] = []
    replies = []
    for i in range(8):
        text = f"question {i}: the quick brown fox jumps over the lazy dog, patients with diabetes check sugar."
        asked.append(text)
        replies.append(chat.ask(text, on_note=notes.append))
        assert replies[-1].prompt_tokens <= budget
        assert chat.prompt_tokens(chat.messages()[:-1]) == replies[-1].prompt_tokens
        assert chat.messages()[0] == {"role": "system", "content": SYSTEM}
    dropped = sum(r.dropped for r in replies)
    assert dropped >= 2, "eight long turns must overflow a 240-token budget"
    kept_users = [m["content"] for m in chat.history if m["role"] == "user"]
    assert kept_users == asked[dropped:]  # exactly the oldest turns went
    assert [m["role"] for m in chat.history] == ["user", "assistant"] * len(kept_users)
    assert notes and all("oldest turn" in note and "256-token context" in note for note in notes)
    assert len(notes) == sum(1 for r in replies if r.dropped)
    # Only as much was dropped as needed: the last turn's prompt with one more old pair would not have fitted.
    last = replies[-1]
    assert last.dropped >= 1  # by the eighth turn every new one pushes an old one out
    if last.dropped:
        one_more = [{"role": "user", "content": asked[dropped - 1]}, {"role": "assistant", "content": "x"}]
        without_answer = chat.history[:-1]
        assert chat.prompt_tokens(chat._head() + one_more + without_answer) > budget


def test_a_message_longer_than_the_context_is_refused_and_nothing_is_dropped(loaded) -> None:
    chat = session(loaded)
    chat.ask("hello")
    before = list(chat.history)
    with pytest.raises(ModelError, match="does not fit the model's context"):
        chat.ask("the quick brown fox " * 200)
    assert chat.history == before


def test_reset_empties_history_and_keeps_the_system_prompt(loaded) -> None:
    chat = session(loaded)
    chat.ask("hello")
    outcome = chat.handle("/reset")
    assert chat.history == [] and chat.system == SYSTEM and outcome.note == "conversation cleared"


def test_system_replaces_the_system_prompt(loaded) -> None:
    chat = session(loaded)
    chat.ask("hello")
    assert chat.handle("/system   Answer in one word.").note == "system prompt replaced"
    assert chat.system == "Answer in one word."
    assert chat.messages()[0] == {"role": "system", "content": "Answer in one word."}
    assert len(chat.history) == 2  # the conversation goes on under the new prompt
    assert chat.handle("/system").note == "system prompt: Answer in one word."
    chat.ask("thanks")
    assert chat.last_prompt.startswith("<|im_start|>system\nAnswer in one word.<|im_end|>\n")


def test_save_writes_the_exact_messages_atomically(loaded, tmp_path: Path) -> None:
    chat = session(loaded)
    first = chat.ask("hello").text
    second = chat.ask("thanks, bye").text
    path = tmp_path / "talk.json"
    outcome = chat.handle(f"/save {path}")
    assert json.loads(path.read_text(encoding="utf-8")) == {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "hello"}, {"role": "assistant", "content": first},
        {"role": "user", "content": "thanks, bye"}, {"role": "assistant", "content": second},
    ]}
    assert outcome.note == f"saved 5 messages to {path}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.json"]  # no temporary file left
    with pytest.raises(ConfigError, match="does not exist"):
        chat.handle(f"/save {tmp_path / 'missing' / 'talk.json'}")
    assert chat.handle("/save").note == "usage: /save FILE"


def test_an_unknown_command_lists_the_known_ones(loaded) -> None:
    chat = session(loaded)
    note = chat.handle("/help").note
    assert note.startswith("unknown command /help; commands: ")
    assert all(name in note for name in COMMANDS)
    assert chat.history == []
    assert chat.handle("/exit").exit is True


def test_max_new_tokens_must_leave_room_for_the_conversation(loaded) -> None:
    with pytest.raises(ConfigError, match="leaves no room"):
        session(loaded, max_new_tokens=CONTEXT)


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=200, highlight=False), out


def _script(lines: list[str], end: type[BaseException] = EOFError):
    queue = list(lines)

    def read(prompt: str) -> str:
        if not queue:
            raise end()
        return queue.pop(0)
    return read


def test_the_loop_streams_answers_runs_commands_and_ends_on_ctrl_d(loaded, tmp_path: Path) -> None:
    chat = session(loaded)
    console, out = _console()
    path = tmp_path / "c.json"
    code = run_chat(chat, read=_script(["hello", "", "/nope", f"/save {path}", "/save /no/such/dir/x.json"]),
                    console=console)
    text = out.getvalue()
    assert code == 0
    assert chat.history[1]["content"] in text
    assert "unknown command /nope; commands: /reset" in text
    assert f"saved 3 messages to {path}" in text
    assert "error: /no/such/dir: the folder to save into does not exist" in text  # and the loop went on
    assert json.loads(path.read_text(encoding="utf-8"))["messages"] == chat.conversation()


@pytest.fixture(scope="module")
def lively(tiny_chat_dir: Path):
    """The tiny chat Llama with larger random weights, whose greedy answers change with the conversation (the plain
    tiny Llama answers nothing but newlines, whatever it is asked)."""
    from tailorlm.models.load import load_model

    return load_model(str(tiny_chat_dir), device="cpu", progress=False)


def two_turns(loaded) -> tuple[str, str]:
    """The answers a fresh session gives to "hello" and then "thanks" (greedy, so always the same)."""
    chat = session(loaded)
    first = chat.ask("hello").text
    second = chat.ask("thanks").text
    assert first.strip() and second.strip()
    assert session(loaded).ask("thanks").text != second  # the second answer depends on the first turn
    return first, second


@pytest.mark.parametrize("end", [EOFError, KeyboardInterrupt])
def test_ctrl_d_and_ctrl_c_end_the_chat_after_the_answers_with_the_history_kept(lively, end) -> None:
    first, second = two_turns(lively)
    chat = session(lively)
    console, out = _console()
    assert run_chat(chat, read=_script(["hello", "thanks"], end), console=console) == 0
    # Each answer on its own line, then Ctrl-D or Ctrl-C ends the prompt's line: no traceback, nothing else.
    assert out.getvalue() == f"{first}\n{second}\n\n"
    assert chat.history == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": first},
                            {"role": "user", "content": "thanks"}, {"role": "assistant", "content": second}]
    # The second question was asked with the first turn before it.
    assert chat.last_prompt.endswith(f"user\nhello<|im_end|>\n<|im_start|>assistant\n{first}<|im_end|>\n"
                                     "<|im_start|>user\nthanks<|im_end|>\n<|im_start|>assistant\n")


def test_ctrl_c_during_an_answer_ends_the_chat_and_leaves_no_unanswered_question(lively) -> None:
    first, _ = two_turns(lively)
    console, out = _console()
    printed = console.print

    def print_until_the_second_answer(*args, **kwargs):
        if out.getvalue() == f"{first}\n" and args and args[0]:  # the first piece of the second answer
            raise KeyboardInterrupt
        printed(*args, **kwargs)

    console.print = print_until_the_second_answer  # type: ignore[method-assign]
    chat = session(lively)
    assert run_chat(chat, read=_script(["hello", "thanks", "never read"]), console=console) == 0
    assert out.getvalue() == f"{first}\n\n"
    assert chat.history == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": first}]


def test_exit_command_ends_the_loop(loaded) -> None:
    console, _ = _console()
    read = _script(["/exit", "hello"])
    chat = session(loaded)
    assert run_chat(chat, read=read, console=console) == 0 and chat.history == []


class FakeRag:
    """A RAG specialist's ask(): streams a fixed answer and names two sources."""

    def __init__(self) -> None:
        self.questions: list[str] = []

    def ask(self, question: str, *, on_text=None, **sampling):
        from tailorlm.retrieval.answer import RagAnswer

        self.questions.append(question)
        answer = RagAnswer(question=question, text="Paris [1].", found=True, cited=[1])
        if on_text is not None:
            on_text("Paris ")
            on_text("[1].")
        answer.sources_text = lambda: "Sources:\n[1] france.txt (cited)\n[2] europe.txt"  # type: ignore[method-assign]
        return answer


def test_a_rag_specialist_shows_its_sources_after_each_answer(loaded) -> None:
    model, tokenizer = loaded
    rag = FakeRag()
    chat = ChatSession(model, tokenizer, rag=rag, max_new_tokens=8)
    console, out = _console()
    assert run_chat(chat, read=_script(["What is the capital of France?", "And of Italy?"]), console=console) == 0
    assert rag.questions == ["What is the capital of France?", "And of Italy?"]
    assert out.getvalue().count("Paris [1].\nSources:\n[1] france.txt (cited)\n[2] europe.txt\n") == 2
    assert chat.history[1] == {"role": "assistant", "content": "Paris [1]."}


def test_open_chat_on_a_model_reference(chat_dir: Path) -> None:
    chat = open_chat(chat_dir, system="Be brief.", max_new_tokens=4, device="cpu")
    assert chat.context == CONTEXT and chat.system == "Be brief." and chat.turns == []
    im_end = chat.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in chat.model.generation_config.eos_token_id  # answers stop at the end of the turn
    pieces: list[str] = []
    assert chat.ask("hello", on_text=pieces.append).text == "".join(pieces)


def test_chat_stores_the_weights_in_fp16_when_asked_and_answers_as_before(chat_dir: Path) -> None:
    from tailorlm.cli import _parser_for
    from tailorlm.serving.compact import HalfLinear, half_weights_supported

    if half_weights_supported() is not None:
        pytest.skip(half_weights_supported())
    exact = open_chat(chat_dir, max_new_tokens=8, device="cpu")  # the library's default: exact fp32
    half = open_chat(chat_dir, max_new_tokens=8, device="cpu", weights="fp16")
    assert not any(isinstance(m, HalfLinear) for m in exact.model.modules())
    assert any(isinstance(m, HalfLinear) for m in half.model.modules()) and half.notes == []
    # The tiny chat model's greedy answer is the same with its weights rounded to fp16.
    assert half.ask("hello").text == exact.ask("hello").text
    assert _parser_for(["chat", "x"]).parse_args(["chat", "x"]).weights == "fp16"  # `tailor chat`'s default
    with pytest.raises(ConfigError, match="weights"):
        open_chat(chat_dir, device="cpu", weights="int8")


def test_a_model_without_a_chat_template_is_refused(tiny_llama_dir: Path) -> None:
    with pytest.raises(ModelError, match="no chat template") as err:
        open_chat(tiny_llama_dir, device="cpu")
    assert str(tiny_llama_dir) in str(err.value)


def test_a_classification_specialist_cannot_chat(tmp_path: Path, chat_dir: Path) -> None:
    from tailorlm.strategies.base import MANIFEST, Manifest

    folder = tmp_path / "classifier"
    folder.mkdir()
    manifest = Manifest(base_model=str(chat_dir), base_model_path=str(chat_dir), strategy="lora", objective="classify",
                        weights="adapter", labels=["bearish", "bullish"])
    (folder / MANIFEST).write_text(json.dumps(manifest.to_dict()), encoding="utf-8")
    with pytest.raises(ModelError, match="classification-head specialist cannot chat") as err:
        open_chat(folder, device="cpu")
    assert str(folder) in str(err.value)


def test_a_prompting_specialist_puts_its_prompt_and_shots_first(tmp_path: Path, chat_dir: Path) -> None:
    from tailorlm.strategies.prompting import PromptSpecialist
    from tailorlm.tasks.task import TaskExample

    shots = [TaskExample("train-0", "Shares rose 5%.", ["1"]), TaskExample("train-1", "Shares fell.", ["0"])]
    spec = PromptSpecialist(base_model=str(chat_dir), strategy="few_shot", instruction="Classify the sentiment.",
                            system="You read financial news.", shots=shots,
                            settings={"k": 2, "selection": "balanced", "seed": 0}, base_model_path=str(chat_dir))
    folder = tmp_path / "few-shot"
    spec.save(folder)
    manifest = json.loads((folder / "specialist.json").read_text(encoding="utf-8"))
    manifest["config"]["task"] = {"name": "news", "answer": "label", "labels": {"0": "bearish", "1": "bullish"},
                                  "input_template": None}
    (folder / "specialist.json").write_text(json.dumps(manifest), encoding="utf-8")

    chat = open_chat(folder, max_new_tokens=4, device="cpu")
    assert chat.system == "You read financial news.\n\nClassify the sentiment.\n\nAnswer with one of: bearish, bullish."
    assert chat.turns == [{"role": "user", "content": "Shares rose 5%."}, {"role": "assistant", "content": "bullish"},
                          {"role": "user", "content": "Shares fell."}, {"role": "assistant", "content": "bearish"}]
    chat.ask("Shares doubled.")
    assert [m["content"] for m in chat.messages()[1:6]] == [
        "Shares rose 5%.", "bullish", "Shares fell.", "bearish", "Shares doubled."]
    assert chat.conversation()[0]["role"] == "system" and len(chat.conversation()) == 3  # /save leaves the shots out
    assert open_chat(folder, system="Other.", max_new_tokens=4, device="cpu").system == "Other."


def test_a_specialist_trained_on_a_task_prompt_chats_as_a_prompting_one(tmp_path: Path, chat_dir: Path) -> None:
    import peft
    from transformers import AutoTokenizer, LlamaForCausalLM

    from tailorlm.strategies.base import Manifest, record_task, save_specialist
    from tailorlm.tasks.task import Task

    model = peft.get_peft_model(LlamaForCausalLM.from_pretrained(chat_dir),
                                peft.LoraConfig(r=2, target_modules=["q_proj"]))
    manifest = Manifest(base_model=str(chat_dir), base_model_path=str(chat_dir), strategy="lora", objective="sft",
                        weights="adapter")
    save_specialist(tmp_path / "plain", model, AutoTokenizer.from_pretrained(chat_dir), manifest)
    shutil.copytree(tmp_path / "plain", tmp_path / "news")
    task = Task(name="news", instruction="Classify the sentiment.", system="You read financial news.", answer="label",
                labels={"0": "bearish", "1": "bullish"}, metric="accuracy", data=None)  # type: ignore[arg-type]
    record_task(tmp_path / "news", task)

    chat = open_chat(tmp_path / "news", max_new_tokens=4, device="cpu")
    assert chat.system == "You read financial news.\n\nClassify the sentiment.\n\nAnswer with one of: bearish, bullish."
    assert chat.turns == []
    chat.ask("Shares doubled.")
    assert chat.messages()[:2] == [{"role": "system", "content": chat.system},
                                   {"role": "user", "content": "Shares doubled."}]
    assert open_chat(tmp_path / "news", system="Other.", max_new_tokens=4, device="cpu").system == "Other."
    assert open_chat(tmp_path / "plain", max_new_tokens=4, device="cpu").system is None  # `tailor train`: as before


@pytest.mark.parametrize("end", ["/exit", "ctrl-d"])
def test_the_chat_verb_prints_each_answer_and_keeps_the_conversation(tiny_chat_dir: Path, end: str,
                                                                      monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from tailorlm.chat import command_list
    from tailorlm.cli import main

    chat_dir = tiny_chat_dir  # the lively tiny model: its answers depend on what it is asked
    reference = open_chat(chat_dir, system="Be brief.", max_new_tokens=4, device="cpu")
    first, second = reference.ask("hello").text, reference.ask("thanks").text
    assert first.strip() and second.strip()
    assert open_chat(chat_dir, system="Be brief.", max_new_tokens=4, device="cpu").ask("thanks").text != second
    lines = ["hello", "thanks"] + ([end] if end == "/exit" else [])
    prompts: list[str] = []

    def read(prompt: str = "") -> str:
        prompts.append(prompt)
        if not lines:
            raise EOFError  # Ctrl-D
        return lines.pop(0)

    monkeypatch.setattr("builtins.input", read)
    assert main(["chat", str(chat_dir), "--max-new-tokens", "4", "--system", "Be brief.", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    # The header, then each streamed answer on its own line: the second is the answer with the first turn in the
    # history (the reference session asked the same two questions in order). Ctrl-D ends the prompt's line.
    assert out == (f"chatting with {chat_dir} (256-token context); {command_list()}\n{first}\n{second}\n"
                   + ("\n" if end == "ctrl-d" else ""))
    assert prompts == ["> "] * 3


def test_open_chat_on_a_rag_specialist_answers_from_its_documents(chat_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from _retrieval_fakes import FakeEmbedder
    from tailorlm.retrieval.index import build_index
    from tailorlm.strategies.rag import save_rag_specialist

    model_dir = tmp_path / "model"  # the tiny chat Llama with room for the RAG prompt (RoPE: no weights change)
    shutil.copytree(chat_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    (model_dir / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2048}), encoding="utf-8")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"_id": "france", "text": "Paris is the capital of France."}) + "\n"
                      + json.dumps({"_id": "italy", "text": "Rome is the capital of Italy."}) + "\n", encoding="utf-8")
    build_index([corpus], tmp_path / "index", embedder=FakeEmbedder(dimension=64), chunk_tokens=64, overlap=0,
                progress=False)
    monkeypatch.setattr("tailorlm.retrieval.embeddings.Embedder",
                        lambda model_ref="fake-bow", **kwargs: FakeEmbedder(model_ref, dimension=64))
    folder = save_rag_specialist(tmp_path / "rag", model=str(model_dir), index=tmp_path / "index",
                                 overrides={"k": 1, "min_score": -1.0, "max_new_tokens": 6})
    chat = open_chat(folder, device="cpu")
    try:
        assert chat.rag is not None and chat.max_new_tokens == 6  # the specialist's own setting
        console, out = _console()
        assert run_chat(chat, read=_script(["What is the capital of France?"]), console=console) == 0
        answer = chat.history[1]["content"]
        assert out.getvalue().startswith(f"{answer}\nSources:\n[1] ")
        assert "france" in out.getvalue().split("Sources:")[1]
    finally:
        chat.rag.close()
