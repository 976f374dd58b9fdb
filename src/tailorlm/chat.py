"""Chat with a model or specialist: a `ChatSession` (history fitted to the context window, /commands) and the loop
that reads lines and streams answers to a terminal.

The session sends the model its system prompt, any fixed turns of the specialist (a prompting specialist's few-shot
examples) and as much of the conversation as fits the context window less `max_new_tokens`, counted in tokens of the
rendered chat template. When it does not fit, the oldest user/assistant pair goes first; the system prompt and the
fixed turns never go.

A prompting specialist chats as it answers in evaluation, with one change: in chat the user types only the input,
so the instruction (and, for label tasks, the allowed answers) joins the system prompt instead of each user turn, and
each shot is the bare input with its answer. A kNN specialist picks shots per question from its pool; chat shows none.
A specialist that `tailor compare` trained on a task's prompt (its manifest's `config.task`) chats the same way,
without shots: the task's system prompt, instruction and allowed answers make its system prompt.

A RAG specialist answers each message from its documents with its own prompt (only the last question is retrieved
for and answered, as `RagSpecialist.generate` does), and the sources follow each answer.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tailorlm.errors import ConfigError, ModelError, TailorError
from tailorlm.files import write_atomic

COMMANDS: dict[str, str] = {
    "/reset": "forget the conversation; the system prompt stays",
    "/system TEXT": "replace the system prompt; alone, show it",
    "/save FILE": "write the conversation as JSON messages",
    "/exit": "leave; Ctrl-D and Ctrl-C too",
}
_SANE_MAX_LENGTH = 10_000_000  # tokenizers without a limit report int(1e30)
_DEFAULT_CONTEXT = 2048
DEFAULT_MAX_NEW_TOKENS = 256


@dataclass
class Reply:
    """One answer of the model, with what the session did to make room for it."""

    text: str
    prompt_tokens: int
    """Tokens of the rendered prompt the model was given (0 for a RAG specialist, whose prompt is its own)."""
    dropped: int = 0
    """Oldest user/assistant pairs dropped from the history so that the prompt fits."""
    sources: str = ""
    """A RAG specialist's sources, one a line ("" otherwise)."""


@dataclass
class Outcome:
    """What one input line did: an answer, a note to show, or the end of the chat."""

    reply: Reply | None = None
    note: str = ""
    exit: bool = False


