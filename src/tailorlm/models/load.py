"""Load a model reference as a transformers model and tokenizer: safetensors only, no checkpoint code unless asked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tailorlm.errors import ConfigError, ModelError
from tailorlm.models.hub import resolve

HEADS = {
    "causal-lm": "AutoModelForCausalLM",
    "encoder": "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "seq2seq": "AutoModelForSeq2SeqLM",
}
DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def default_device() -> str:
    """`cuda` when a GPU is visible, else `cpu`."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: Any, device: str) -> Any:
    """A torch dtype from a name or dtype; by default float32 on CPU, bfloat16 on CUDA (float16 where unsupported)."""
    import torch

    if dtype is None:
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = DTYPES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise ConfigError("unknown dtype", key="dtype", found=repr(dtype), expected="one of " + ", ".join(DTYPES))
    return getattr(torch, name)


def load_tokenizer(ref: str | Path, *, trust_remote_code: bool = False, progress: bool = True) -> Any:
    """The tokenizer of a model reference (pulling or converting the model first when needed)."""
    from transformers import AutoTokenizer

    path = resolve(str(ref), progress=progress)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (ValueError, OSError) as err:
        raise _load_error(path, "tokenizer", err) from err


def load_model(
    ref: str | Path,
    *,
    head: str = "causal-lm",
    num_labels: int | None = None,
    dtype: Any = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> tuple[Any, Any]:
    """Load `(model, tokenizer)` for a reference with the given head, in eval mode, on `device` in `dtype`."""
    import transformers

    if head not in HEADS:
        raise ConfigError("unknown model head", key="head", found=repr(head), expected="one of " + ", ".join(HEADS))
    if num_labels is not None and head != "sequence-classification":
        raise ConfigError(
            "num_labels applies only to head 'sequence-classification'", key="num_labels", found=f"head {head!r}"
        )
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    path = resolve(str(ref), progress=progress)
    _check_head(path, head)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code, progress=progress)
    # A checkpoint that already classifies into a different number of classes gets a new head, not an error.
    extra = {"num_labels": num_labels, "ignore_mismatched_sizes": True} if num_labels is not None else {}
    auto_class = getattr(transformers, HEADS[head])
    try:
        model, info = auto_class.from_pretrained(
            path,
            dtype=torch_dtype,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            **extra,
        )
    except (ValueError, OSError, KeyError) as err:
        if "Unrecognized configuration class" in str(err):
            expected = {"seq2seq": "an encoder-decoder model such as T5 or BART",
                        "sequence-classification": "an encoder or decoder with a classification form",
                        "causal-lm": "a decoder (GPT- or Llama-style) model"}.get(head, f"a model with a {head} form")
            raise ModelError(f"this model has no {head!r} form", where=str(path),
                             found=f"model type {_model_type(path)!r}",
                             expected=expected) from err
        raise _load_error(path, f"model with head {head!r}", err) from err
    missing = sorted(info.get("missing_keys") or [])
    # A classification head is new by design; any other missing weight would silently be random.
    if missing and head != "sequence-classification":
        raise ModelError(
            f"the checkpoint has no weights for part of a {head!r} model (they would be random)",
            where=str(path),
            found="missing " + ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""),
            expected="a checkpoint saved with this head",
        )
    if model.config.pad_token_id is None:
        # Batched classification finds each row's last token through the pad id.
        model.config.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
    model.to(device)
    model.eval()
    return model, tokenizer


def _check_head(path: Path, head: str) -> None:
    """Refuse a causal-LM head on a checkpoint saved as an encoder, before transformers builds a random head."""
    import json

    architectures = json.loads((path / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    generative = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
    if head == "causal-lm" and architectures and not any(a.endswith(generative) for a in architectures):
        raise ModelError(
            "this checkpoint has no language-model head, so it cannot generate text",
            where=str(path),
            found=", ".join(architectures),
            expected="a causal language model (such as smollm2-135m-instruct), or head='encoder' or "
            "'sequence-classification' for this one",
        )


def _model_type(path: Path) -> str:
    import json

    try:
        return json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("model_type", "unknown")
    except (OSError, ValueError):
        return "unknown"


def _load_error(path: Path, what: str, err: Exception) -> ModelError:
    text = str(err)
    if "trust_remote_code" in text:
        return ModelError(
            f"loading this {what} would run code shipped with the checkpoint",
            where=str(path),
            found="custom code (auto_map) in the model's config",
            expected="a model whose architecture transformers provides",
            hint="tailorlm runs no checkpoint code by default; pass trust_remote_code=True only for code you have read",
        )
    return ModelError(
        f"cannot load the {what}",
        where=str(path),
        found=f"{type(err).__name__}: {text.splitlines()[0] if text else ''}",
    )
