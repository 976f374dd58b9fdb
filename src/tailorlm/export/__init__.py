"""Export a specialist (or a model reference) as a merged Hugging Face folder or a GGUF file, checked for parity.

    result = export("runs/medquad-lora", format="gguf", output="exports/medquad", quant="f16")
    result.report.passed, result.files

Every export is written to a temporary folder beside `output`, reloaded from disk and compared with the specialist in
memory (`parity.py`), and only then moved into place, with its `parity.json`. An existing `output` is replaced only
with `overwrite=True`.
"""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tailorlm.errors import ConfigError, ModelError
from tailorlm.export.gguf import QUANTS
from tailorlm.export.parity import ParityReport

FORMATS = ("hf", "gguf")
_HEADS = {"classify": "sequence-classification", "seq2seq": "seq2seq"}


@dataclass
class ExportResult:
    """Where the export went, what it holds and how its parity check came out."""

    output: Path
    format: str
    quant: str | None
    files: list[str]
    report: ParityReport
    notes: list[str] = field(default_factory=list)
    gguf_file: Path | None = None
    """The GGUF file inside `output` (gguf exports)."""
    llama_cpp: ParityReport | None = None
    """A GGUF export read back by llama.cpp, when llama-cpp-python is installed."""
    llama_cpp_skipped: str | None = None
    """Why a GGUF export was not read back by llama.cpp."""

    @property
    def passed(self) -> bool:
        return self.report.passed and (self.llama_cpp is None or self.llama_cpp.passed)

    @property
    def failures(self) -> list[str]:
        extra = [f"llama.cpp: {f}" for f in self.llama_cpp.failures] if self.llama_cpp else []
        return [*self.report.failures, *extra]


@dataclass
class Source:
    """What is being exported: the model in memory, its tokenizer and how it was made."""

    model: Any
    tokenizer: Any
    head: str
    name: str
    strategy: str | None = None


def export(source: str | Path, *, format: str, output: str | Path, quant: str | None = None,
           overwrite: bool = False, device: str = "cpu", say: Callable[[str], None] = lambda _: None) -> ExportResult:
    """Export `source` (a specialist folder or a model reference) to `output`; see the module docstring."""
    from tailorlm.export.parity import compare, logits_of, parity_inputs, write_report

    quant = _check_request(format, quant)
    output = Path(output)
    _check_output(output, overwrite)
    say(f"loading {source}")
    item = load_source(source, device=device)
    if format == "gguf":
        _check_gguf(item, source, quant)
    notes = _notes_for(item, format, output)
    inputs = parity_inputs(item.tokenizer)
    say(f"computing the specialist's logits on {len(inputs)} prompts")
    reference = logits_of(item.model, inputs)

    stage = output.parent / f".{output.name}.tmp-export-{uuid.uuid4().hex[:8]}"
    stage.mkdir(parents=True)
    try:
        gguf_name = f"{item.name}-{quant}.gguf" if format == "gguf" else None
        write = _write_hf if gguf_name is None else _write_gguf
        exported, exported_tokenizer, check = write(item, stage, quant, gguf_name, say)
        item.model = None  # merged in place: only the reference logits stand for the specialist from here
        say("comparing logits")
        report = compare(reference, logits_of(exported, inputs), export=check, inputs=inputs,
                         exported_tokenizer=exported_tokenizer, reference_tokenizer=item.tokenizer)
        exported = None
        llama_cpp, skipped = None, None
        if gguf_name is not None:
            llama_cpp, skipped = _llama_cpp_parity(stage / gguf_name, reference, inputs, item.tokenizer, check, say)
        extra = {"llama_cpp": llama_cpp.to_dict() if llama_cpp else {"skipped": skipped}} if gguf_name else {}
        write_report(report, stage, source=str(source), format=format, quant=quant, notes=notes, **extra)
        files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
        _publish(stage, output)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return ExportResult(output=output, format=format, quant=quant, files=files, report=report, notes=notes,
                        gguf_file=output / gguf_name if gguf_name else None, llama_cpp=llama_cpp,
                        llama_cpp_skipped=skipped)


LLAMA_CPP_SKIPPED = ("llama-cpp-python is not installed: pip install llama-cpp-python (it builds from source, several "
                     "minutes on a small CPU) to also check the file as llama.cpp reads it")