@dataclass
class ChatSession:
    """A conversation with one model: the system prompt, the history, and the commands that change them.

    `turns` are fixed messages placed after the system prompt (a prompting specialist's shots); `rag` is a loaded
    `RagSpecialist` that answers instead of the plain model.
    """

    model: Any
    tokenizer: Any
    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)
    max_new_tokens: int = 256
    temperature: float = 0.0
    context: int | None = None
    """Tokens the model reads at once; by default its config's max_position_embeddings."""
    rag: Any = None
    name: str = "model"
    notes: list[str] = field(default_factory=list)
    """Things the user should know about how this target chats, shown once at the start."""
    history: list[dict[str, str]] = field(default_factory=list)
    last_prompt: str = ""
    """The rendered text the model was last given."""

    def __post_init__(self) -> None:
        if self.context is None:
            self.context = model_context(self.model, self.tokenizer)
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be a positive number", key="max_new_tokens",
                              found=repr(self.max_new_tokens), expected="1 or more")
        if self.rag is None and self.max_new_tokens >= self.context:
            raise ConfigError("max_new_tokens leaves no room for the conversation", key="max_new_tokens",
                              found=f"{self.max_new_tokens} of a {self.context}-token context",
                              expected=f"fewer than {self.context}, e.g. {max(1, self.context // 4)}")
        if self.temperature < 0:
            raise ConfigError("temperature cannot be negative", key="temperature", found=repr(self.temperature),
                              expected="0 (greedy) or more")

    # -- what the model sees ------------------------------------------------------------------------------------------

    def conversation(self) -> list[dict[str, str]]:
        """The system prompt and the user/assistant turns: what /save writes."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self.history]

    def messages(self) -> list[dict[str, str]]:
        """What the model is given: the system prompt, the fixed turns, then the history."""
        return self._head() + [dict(m) for m in self.history]

    def _head(self) -> list[dict[str, str]]:
        """The messages that never leave: the system prompt and the fixed turns."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self.turns]

    def prompt_tokens(self, messages: Sequence[dict[str, str]] | None = None) -> int:
        """Tokens of the messages rendered with the chat template and the assistant's header, as `generate` counts."""
        from tailorlm.models.generate import render_prompt

        text = render_prompt(self.tokenizer, list(self.messages() if messages is None else messages))
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + _virtual_tokens(self.model)

    @property
    def budget(self) -> int:
        """The most prompt tokens that leave room for `max_new_tokens`."""
        assert self.context is not None
        return self.context - self.max_new_tokens

    def fit(self) -> int:
        """Drop the oldest user/assistant pairs until the prompt fits the budget; return how many pairs went.

        ModelError, dropping nothing, when even the system prompt, the fixed turns and the last user message alone do
        not fit.
        """
        alone = self.prompt_tokens(self._head() + self.history[-1:])
        if alone > self.budget:
            raise ModelError("the message does not fit the model's context", found=f"{alone} prompt tokens",
                             expected=f"at most {self.budget} ({self.context} less {self.max_new_tokens} for the "
                             "answer)",
                             hint="Write a shorter message, lower --max-new-tokens, or use a shorter system prompt")
        dropped = 0
        while len(self.history) > 1 and self.prompt_tokens() > self.budget:
            del self.history[: 2 if self.history[1]["role"] == "assistant" else 1]
            dropped += 1
        return dropped

    # -- turns and commands -------------------------------------------------------------------------------------------

    def ask(self, text: str, *, on_text: Callable[[str], None] | None = None,
            on_note: Callable[[str], None] | None = None) -> Reply:
        """Add the user's message, make room for it, stream the answer to `on_text` and add it to the history.

        `on_note` hears, before the answer starts, that old turns were dropped.
        """
        self.history.append({"role": "user", "content": text})
        try:
            if self.rag is not None:
                reply = self._ask_rag(text, on_text)
            else:
                reply = self._ask_model(on_note, on_text)
        except BaseException:
            if self.history and self.history[-1]["role"] == "user":
                self.history.pop()
            raise
        self.history.append({"role": "assistant", "content": reply.text})
        return reply

    def _ask_model(self, on_note: Callable[[str], None] | None, on_text: Callable[[str], None] | None) -> Reply:
        from tailorlm.models.generate import generate, render_prompt

        dropped = self.fit()
        if dropped and on_note is not None:
            on_note(dropped_note(dropped, self.context or 0))
        messages = self.messages()
        self.last_prompt = render_prompt(self.tokenizer, messages)
        tokens = self.prompt_tokens(messages)
        text = generate(self.model, self.tokenizer, messages, max_new_tokens=self.max_new_tokens,
                        temperature=self.temperature, on_text=on_text)
        return Reply(text, tokens, dropped)

    def _ask_rag(self, question: str, on_text: Callable[[str], None] | None) -> Reply:
        answer = self.rag.ask(question, on_text=on_text, temperature=self.temperature)
        self.last_prompt = question
        return Reply(answer.text, 0, 0, answer.sources_text())

    def reset(self) -> None:
        """Forget the conversation; the system prompt stays."""
        self.history.clear()

    def set_system(self, text: str | None) -> None:
        """Replace the system prompt (None or blank: none)."""
        self.system = text if text and text.strip() else None

    def save(self, path: str | Path) -> Path:
        """Write the conversation as `{"messages": [...]}` JSON, atomically (a temporary file, then a rename)."""
        path = Path(path).expanduser()
        if path.is_dir():
            raise ConfigError("cannot save the conversation over a folder", where=str(path), expected="a file name")
        if not path.parent.is_dir():
            raise ConfigError("the folder to save into does not exist", where=str(path.parent),
                              expected="an existing folder")
        text = json.dumps({"messages": self.conversation()}, indent=1, ensure_ascii=False) + "\n"
        return write_atomic(path, text)

    def handle(self, line: str, *, on_text: Callable[[str], None] | None = None,
               on_note: Callable[[str], None] | None = None) -> Outcome:
        """Act on one input line: a /command, or a message to answer."""
        stripped = line.strip()
        if not stripped:
            return Outcome()
        if not stripped.startswith("/"):
            return Outcome(reply=self.ask(stripped, on_text=on_text, on_note=on_note))
        command, _, rest = stripped.partition(" ")
        rest = rest.strip()
        if command == "/exit":
            return Outcome(exit=True)
        if command == "/reset":
            self.reset()
            return Outcome(note="conversation cleared")
        if command == "/system":
            if not rest:
                return Outcome(note=f"system prompt: {self.system}" if self.system else "no system prompt")
            self.set_system(rest)
            note = "system prompt replaced"
            if self.rag is not None:
                note += " (kept in /save; a RAG specialist answers with its own prompt)"
            return Outcome(note=note)
        if command == "/save":
            if not rest:
                return Outcome(note="usage: /save FILE")
            saved = self.save(rest)
            return Outcome(note=f"saved {len(self.conversation())} messages to {saved}")
        return Outcome(note=f"unknown command {command}; " + command_list())


