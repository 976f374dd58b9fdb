"""Fold a specialist's adapter into its base weights, and save an ordinary Hugging Face model folder.

LoRA, DoRA and IA3 change weight matrices, so peft's `merge_and_unload` writes their change into the matrices and
the result is a plain transformers model. Prompt tuning, P-tuning and prefix tuning add virtual tokens (or key-value
prefixes) in front of every input instead: no weight can hold them, so those export as the base model plus the
adapter in an `adapter/` subfolder, which peft loads on top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ADAPTER_FOLDER = "adapter"


def is_peft(model: Any) -> bool:
    """Whether `model` is a peft model (an adapter over a base)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def is_prompt_learning(model: Any) -> bool:
    """Whether `model` carries a prompt-learning adapter (prompt tuning, P-tuning, prefix tuning): not mergeable."""
    if not is_peft(model):
        return False
    return bool(model.peft_config[model.active_adapter].is_prompt_learning)


def adapter_method(model: Any) -> str | None:
    """peft's name of the adapter method on `model` (LORA, IA3, PROMPT_TUNING...), or None for a plain model."""
    if not is_peft(model):
        return None
    peft_type = model.peft_config[model.active_adapter].peft_type
    return str(getattr(peft_type, "value", peft_type))


def merge(model: Any) -> Any:
    """The plain transformers model with the adapter's change folded into its weights (`model` itself when plain).

    The merge happens in place: the peft model must not be used afterwards.
    """
    if not is_peft(model):
        return model
    if is_prompt_learning(model):
        raise ValueError("prompt-learning adapters cannot be merged")
    return model.merge_and_unload()


def plain_model(model: Any) -> Any:
    """`model` without leftovers of loading it from a GGUF file, so it saves as ordinary float weights.

    transformers keeps the GGUF quantizer on a model loaded with `gguf_file=` even after de-quantizing it; saving would
    then record a quantization that the safetensors weights do not have.
    """
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if "quantization_config" in vars(model.config):
        del model.config.quantization_config
    return model


def save_hf(model: Any, tokenizer: Any, folder: Path) -> None:
    """Save a mergeable model merged, or a prompt-learning one as base model + `adapter/`, with the tokenizer."""
    folder = Path(folder)
    if is_prompt_learning(model):
        plain_model(model.get_base_model()).save_pretrained(folder)
        model.save_pretrained(folder / ADAPTER_FOLDER)
    else:
        plain_model(merge(model)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def load_hf(folder: Path, head: str, *, prompt_learning: bool) -> tuple[Any, Any]:
    """Load an exported folder the way a user would: plain transformers Auto classes (and peft for `adapter/`)."""
    import torch
    import transformers

    from tailorlm.models.load import HEADS

    auto_class = getattr(transformers, HEADS[head])
    model = auto_class.from_pretrained(folder, dtype=torch.float32)
    if prompt_learning:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, Path(folder) / ADAPTER_FOLDER)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return model.eval(), tokenizer
