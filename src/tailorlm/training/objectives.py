"""What differs between objectives inside the loop: how a batch becomes a summed loss and a token count."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tailorlm.data.templates import IGNORE_INDEX


class LossModule(nn.Module):
    """Wraps the model so one forward returns (summed loss, trained-token count); DDP wraps this module."""

    def __init__(self, model: nn.Module, *, objective: str, chunk_size: int, kernels: bool = False) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.chunk_size = chunk_size
        self.kernels = kernels  # the causal LM loss's softmax through tailorlm's compiled CPU kernel

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.objective in ("pretrain", "sft"):
            from tailorlm.training.loss import causal_lm_loss

            return causal_lm_loss(self.model, batch, chunk_size=self.chunk_size, kernels=self.kernels)
        if self.objective == "classify":
            logits = classifier_logits(self.model, batch)  # (B, C)
            labels = batch["labels"]
            return F.cross_entropy(logits.float(), labels, reduction="sum"), torch.tensor(labels.numel())
        from tailorlm.training.loss import unwrap_model

        labels = batch["labels"]
        # decoder inputs instead of labels, so the model does not compute a loss of its own that we would discard
        decoder_input_ids = unwrap_model(self.model).prepare_decoder_input_ids_from_labels(labels=labels)
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            decoder_input_ids=decoder_input_ids).logits  # (B, T_target, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        return loss, (labels != IGNORE_INDEX).sum()


def classifier_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Class logits (B, C) of a right-padded batch, read at each row's last real token for decoders.

    A decoder classifier scores every position and keeps the last real token, which transformers finds through
    the pad id in `input_ids`. peft's prompt tuning and P-tuning pass `inputs_embeds` instead, and the model then
    keeps the last position: a pad token in a right-padded row, so a text's class would depend on what it is
    batched with. So for decoders the per-position scores are taken from the head and the row's last real token
    (known from the attention mask) is picked here. Encoders read their first token and need nothing of this.
    """
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]  # (B, T), (B, T)
    head = _last_token_head(model)
    if head is None:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    scores: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda module, args, output: scores.append(output))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        handle.remove()
    per_position = scores[-1]  # (B, T', C): prompt tuning puts T' - T virtual tokens first
    last = per_position.shape[1] - input_ids.shape[1] + attention_mask.sum(dim=1) - 1  # (B,)
    return per_position[torch.arange(per_position.shape[0], device=last.device), last]


def _last_token_head(model: nn.Module) -> nn.Module | None:
    """The score layer of a decoder classifier (Llama, Qwen, GPT-2, ...); None for encoders (BERT, RoBERTa, ...)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    from tailorlm.training.loss import unwrap_model

    core = unwrap_model(model)
    head = getattr(core, "score", None)
    if core.config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES or not isinstance(head, nn.Module):
        return None
    return head


def head_for(objective: str) -> str:
    return {"classify": "sequence-classification", "seq2seq": "seq2seq"}.get(objective, "causal-lm")


def trained_tokens(batch: dict[str, Any], objective: str) -> int:
    """Tokens (or examples, for classification) that carry loss in a batch, known before the forward pass."""
    labels = batch["labels"]
    if objective == "classify":
        return int(labels.numel())
    if objective == "seq2seq":
        return int((labels != IGNORE_INDEX).sum())
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