def command_list() -> str:
    """The commands the chat understands, on one line."""
    return "commands: " + ", ".join(f"{name} ({what})" for name, what in COMMANDS.items())


def dropped_note(pairs: int, context: int) -> str:
    """The line that says old turns were dropped."""
    turns = "turn" if pairs == 1 else "turns"
    return f"(dropped the {pairs} oldest {turns} to fit the {context}-token context)"


def run_chat(session: ChatSession, *, read: Callable[[str], str] | None = None, console: Any = None,
             prompt: str = "> ") -> int:
    """Read lines with `read` (default `input`) and answer them on `console` (a rich Console) until /exit, Ctrl-D
    or Ctrl-C; returns 0."""
    read = read or input
    if console is None:
        from rich.console import Console

        console = Console(highlight=False, soft_wrap=True)

    def dim(text: str) -> None:
        console.print(text, style="dim", markup=False, highlight=False, soft_wrap=True)

    def piece(text: str) -> None:
        console.print(text, end="", markup=False, highlight=False, soft_wrap=True)

    for note in session.notes:
        dim(note)
    while True:
        try:
            line = read(prompt)
        except (EOFError, KeyboardInterrupt):
            console.print()
            return 0
        try:
            outcome = session.handle(line, on_text=piece, on_note=dim)
        except KeyboardInterrupt:
            console.print()
            return 0
        except TailorError as err:
            console.print(f"error: {err}", style="red", markup=False, highlight=False, soft_wrap=True)
            continue
        if outcome.exit:
            return 0
        if outcome.reply is not None:
            console.print()
            if outcome.reply.sources:
                dim(outcome.reply.sources)
        if outcome.note:
            dim(outcome.note)


# -- opening a target ----------------------------------------------------------------------------------------------


def open_chat(target: str | Path, *, system: str | None = None, max_new_tokens: int | None = None,
              temperature: float = 0.0, device: str | None = None, weights: str = "fp32") -> ChatSession:
    """A session with a model reference, a trained specialist, a prompting specialist or a RAG specialist.

    `system` replaces the specialist's system prompt when given; `max_new_tokens` defaults to a RAG specialist's
    own setting, and to DEFAULT_MAX_NEW_TOKENS for the others. `weights="fp16"` stores the weights in fp16 on the
    CPU for faster answers (`serving.compact`); "fp32" keeps them exact.
    """
    from tailorlm.serving.compact import check_weights, store_weights

    check_weights(weights)  # before the model loads
    session = _open(target, system=system, max_new_tokens=max_new_tokens, temperature=temperature, device=device)
    why_not = store_weights(session.model, weights)
    if why_not:
        session.notes.append(f"{why_not}; the weights stay as they are")
    return session


def _open(target: str | Path, *, system: str | None, max_new_tokens: int | None, temperature: float,
          device: str | None) -> ChatSession:
    from tailorlm.strategies.base import MANIFEST, TaskPrompt, load_specialist, read_manifest
    from tailorlm.strategies.rag import is_rag_specialist

    folder = Path(target)
    if is_rag_specialist(folder):
        return _rag_session(folder, system=system, max_new_tokens=max_new_tokens, temperature=temperature,
                            device=device)
    max_new_tokens = DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens
    if not (folder / MANIFEST).is_file():
        from tailorlm.models.load import load_model

        model, tokenizer = load_model(str(target), device=device)
        return _session(model, tokenizer, str(target), system=system, max_new_tokens=max_new_tokens,
                        temperature=temperature)
    from tailorlm.strategies.prompting import PromptSpecialist, is_prompt_specialist

    manifest = read_manifest(folder)
    if manifest.objective in ("classify", "seq2seq"):
        kind = "a classification-head" if manifest.objective == "classify" else "an encoder-decoder"
        raise ModelError(f"{kind} specialist cannot chat", where=str(folder), key="objective",
                         found=repr(manifest.objective),
                         expected="a model reference or a specialist that writes text (objective sft or pretrain, "
                         "prompting or RAG)", hint="Score it with `tailor eval` instead")
    if is_prompt_specialist(folder):
        spec = PromptSpecialist.load(folder)
        model, tokenizer, _ = load_specialist(folder, device=device)
        own_system, turns, notes = prompt_turns(spec, manifest.config.get("task"))
        return _session(model, tokenizer, str(folder), system=system if system is not None else own_system,
                        turns=turns, notes=notes, max_new_tokens=max_new_tokens, temperature=temperature)
    model, tokenizer, _ = load_specialist(folder, device=device)
    trained = TaskPrompt.of(manifest)
    if trained is not None:
        own_system, _, _ = prompt_turns(trained, manifest.config.get("task"))
        system = system if system is not None else own_system
    return _session(model, tokenizer, str(folder), system=system, max_new_tokens=max_new_tokens,
                    temperature=temperature)


