"""Load what `tailor serve` serves: specialists and model references, with adapters sharing one copy of their base.

Every served name becomes a `ServedModel`. Adapter specialists (LoRA, DoRA, IA3) over the same base model are loaded
as one base with several named peft adapters; the engine selects one per batch (`set_adapter`) and serves the base
alone (a plain reference or a prompt specialist on that base) inside `disable_adapter()`. Specialists that cannot
share a batch loop (RAG, prompt-learning adapters, GGUF files) generate one request at a time through `run_alone`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tailorlm.errors import ConfigError, ModelError

# run_alone(prompt_or_messages, sampling, on_text) -> the full text, or an engine.Answer (the text with its token count
# and finish reason); on_text gets the text piece by piece as it is made.
RunAlone = Callable[[Any, Any, Callable[[str], None]], Any]
GENERATIVE_ARCHITECTURES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
LLAMA_CPP_MISSING = ("serving a GGUF file needs the llama.cpp engine, which is not installed: "
                     "pip install llama-cpp-python (it builds from source, several minutes on a small CPU); "
                     "or serve the specialist folder the GGUF was exported from, which the PyTorch engine runs")


@dataclass
class PromptTurns:
    """What a prompt specialist adds to each chat: its system prompt, its few-shot turns and its instruction (a
    specialist trained on a task's prompt adds the same, without shots)."""

    specialist: Any
    """The loaded `PromptSpecialist`, or a trained specialist's `strategies.base.TaskPrompt`."""
    task: Any
    """A `Task` view (instruction, answer form, labels) that renders shots and the user's turn as evaluation does."""

    def apply(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """`messages` with the system prompt and shots put first and the last user turn given the instruction."""
        from tailorlm.tasks.task import TaskExample

        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if last_user is None:
            return list(messages)
        example = TaskExample(id="request", input=messages[last_user]["content"], references=[])
        prefix: list[dict[str, str]] = []
        own_system = [m["content"] for m in messages if m["role"] == "system"]
        system = "\n\n".join(t for t in [self.specialist.system or "", *own_system] if t)
        if system:
            prefix.append({"role": "system", "content": system})
        for shot in self.specialist.shots_for(example):
            prefix += [{"role": "user", "content": self.task.user_text(shot)},
                       {"role": "assistant", "content": self.task.answer_text(shot)}]
        rest = [dict(m) for m in messages if m["role"] != "system"]
        index = [i for i, m in enumerate(messages) if m["role"] != "system"].index(last_user)
        rest[index]["content"] = self.task.user_text(example)
        return prefix + rest


@dataclass
class ServedModel:
    """One name the server answers to, and what answers it."""

    name: str
    source: str
    """What the user gave: a specialist folder, a model reference or a GGUF file."""
    kind: str
    """'generate', 'embed' or 'unavailable'."""
    model: Any = None
    tokenizer: Any = None
    adapter: str | None = None
    """The peft adapter the engine selects for this name; None serves the model as it is."""
    shares_base: bool = False
    """The model is a PeftModel holding adapters of other names: None as `adapter` means the base alone."""
    run_alone: RunAlone | None = None
    """Generation one request at a time (RAG, prompt-learning adapters, llama.cpp); None: the batched engine."""
    prompt: PromptTurns | None = None
    embedder: Any = None
    reason: str | None = None
    """Why an 'unavailable' name cannot answer, and what to install."""
    context: int | None = None
    """Tokens of prompt plus answer the model takes."""
    eos_ids: frozenset[int] = frozenset()
    base_key: str | None = None
    """The folder of the shared base model this name runs on, if any."""
    created: int = field(default_factory=lambda: int(time.time()))

    def chat_messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """The messages the model sees: a prompt specialist's turns (or a trained one's task prompt) added."""
        return self.prompt.apply(messages) if self.prompt else messages

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the chat, rendered by the chat template with the assistant's turn opened."""
        from tailorlm.models.generate import render_prompt

        text = render_prompt(self.tokenizer, self.chat_messages(messages))
        # The chat template wrote any BOS token itself.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_text(self, prompt: str) -> list[int]:
        """Token ids of a plain prompt, with the tokenizer's own special tokens (such as BOS)."""
        return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    @contextlib.contextmanager
    def selected(self) -> Iterator[Any]:
        """The model with this name's adapter active (or every adapter off, for the shared base alone)."""
        if self.shares_base and self.adapter is None:
            with self.model.disable_adapter():
                yield self.model
        else:
            if self.adapter is not None:
                self.model.set_adapter(self.adapter)
            yield self.model


def parse_spec(spec: str) -> tuple[str, str]:
    """(name, source) of one command-line argument: NAME=PATH, or a folder (named after it) or a model reference."""
    name, sep, source = spec.partition("=")
    if sep and name and "/" not in name and not Path(spec).exists():
        return name, source
    source = spec
    path = Path(source)
    if path.exists():
        return (path.stem if path.suffix == ".gguf" else path.resolve().name), source
    return source, source


def load_served(specs: Sequence[str], *, device: str | None = None, dtype: Any = None, weights: str = "fp32",
                on_note: Callable[[str], None] | None = None) -> dict[str, ServedModel]:
    """Load every specialist or model reference in `specs`, sharing base weights between adapter specialists.

    `weights="fp16"` stores the linear layers' weights in half precision on the CPU (`serving.compact`): about
    2-3 times faster decoding, not bit-exact; "fp32" (the default here) serves the weights as they are.
    """
    from tailorlm.models.load import default_device
    from tailorlm.serving.compact import check_weights

    check_weights(weights)
    note = on_note or (lambda text: None)
    device = device or default_device()
    named: dict[str, str] = {}
    for spec in specs:
        name, source = parse_spec(spec)
        if name in named:
            raise ConfigError("two served specialists have the same name", key="SPECIALIST", found=f"{name!r} twice",
                              expected="distinct names; give one as NAME=PATH")
        named[name] = source
    bases = _Bases(device=device, dtype=dtype)
    served: dict[str, ServedModel] = {}
    for name, source in named.items():
        note(f"loading {name} from {source}")
        served[name] = _load_one(name, source, bases, device=device, dtype=dtype, note=note)
    for item in served.values():
        # A base loaded before its first adapter was attached is now wrapped by a PeftModel: serve it through that.
        if item.base_key is not None and item.run_alone is None:
            item.model = bases.models[item.base_key][0]
            item.shares_base = bases.shared(item.base_key)
    if weights == "fp16":
        _compact(served, note)
    return served


def _compact(served: dict[str, ServedModel], note: Callable[[str], None]) -> None:
    """Store the weights of every served language model on the CPU in fp16 (each shared model once)."""
    import torch

    from tailorlm.serving.compact import compact_weights, half_weights_supported

    models = {id(item.model): item.model for item in served.values() if isinstance(item.model, torch.nn.Module)}
    on_cpu = [m for m in models.values() if next(m.parameters()).device.type == "cpu"]
    if len(on_cpu) < len(models):
        note("fp16 weight storage is for the CPU: models on an accelerator keep their dtype")
    if not on_cpu:
        return
    why = half_weights_supported()
    if why:
        note(f"{why}; serving fp32 weights")
        return
    for model in on_cpu:
        compact_weights(model)
    note(f"weights stored in fp16 for faster decoding on the CPU ({len(on_cpu)} model(s)); --weights fp32 for exact fp32")


class _Bases:
    """Base models loaded once by resolved folder; adapters attach to them as named peft adapters."""

    def __init__(self, *, device: str, dtype: Any) -> None:
        self.device, self.dtype = device, dtype
        self.models: dict[str, list[Any]] = {}  # folder -> [model (PeftModel once an adapter is attached), tokenizer]

    def base(self, ref: str) -> tuple[str, Any, Any]:
        from tailorlm.models.hub import resolve
        from tailorlm.models.load import load_model

        folder = str(resolve(ref, progress=False))
        if folder not in self.models:
            model, tokenizer = load_model(folder, device=self.device, dtype=self.dtype, progress=False)
            self.models[folder] = [model, tokenizer]
        return folder, *self.models[folder]

    def attach(self, folder: str, adapter_dir: Path, name: str) -> Any:
        import peft

        entry = self.models[folder]
        if isinstance(entry[0], peft.PeftModel):
            entry[0].load_adapter(str(adapter_dir), adapter_name=name)
        else:
            entry[0] = peft.PeftModel.from_pretrained(entry[0], str(adapter_dir), adapter_name=name)
        entry[0].eval()
        return entry[0]

    def shared(self, folder: str) -> bool:
        import peft

        return isinstance(self.models[folder][0], peft.PeftModel)


def _load_one(name: str, source: str, bases: _Bases, *, device: str, dtype: Any,
              note: Callable[[str], None]) -> ServedModel:
    from tailorlm.strategies.base import MANIFEST, read_manifest
    from tailorlm.strategies.prompting import is_prompt_specialist
    from tailorlm.strategies.rag import is_rag_specialist

    path = Path(source)
    if path.suffix == ".gguf":
        return _gguf(name, source, note)
    if not (path / MANIFEST).is_file():
        return _reference(name, source, bases)
    manifest = read_manifest(path)
    if manifest.objective not in ("sft", "pretrain"):
        raise ModelError("this specialist does not write text, so it cannot be served", where=str(path),
                         key="objective", found=repr(manifest.objective),
                         expected="a specialist trained with objective sft or pretrain, or a prompting or RAG one")
    if is_rag_specialist(path):
        return _rag(name, source, device=device, dtype=dtype)
    if is_prompt_specialist(path):
        return _prompting(name, source, bases, device=device, dtype=dtype, note=note)
    if manifest.weights == "adapter":
        return _task_prompt(_adapter(name, path, manifest, bases, device=device, dtype=dtype), manifest, source)
    if manifest.weights == "full":
        from tailorlm.models.load import load_model

        model, tokenizer = load_model(str(path), device=device, dtype=dtype, progress=False)
        return _task_prompt(_generator(name, source, model, tokenizer), manifest, source)
    base = manifest.base_model_path if Path(manifest.base_model_path).exists() else manifest.base_model
    return dataclasses.replace(_load_one(name, base, bases, device=device, dtype=dtype, note=note), source=source)


def _reference(name: str, source: str, bases: _Bases) -> ServedModel:
    """A model reference: an encoder serves embeddings, a language model the shared base alone."""
    from tailorlm.models.hub import resolve

    folder = resolve(source, progress=False)
    if not _generative(folder):
        from tailorlm.retrieval.embeddings import Embedder

        return ServedModel(name=name, source=source, kind="embed", embedder=Embedder(str(folder)))
    key, model, tokenizer = bases.base(source)
    served = _generator(name, source, model, tokenizer)
    served.base_key = key
    return served


def _adapter(name: str, path: Path, manifest: Any, bases: _Bases, *, device: str, dtype: Any) -> ServedModel:
    """A LoRA-like adapter attached to its (shared) base; prompt-learning adapters and resized vocabularies alone."""
    import peft
    from transformers import AutoTokenizer

    from tailorlm.strategies.base import load_specialist

    try:
        config = peft.PeftConfig.from_pretrained(str(path))
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ModelError("the adapter specialist is missing files", where=str(path),
                         found=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                         expected="adapter_config.json, adapter_model.safetensors and the tokenizer files that "
                                  "`tailor train` writes") from None
    base_ref = manifest.base_model_path if Path(manifest.base_model_path).is_dir() else manifest.base_model
    if config.is_prompt_learning:
        model, tokenizer, _ = load_specialist(path, dtype=dtype, device=device)
        return _generator(name, str(path), model, tokenizer, alone=True)
    try:
        key, base, _ = bases.base(base_ref)
    except ModelError as err:
        raise ModelError("the base model of this adapter specialist is not available", where=str(path),
                         key="base_model", found=f"{manifest.base_model!r}: {err}",
                         expected="the model it was trained on, as a local folder or a built-in pack") from None
    if len(tokenizer) != base.get_input_embeddings().num_embeddings:
        # Training added tokens: this specialist's embeddings differ from the base, so it cannot share them.
        model, tokenizer, _ = load_specialist(path, dtype=dtype, device=device)
        return _generator(name, str(path), model, tokenizer)
    model = bases.attach(key, path, name)
    served = _generator(name, str(path), model, tokenizer)
    served.adapter, served.base_key = name, key
    return served


def _prompting(name: str, source: str, bases: _Bases, *, device: str, dtype: Any,
               note: Callable[[str], None]) -> ServedModel:
    """A prompt specialist: the model it prompts, with its system prompt, shots and instruction added to each chat."""
    from tailorlm.strategies.prompting import PromptSpecialist

    specialist = PromptSpecialist.load(source)
    base = specialist.base_model_path if Path(specialist.base_model_path).exists() else specialist.base_model
    served = _load_one(name, base, bases, device=device, dtype=dtype, note=note)
    if served.kind != "generate":
        raise ModelError("the model of this prompt specialist cannot write text", where=source, found=served.kind)
    served.source, served.prompt = source, PromptTurns(specialist, _task_view(specialist, source))
    return served


def _task_prompt(served: ServedModel, manifest: Any, source: str) -> ServedModel:
    """A specialist trained by `tailor compare` on its task's prompt gets the user's turn wrapped in that prompt."""
    from tailorlm.strategies.base import TaskPrompt

    prompt = TaskPrompt.of(manifest)
    if prompt is not None:
        served.prompt = PromptTurns(prompt, _task_view(prompt, source))
    return served


def _task_view(specialist: Any, source: str) -> Any:
    """The Task that renders this specialist's turns: its instruction and system prompt, the answer form it saved.

    `specialist` is a `PromptSpecialist`, or the `TaskPrompt` of a trained specialist.
    """
    from tailorlm.strategies.base import read_manifest
    from tailorlm.tasks.task import Task

    saved = read_manifest(Path(source)).config.get("task") or {}
    answer = saved.get("answer") or "text"
    labels = saved.get("labels")
    if answer == "label" and not labels:
        # The label words the shots use; without shots there is nothing to list.
        refs = [r for shot in specialist.shots for r in shot.references[:1]]
        labels = {r: r for r in refs} or None
        answer = "label" if labels else "text"
    return Task(name=saved.get("name") or "served", instruction=specialist.instruction, system=specialist.system,
                answer=answer, labels=labels, metric="exact_match", data=None,
                input_template=saved.get("input_template"), source=source)


def _rag(name: str, source: str, *, device: str, dtype: Any) -> ServedModel:
    """A RAG specialist answers one question at a time: retrieve, answer, cite its sources after the answer."""
    from tailorlm.strategies.rag import RagSpecialist

    specialist = RagSpecialist.load(source, device=device, dtype=dtype)

    def run_alone(prompt: Any, sampling: Any, on_text: Callable[[str], None]) -> str:
        return specialist.generate(prompt, max_new_tokens=sampling.max_tokens, on_text=on_text,
                                   **_sampling_args(sampling))

    served = _generator(name, source, specialist.model, specialist.tokenizer)
    served.run_alone = run_alone
    return served


def _generator(name: str, source: str, model: Any, tokenizer: Any, *, alone: bool = False) -> ServedModel:
    served = ServedModel(name=name, source=source, kind="generate", model=model, tokenizer=tokenizer,
                         context=getattr(model.config, "max_position_embeddings", None), eos_ids=_eos_ids(model, tokenizer))
    if alone:
        from tailorlm.models.generate import generate

        def run_alone(prompt: Any, sampling: Any, on_text: Callable[[str], None]) -> str:
            return generate(model, tokenizer, prompt, max_new_tokens=sampling.max_tokens, on_text=on_text,
                            **_sampling_args(sampling))

        served.run_alone = run_alone
    return served


def _gguf(name: str, source: str, note: Callable[[str], None]) -> ServedModel:
    """A GGUF file runs on the llama.cpp engine; without llama-cpp-python the server still starts and says so."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        note(f"{name}: {LLAMA_CPP_MISSING}")
        return ServedModel(name=name, source=source, kind="unavailable", reason=LLAMA_CPP_MISSING)
    from tailorlm.serving.gguf_engine import load_gguf

    model = load_gguf(source)
    note(f"{name}: llama.cpp engine, context {model.context} tokens")
    return GgufServed(name=name, source=source, kind="generate", model=model, tokenizer=model.tokens,
                      run_alone=model.run_alone, context=model.context, eos_ids=frozenset({model.tokens.eos_token_id}))


@dataclass
class GgufServed(ServedModel):
    """A GGUF file served by llama.cpp: its own tokenizer and chat template render and count the prompt."""

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return self.model.encode_chat(self.chat_messages(messages))

    def encode_text(self, prompt: str) -> list[int]:
        return self.model.tokens(prompt)["input_ids"]


def _sampling_args(sampling: Any) -> dict[str, Any]:
    return {"temperature": sampling.temperature, "top_p": sampling.top_p, "seed": sampling.seed}


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Tokens that end an answer: the model's and tokenizer's EOS, and the chat template's end-of-turn token."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    ids.add(tokenizer.eos_token_id)
    if getattr(tokenizer, "chat_template", None):
        from tailorlm.data.templates import end_of_turn_token

        try:
            ids.add(tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer)))
        except Exception:  # noqa: BLE001 - a template without an end-of-turn token still has EOS
            pass
    return frozenset(i for i in ids if isinstance(i, int) and i >= 0)


def _generative(folder: Path) -> bool:
    """Whether a model folder holds a language model (else an encoder, served for embeddings)."""
    if (folder / "modules.json").is_file():
        return False
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # let the loader give its own error
    architectures = config.get("architectures") or []
    return not architectures or any(a.endswith(GENERATIVE_ARCHITECTURES) for a in architectures)