def _llama_cpp_parity(path: Path, reference: list[Any], inputs: list[Any], tokenizer: Any, check: str,
                      say: Callable[[str], None]) -> tuple[ParityReport | None, str | None]:
    """The GGUF file read back by llama.cpp and compared like the transformers reading; or why it was not."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return None, LLAMA_CPP_SKIPPED
    from tailorlm.export.parity import compare, llama_cpp_logits, unreadable

    say("reading the GGUF file back with llama.cpp")
    try:
        logits, tokens = llama_cpp_logits(path, inputs)
    except (ValueError, RuntimeError) as err:  # llama.cpp cannot load or run the file: the check fails, files stay
        return unreadable(check, inputs, "llama.cpp", err), None
    try:
        return compare(reference, logits, export=check, inputs=inputs, exported_tokenizer=tokens,
                       reference_tokenizer=tokenizer, reader="llama.cpp"), None
    except (ValueError, RuntimeError) as err:  # e.g. a vocabulary of another size: logits that cannot be compared
        return unreadable(check, inputs, "llama.cpp", err), None
    finally:
        tokens.llm.close()


def _write_hf(item: Source, stage: Path, quant: None, gguf_name: None,
              say: Callable[[str], None]) -> tuple[Any, Any, str]:
    """Save the merged model (or base + adapter) into `stage` and load it back as a user would."""
    from tailorlm.export import merge

    prompt_learning = merge.is_prompt_learning(item.model)
    say("saving the base model and the adapter" if prompt_learning else "merging the adapter and saving")
    merge.save_hf(item.model, item.tokenizer, stage)
    say("reloading the export with transformers")
    model, tokenizer = merge.load_hf(stage, item.head, prompt_learning=prompt_learning)
    return model, tokenizer, "hf"


def _write_gguf(item: Source, stage: Path, quant: str, gguf_name: str,
                say: Callable[[str], None]) -> tuple[Any, Any, str]:
    """Write the merged model as one GGUF file into `stage` and load it back with transformers' GGUF loader."""
    from tailorlm.export import merge
    from tailorlm.export.gguf import write_gguf

    say(f"merging and writing {gguf_name}")
    write_gguf(merge.plain_model(merge.merge(item.model)), item.tokenizer, stage / gguf_name, quant, name=item.name)
    say("reloading the GGUF file with transformers")
    model, tokenizer = load_gguf(stage / gguf_name)
    return model, tokenizer, quant


def _check_gguf(item: Source, source: str | Path, quant: str) -> None:
    """Refuse what cannot become a GGUF file before any work: prompt-learning adapters, other architectures."""
    from tailorlm.export.gguf import check_supported
    from tailorlm.export.merge import adapter_method, is_prompt_learning

    if is_prompt_learning(item.model):
        raise ConfigError(f"a {item.strategy or 'prompt-learning'} specialist cannot be exported to GGUF",
                          where=str(source), key="format",
                          found=f"adapter {adapter_method(item.model)} (virtual tokens, no weights to merge)",
                          expected="--format hf, which exports the base model plus the adapter folder")
    check_supported(_base_of(item.model), quant)