def _rag_session(folder: Path, *, system: str | None, max_new_tokens: int | None, temperature: float,
                 device: str | None) -> ChatSession:
    """A session whose answers come from a RAG specialist (closed by the caller through `session.rag.close()`)."""
    from tailorlm.strategies.rag import RagSpecialist

    overrides = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
    rag = RagSpecialist.load(folder, overrides=overrides, device=device)
    try:
        _require_template(rag.tokenizer, folder)
        _stop_at_end_of_turn(rag.model, rag.tokenizer)
        return ChatSession(rag.model, rag.tokenizer, system=system, max_new_tokens=rag.settings.max_new_tokens,
                           temperature=temperature, rag=rag, name=str(folder))
    except BaseException:
        rag.close()
        raise


def prompt_turns(spec: Any, task_info: dict[str, Any] | None = None
                 ) -> tuple[str | None, list[dict[str, str]], list[str]]:
    """(system prompt, shot turns, notes) of a prompting specialist (or a trained one's `TaskPrompt`) for chat; see
    the module docstring."""
    from tailorlm.tasks.task import Task

    info = dict(task_info or {})
    answer = info.get("answer") or "text"
    labels = info.get("labels") if answer == "label" else None
    if isinstance(labels, list):
        labels = {str(v): str(v) for v in labels}
    task = Task(name=str(info.get("name") or "chat"), instruction=spec.instruction or "", system=spec.system,
                answer=answer, labels=labels, metric="accuracy", data=None,  # type: ignore[arg-type]
                input_template=info.get("input_template"))
    bare = dataclasses.replace(task, instruction="", answer="text", labels=None)
    parts = [p.strip() for p in (spec.system, spec.instruction) if p and p.strip()]
    if answer == "label" and labels:
        parts.append("Answer with one of: " + ", ".join(labels.values()) + ".")
    turns: list[dict[str, str]] = []
    for shot in spec.shots:
        turns += [{"role": "user", "content": bare.user_text(shot)},
                  {"role": "assistant", "content": task.answer_text(shot) if labels or answer != "label"
                   else str(shot.references[0])}]
    notes = []
    if spec.selection == "knn":
        notes.append("(this specialist picks its few-shot examples per question by kNN; chat shows none)")
    return "\n\n".join(parts) or None, turns, notes


def model_context(model: Any, tokenizer: Any) -> int:
    """Tokens the model reads at once: its config's max_position_embeddings, else the tokenizer's limit."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and limit > 0:
        return limit
    length = getattr(tokenizer, "model_max_length", None)
    return int(length) if isinstance(length, int) and 0 < length < _SANE_MAX_LENGTH else _DEFAULT_CONTEXT


def _session(model: Any, tokenizer: Any, name: str, **options: Any) -> ChatSession:
    _require_template(tokenizer, name)
    _stop_at_end_of_turn(model, tokenizer)
    return ChatSession(model, tokenizer, name=name, **options)


def _require_template(tokenizer: Any, where: str | Path) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("the model has no chat template, so it cannot be given a conversation", where=str(where),
                         found="no chat_template in its tokenizer",
                         expected="an instruct or chat model (such as smollm2-135m-instruct) or a specialist trained "
                         "with --objective sft")


def _stop_at_end_of_turn(model: Any, tokenizer: Any) -> None:
    """Make generation stop at the template's end-of-turn token too (a ChatML template on a base tokenizer whose
    end-of-text token is another one)."""
    from tailorlm.data.templates import end_of_turn_token

    try:
        token = tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))
    except ModelError:
        return
    config = getattr(model, "generation_config", None)
    if config is None or token is None or token == tokenizer.unk_token_id:
        return
    current = config.eos_token_id
    ids = list(current) if isinstance(current, (list, tuple)) else ([] if current is None else [current])
    if token not in ids:
        config.eos_token_id = ids + [token]


def _virtual_tokens(model: Any) -> int:
    """Virtual tokens a PEFT prompt-learning adapter (prompt or P-tuning) puts before the prompt."""
    config = getattr(model, "active_peft_config", None)
    if getattr(config, "is_prompt_learning", False):
        return int(getattr(config, "num_virtual_tokens", 0) or 0)
    return 0
