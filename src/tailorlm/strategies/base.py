"""The Specialist: what a strategy produces — base model reference, optional adapter, template, manifest."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tailorlm import __version__
from tailorlm.errors import ModelError, TailorError

MANIFEST = "specialist.json"
FORMAT_VERSION = 1


@dataclass
class Manifest:
    """What a specialist folder holds and how it was made."""

    base_model: str
    """The model reference the user gave."""
    base_model_path: str
    """Where that reference resolved to when the specialist was made."""
    strategy: str
    objective: str
    weights: str
    """'adapter' (PEFT files), 'full' (model.safetensors) or 'none' (prompting only)."""
    labels: list[str] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    data: dict[str, dict[str, str]] = field(default_factory=dict)
    """split -> {file: sha256}."""
    steps: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    tailorlm_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def library_versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"tailorlm": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__}


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (read in blocks)."""
    from tailorlm.models.sources import sha256_of

    return sha256_of(Path(path))


def read_manifest(folder: Path) -> Manifest:
    """Read and check a specialist's manifest, with a clear error for other folders and newer formats."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ModelError("not a tailorlm specialist folder", where=str(folder), found=f"no {MANIFEST}",
                         expected="a folder written by `tailor train` (or another strategy)")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise ModelError("the specialist was made by a newer tailorlm", where=str(path),
                         found=f"format {data.get('format_version')}", expected=f"format {FORMAT_VERSION} or older",
                         hint="Upgrade tailorlm")
    known = set(Manifest.__dataclass_fields__)
    return Manifest(**{k: v for k, v in data.items() if k in known})


def task_record(task: Any) -> dict[str, Any]:
    """The prompt a task renders, as a manifest's `config["task"]` keeps it for chat and serving to render again."""
    return {"name": task.name, "instruction": task.instruction, "system": task.system, "answer": task.answer,
            "labels": task.labels, "input_template": task.input_template}


def record_task(folder: str | Path, task: Any) -> Manifest:
    """Add `task`'s prompt to a trained specialist's manifest (rewritten atomically), so that `tailor chat` and
    `tailor serve` wrap what the user types as the specialist saw it in training; returns the new manifest."""
    from tailorlm.files import write_atomic

    manifest = read_manifest(Path(folder))
    manifest.config = {**manifest.config, "task": task_record(task)}
    write_atomic(Path(folder) / MANIFEST, json.dumps(manifest.to_dict(), indent=1, ensure_ascii=False, default=str))
    return manifest


@dataclass
class TaskPrompt:
    """A trained specialist's saved task prompt in the shape of a prompt specialist: instruction, system, no shots."""

    instruction: str
    system: str | None = None
    shots: list[Any] = field(default_factory=list)
    selection: str = "fixed"

    @classmethod
    def of(cls, manifest: Manifest) -> "TaskPrompt | None":
        """The prompt of a specialist trained by `tailor compare`; None for one without a saved task."""
        saved = manifest.config.get("task")
        if manifest.weights == "none" or not isinstance(saved, dict):
            return None
        return cls(instruction=str(saved.get("instruction") or ""), system=saved.get("system") or None)

    def shots_for(self, example: Any) -> list[Any]:
        return []


def manifest_or_none(folder: str | Path) -> Manifest | None:
    """The manifest of `folder`, or None when the folder holds no readable specialist manifest (for "is it a ...?")."""
    try:
        if not (Path(folder) / MANIFEST).is_file():
            return None
        return read_manifest(Path(folder))
    except (OSError, ValueError, TypeError, TailorError):
        return None


def save_specialist(output: Path, model: Any, tokenizer: Any, manifest: Manifest,
                    state_dict: dict[str, Any] | None = None) -> None:
    """Write weights (or adapter), tokenizer and manifest to a temporary folder, then move them into `output`.

    `state_dict` replaces the model's own weights when the model holds only shards of them (FSDP).
    """
    output.mkdir(parents=True, exist_ok=True)
    stage = output / f".tmp-specialist-{uuid.uuid4().hex[:8]}"
    try:
        extra = {} if state_dict is None else {"state_dict": state_dict}
        model.save_pretrained(stage, safe_serialization=True, **extra)
        tokenizer.save_pretrained(stage)
        (stage / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=1), encoding="utf-8")
        for item in stage.iterdir():
            target = output / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def load_specialist(folder: str | Path, *, dtype: Any = None, device: str | None = None) -> tuple[Any, Any, Manifest]:
    """Load a specialist's model: the base model with its adapter applied (or the full weights), and its tokenizer.

    A specialist with weights 'none' (prompting, RAG) has the model of what it wraps: a model reference or another
    specialist folder (as `lora+rag` wraps a LoRA specialist). What such a strategy adds on top (an index, a prompt)
    is its own loader's to add, e.g. `strategies.rag.RagSpecialist.load`.
    """
    from transformers import AutoTokenizer

    from tailorlm.models.load import load_model

    folder = Path(folder)
    manifest = read_manifest(folder)
    head = {"classify": "sequence-classification", "seq2seq": "seq2seq"}.get(manifest.objective, "causal-lm")
    num_labels = len(manifest.labels) if manifest.labels else None
    if manifest.weights == "none":
        base_ref = manifest.base_model_path if Path(manifest.base_model_path).is_dir() else manifest.base_model
        if (Path(base_ref) / MANIFEST).is_file():
            model, tokenizer, _ = load_specialist(base_ref, dtype=dtype, device=device)
        else:
            from tailorlm.models.info import is_encoder_decoder

            if head == "causal-lm" and is_encoder_decoder(base_ref):  # a prompt over an encoder-decoder (T5, Marian)
                head = "seq2seq"
            model, tokenizer = load_model(base_ref, head=head, num_labels=num_labels, dtype=dtype, device=device)
    elif manifest.weights == "adapter":
        import peft

        base_ref = manifest.base_model_path if Path(manifest.base_model_path).is_dir() else manifest.base_model
        model, _ = load_model(base_ref, head=head, num_labels=num_labels, dtype=dtype, device=device)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        if len(tokenizer) != model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        model = peft.PeftModel.from_pretrained(model, folder)
    else:
        model, tokenizer = load_model(str(folder), head=head, num_labels=num_labels, dtype=dtype, device=device)
    model.eval()
    return model, tokenizer, manifest
