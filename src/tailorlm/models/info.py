"""Describe a model reference without loading its weights: architecture, size, vocabulary, context, chat template."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

from tailorlm.errors import ModelError
from tailorlm.models.hub import MARKER, folder_size, resolve
from tailorlm.models.sources import has_chat_template, weight_files

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx", "max_seq_len")
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model")
MAX_HEADER_BYTES = 100 << 20


@dataclass
class ModelInfo:
    """What `tailor models info` reports about one model folder."""

    reference: str
    path: Path
    architecture: str
    model_type: str | None
    parameters: int
    """Counted from the safetensors headers; a tied output embedding is counted once."""
    vocab_size: int | None
    context_length: int | None
    layers: int | None
    hidden_size: int | None
    chat_template: bool
    weights_dtype: str | None
    disk_bytes: int
    source: str | None
    """Where a cached model came from (a registry package, a GGUF file); None for a folder used in place."""

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


def model_info(ref: str, *, pull_if_missing: bool = True, progress: bool = True) -> ModelInfo:
    """Describe a model reference from its files (config, safetensors headers, tokenizer files)."""
    path = resolve(str(ref), pull_if_missing=pull_if_missing, progress=progress)
    config = _read_json(path / "config.json")
    # Multimodal configs keep the language model's sizes under text_config.
    text = {**config.get("text_config", {}), **config} if isinstance(config.get("text_config"), dict) else config
    architectures = config.get("architectures") or []
    parameters, dtypes = count_parameters(path, tied=config.get("tie_word_embeddings") is True)
    marker = _read_json(path / MARKER) if (path / MARKER).is_file() else {}
    return ModelInfo(
        reference=str(ref),
        path=path,
        architecture=architectures[0] if architectures else str(config.get("model_type", "unknown")),
        model_type=config.get("model_type"),
        parameters=parameters,
        vocab_size=_first(text, ("vocab_size",)),
        context_length=_first(text, CONTEXT_KEYS),
        layers=_first(text, LAYER_KEYS),
        hidden_size=_first(text, HIDDEN_KEYS),
        chat_template=has_chat_template(path),
        weights_dtype=", ".join(sorted(dtypes)) or None,
        disk_bytes=folder_size(path),
        source=marker.get("source"),
    )


def is_encoder_decoder(ref: str, *, progress: bool = False) -> bool:
    """Whether a model reference is an encoder-decoder (T5, BART, Marian): its config says `is_encoder_decoder`."""
    config = resolve(str(ref), progress=progress) / "config.json"
    return config.is_file() and _read_json(config).get("is_encoder_decoder") is True


def count_parameters(folder: Path, *, tied: bool = False) -> tuple[int, set[str]]:
    """Parameter count and weight dtypes read from the safetensors headers (no tensor data is read)."""
    shapes: dict[str, list[int]] = {}
    dtypes: set[str] = set()
    for file in weight_files(folder):
        for name, entry in _safetensors_header(file).items():
            # Integer tensors are buffers such as BERT's position_ids, not parameters.
            if name != "__metadata__" and str(entry.get("dtype", "")).startswith(("F", "BF")):
                shapes[name] = entry["shape"]
                dtypes.add(entry["dtype"])
    total = sum(math.prod(shape) for shape in shapes.values())
    if tied:
        heads = [n for n in shapes if n.endswith("lm_head.weight")]
        embeds = [n for n in shapes if "embed" in n or n.endswith("wte.weight")]
        for head in heads:
            if any(shapes[e] == shapes[head] for e in embeds if e != head):
                total -= math.prod(shapes[head])
    return total, dtypes


def _safetensors_header(file: Path) -> dict:
    with open(file, "rb") as fh:
        raw = fh.read(8)
        size = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if not 0 < size <= MAX_HEADER_BYTES:
            raise ModelError("not a valid safetensors file", where=str(file), found="a corrupt or truncated header")
        try:
            return json.loads(fh.read(size))
        except ValueError as err:
            raise ModelError(
                "not a valid safetensors file", where=str(file), found=f"an unreadable header ({err})"
            ) from err


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelError("cannot read the model's JSON file", where=str(file), found=str(err)) from err
    return data if isinstance(data, dict) else {}


def _first(config: dict, keys: tuple[str, ...]) -> int | None:
    for key in keys:
        if isinstance(config.get(key), int):
            return config[key]
    return None


def format_count(n: int) -> str:
    """A parameter count as people say it: `134.5 M`, `1.2 B`, `30.2 K`."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def format_bytes(n: int) -> str:
    """A size on disk in decimal units: `538.1 MB`."""
    for size, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def format_info(info: ModelInfo) -> str:
    """The human-readable report of `tailor models info`."""

    def value(v: object) -> str:
        return "unknown" if v is None else f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)

    rows = [
        ("model", info.reference),
        ("path", str(info.path)),
        ("architecture", info.architecture + (f" ({info.model_type})" if info.model_type else "")),
        ("parameters", f"{format_count(info.parameters)} ({info.parameters:,})"),
        ("vocabulary size", value(info.vocab_size)),
        ("context length", value(info.context_length)),
        ("layers", value(info.layers)),
        ("hidden size", value(info.hidden_size)),
        ("chat template", "yes" if info.chat_template else "no"),
        ("weights", value(info.weights_dtype) + " safetensors"),
        ("disk size", format_bytes(info.disk_bytes)),
    ]
    if info.source:
        rows.append(("source", info.source))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
