"""Which parameters train: full, freeze, and the peft methods (LoRA, DoRA, IA3, prompt, P- and prefix tuning)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch
from torch import nn

from tailorlm.errors import ConfigError

if TYPE_CHECKING:
    from tailorlm.training.config import RunConfig

PEFT_METHODS = ("lora", "dora", "ia3", "prompt_tuning", "p_tuning", "prefix_tuning")
TASK_TYPE = {"pretrain": "CAUSAL_LM", "sft": "CAUSAL_LM", "classify": "SEQ_CLS", "seq2seq": "SEQ_2_SEQ_LM"}
# Output layers and classification heads are never adapter targets: the head is trained in full when it is new.
_HEAD_NAMES = {"lm_head", "score", "classifier", "cls", "embed_out", "qa_outputs", "pooler"}
# Names of feed-forward projections: IA3 scales their input rather than their output.
_FEEDFORWARD = re.compile(r"(down_proj|fc2|c_proj|wo|output\.dense|dense_4h_to_h|w2)$")


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct short names of the linear layers inside the transformer blocks (attention and MLP)."""
    names = []
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for full_name, module in model.named_modules():
        if not _is_linear(module) or module is head:
            continue
        parts = full_name.split(".")
        if any(p in _HEAD_NAMES for p in parts):
            continue
        short = ".".join(parts[-2:]) if parts[-1] == "dense" and len(parts) > 1 else parts[-1]
        if short not in names:
            names.append(short)
    return names


def _is_linear(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))


def check_target_modules(model: nn.Module, targets: list[str], *, key: str = "lora.target_modules") -> None:
    """Refuse target names that match no layer, listing the ones that exist."""
    existing = linear_module_names(model)
    module_names = [name for name, _ in model.named_modules()]
    for target in targets:
        if not any(name == target or name.endswith("." + target) for name in module_names):
            raise ConfigError(
                "no layer of this model has that name",
                key=key, found=repr(target), expected="some of " + ", ".join(existing),
            )


def apply_method(model: nn.Module, config: "RunConfig", *, model_path: str | None = None) -> nn.Module:
    """Wrap or freeze `model` for the configured method; returns the model to train."""
    method = config.method
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method == "freeze":
        return _freeze(model, config)
    return _wrap_peft(model, config, model_path=model_path)


_LAYER = re.compile(r"\.(?:layers|layer|h|block|blocks)\.(\d+)\.")
_EMBEDDING = re.compile(r"embed|wte|wpe|word_embeddings|position_embeddings|token_type")


def _freeze(model: nn.Module, config: "RunConfig") -> nn.Module:
    """Train parameters whose name contains one of `freeze.modules`, and/or the last N layers with what follows them."""
    settings = config.freeze
    names = [n for n, _ in model.named_parameters()]
    layer_ids = sorted({int(m.group(1)) for n in names if (m := _LAYER.search(n))})
    kept: set[int] = set()
    if settings.last_n_layers:
        if not 0 < settings.last_n_layers <= len(layer_ids):
            raise ConfigError("the model does not have that many layers", key="freeze.last_n_layers",
                              found=str(settings.last_n_layers), expected=f"1 to {len(layer_ids)}")
        kept = set(layer_ids[-settings.last_n_layers:])
    trained = 0
    for name, param in model.named_parameters():
        layer = _LAYER.search(name)
        on = any(sub in name for sub in settings.modules or [])
        if settings.last_n_layers:
            # the final norm and the head come after the last layer; embeddings come before the first
            on = on or (int(layer.group(1)) in kept if layer else not _EMBEDDING.search(name))
        param.requires_grad_(on)
        trained += on
    if trained == 0:
        raise ConfigError("freeze.modules matched no parameter", key="freeze.modules", found=repr(settings.modules),
                          expected="substrings of parameter names such as " + ", ".join(names[-3:]))
    return model


def _wrap_peft(model: nn.Module, config: "RunConfig", *, model_path: str | None) -> nn.Module:
    import peft

    task_type = TASK_TYPE[config.objective]
    method = config.method
    model_type = getattr(model.config, "model_type", "")
    if method in ("lora", "dora"):
        targets = config.lora.target_modules or linear_module_names(model)
        check_target_modules(model, targets)
        peft_config = peft.LoraConfig(
            task_type=task_type, r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
            target_modules=targets, use_dora=method == "dora",
        )
    elif method == "ia3":
        targets = config.lora.target_modules or _ia3_defaults(model, model_type)
        check_target_modules(model, targets)
        peft_config = peft.IA3Config(
            task_type=task_type, target_modules=targets,
            feedforward_modules=[t for t in targets if _FEEDFORWARD.search(t)],
        )
    else:
        p = config.prompt
        hidden = p.encoder_hidden_size or model.config.hidden_size
        if method == "prompt_tuning":
            init = {"prompt_tuning_init": "RANDOM"}
            if p.init_text:
                if not model_path:
                    raise ConfigError("prompt.init_text needs the model's tokenizer folder", key="prompt.init_text")
                init = {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": p.init_text,
                        "tokenizer_name_or_path": model_path}
            peft_config = peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=p.virtual_tokens, **init)
        elif method == "p_tuning":
            peft_config = peft.PromptEncoderConfig(
                task_type=task_type, num_virtual_tokens=p.virtual_tokens, encoder_hidden_size=hidden,
                encoder_reparameterization_type=p.encoder.upper(),
            )
        else:
            peft_config = peft.PrefixTuningConfig(
                task_type=task_type, num_virtual_tokens=p.virtual_tokens,
                prefix_projection=p.prefix_projection, encoder_hidden_size=hidden,
            )
    return peft.get_peft_model(model, peft_config)


def _ia3_defaults(model: nn.Module, model_type: str) -> list[str]:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as MAPPING

    if model_type in MAPPING:
        return list(MAPPING[model_type])
    return [n for n in linear_module_names(model) if re.search(r"(k|v|key|value|k_proj|v_proj)$", n) or _FEEDFORWARD.search(n)]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, with tied weights counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total


def trainable_parameters(model: nn.Module) -> list[torch.nn.Parameter]:
    """The parameters the optimizer updates."""
    return [p for p in model.parameters() if p.requires_grad]