def load_gguf(path: Path) -> tuple[Any, Any]:
    """Load a GGUF file the way a user would: transformers' GGUF loader (de-quantized to float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tailorlm.models.sources import _transformers_progress

    with _transformers_progress(False):
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model.eval(), tokenizer


def load_source(source: str | Path, *, device: str = "cpu") -> Source:
    """A specialist folder (with its adapter applied), or any model reference, in float32 on `device`."""
    from tailorlm.strategies.base import MANIFEST, load_specialist, read_manifest

    path = Path(source)
    if path.is_dir() and (path / MANIFEST).is_file():
        manifest = read_manifest(path)
        _check_specialist_files(path, manifest)
        head = _HEADS.get(manifest.objective, "causal-lm")
        try:
            model, tokenizer, _ = load_specialist(path, dtype="float32", device=device)
        except ModelError as err:
            if manifest.weights != "full" and not _base_available(manifest):
                raise ModelError("the specialist's base model is not available", where=str(path / MANIFEST),
                                 found=f"base_model {manifest.base_model!r} (made from {manifest.base_model_path})",
                                 expected="that model reference to resolve: a built-in pack, an existing folder, "
                                 "or a model in the cache", hint=str(err)) from err
            raise
        return Source(model, tokenizer, head, _slug(path.name), manifest.strategy)
    if path.is_dir() and not (path / "config.json").is_file() and not any(path.glob("*.gguf")):
        raise ModelError("not a specialist folder or a model folder", where=str(path),
                         found="no specialist.json and no config.json",
                         expected="a folder written by `tailor train`, a Hugging Face model folder, a .gguf file or "
                         "a built-in model name")
    from tailorlm.models.load import load_model

    model, tokenizer = load_model(str(source), dtype="float32", device=device)
    return Source(model, tokenizer, "causal-lm", _slug(path.stem if path.suffix == ".gguf" else path.name))


def _check_request(format: str, quant: str | None) -> str | None:
    if format not in FORMATS:
        raise ConfigError("unknown export format", key="format", found=repr(format),
                          expected="one of " + ", ".join(FORMATS))
    if format == "hf":
        if quant is not None:
            raise ConfigError("--quant applies only to --format gguf", key="quant", found=repr(quant),
                              expected="no --quant with --format hf (the folder keeps float32 weights)")
        return None
    quant = (quant or "f16").lower()
    if quant not in QUANTS:
        raise ConfigError("unsupported GGUF quantization", key="quant", found=repr(quant),
                          expected="one of " + ", ".join(QUANTS))
    return quant


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise ConfigError("the export output must be a folder", where=str(output), found="a file",
                          expected="a new or empty folder (or an export folder with --overwrite)")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ConfigError("the export output folder already holds files", where=str(output),
                          expected="a new or empty folder", hint="Pass --overwrite to replace it")


def _check_specialist_files(folder: Path, manifest: Any) -> None:
    """Name the files a specialist folder should hold but does not, before anything loads."""
    weights = {"adapter": [("adapter_config.json",), ("adapter_model.safetensors",)],
               "full": [("config.json",), ("model.safetensors", "model.safetensors.index.json")],
               "none": []}.get(manifest.weights)
    if weights is None:
        raise ModelError("the specialist's manifest names an unknown kind of weights",
                         where=str(folder / "specialist.json"), key="weights", found=repr(manifest.weights),
                         expected="'adapter', 'full' or 'none'")
    tokenizer = [] if manifest.weights == "none" else [("tokenizer.json", "tokenizer_config.json")]
    missing = [" or ".join(names) for names in weights + tokenizer if not any((folder / n).is_file() for n in names)]
    if missing:
        raise ModelError("the specialist folder is missing files", where=str(folder), found="no " + ", ".join(missing),
                         expected=f"the files `tailor train` writes for weights {manifest.weights!r}")


def _base_available(manifest: Any) -> bool:
    from tailorlm.models.hub import resolve

    if Path(manifest.base_model_path).is_dir():
        return True
    try:
        resolve(manifest.base_model, pull_if_missing=False, progress=False)
    except ModelError:
        return False
    return True


def _base_of(model: Any) -> Any:
    from tailorlm.export.merge import is_peft

    return model.get_base_model() if is_peft(model) else model


def _notes_for(item: Source, format: str, output: Path) -> list[str]:
    from tailorlm.export.merge import adapter_method, is_prompt_learning

    notes = []
    method = adapter_method(item.model)
    if method and is_prompt_learning(item.model) and format == "hf":
        notes.append(f"a {method} adapter adds virtual tokens rather than changing weights, so it cannot be merged: "
                     "exported the base model plus the adapter in adapter/ (load it with peft.PeftModel."
                     f"from_pretrained(AutoModelForCausalLM.from_pretrained('{output}'), '{output / 'adapter'}'))")
    elif method:
        notes.append(f"merged the {method} adapter into the base weights")
    if item.strategy in ("zero_shot", "few_shot", "prompt_search", "rag") or (item.strategy or "").endswith("+rag"):
        notes.append(f"the {item.strategy} strategy's prompt, examples or index are not part of the model: exported "
                     "the model it wraps")
    return notes


def _publish(stage: Path, output: Path) -> None:
    """Move the finished export into `output`, replacing what is there only after the new files are complete."""
    backup = None
    if output.exists():
        backup = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
        output.rename(backup)
    try:
        stage.rename(output)
    except OSError:
        if backup is not None:
            backup.rename(output)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"
