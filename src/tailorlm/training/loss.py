"""Causal LM loss that computes the vocabulary head only where labels are, a chunk at a time.

Full fp32 logits for a batch are large (4 x 512 tokens x 49,152 words = 400 MB, the same again for their
gradient) and mostly wasted in SFT, where only assistant tokens carry loss. `causal_lm_loss` runs the model
without logits, keeps the hidden states of positions whose next-token label is trained, and computes head and
cross-entropy `chunk_size` rows at a time; the backward never holds more than one chunk of logits either.

It returns the summed loss and the number of trained tokens rather than a mean. With gradient accumulation the
right objective is the mean over every trained token of the optimizer step; averaging per micro-batch and then
over micro-batches weights a token in a short micro-batch more than one in a long micro-batch (and SFT batches
differ a lot in trained tokens). So the loop divides each micro-batch's sum by the step's total count.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tailorlm.errors import ConfigError
from tailorlm.training.cpu_kernels import cpu_kernels
from tailorlm.training.matmul import mm_t, uses_onednn
from tailorlm.training.packing import IGNORE_INDEX


@dataclass(frozen=True)
class HeadTransform:
    """What a model does to its head's output before the loss: multiply by `scale`, then soft-cap at `softcap`."""

    scale: float = 1.0
    softcap: float | None = None

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.softcap is None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply to fp32 logits (out of place, so autograd can differentiate it)."""
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def causal_lm_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], *, chunk_size: int = 1024, kernels: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token losses, number of trained tokens) for a padded or packed batch.

    Same value as `model(**batch).loss * n_tokens` for the standard Hugging Face loss. `model` may be a
    transformers causal LM or a peft model around one; the forward always gets `use_cache=False`, which packed
    batches need (a cache turns off transformers' per-example masking). With `kernels`, fp32 CPU chunks take
    their softmax and its gradient from tailorlm's compiled kernel (training/cpu_kernels.py) where it is built.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    labels = batch["labels"]  # (B, T)
    _refuse_packed_prompt_learning(model, batch)
    mask = batch.get("attention_mask")
    if "position_ids" in batch and mask is not None and mask.ndim == 2:
        # transformers only derives per-example masks from position ids when there is no 2D mask.
        raise ValueError("a packed batch (with position_ids) must not carry a 2D attention_mask; see collate_packed")
    hidden = _hidden_states(model, {k: v for k, v in batch.items() if k != "labels"})  # (B, T', H)
    hidden = hidden[:, hidden.shape[1] - labels.shape[1] :]  # drop virtual-token positions (prompt tuning): (B, T, H)
    targets = labels[:, 1:]  # (B, T-1): position t predicts token t+1
    keep = targets != IGNORE_INDEX
    selected = hidden[:, :-1][keep]  # (N, H)
    targets = targets[keep]  # (N,)
    head, transform = output_head(model)
    if _is_plain_linear(head):
        onednn = uses_onednn(head)  # multiply through oneDNN as the model's other linear layers do
        compiled = cpu_kernels() if kernels and selected.device.type == "cpu" else None
        loss = _LinearCrossEntropy.apply(selected, head.weight, head.bias, targets, transform, chunk_size, onednn,
                                         compiled)
    else:
        loss = _checkpointed_cross_entropy(head, transform, selected, targets, chunk_size)
    return loss, keep.sum()


def output_head(model: nn.Module) -> tuple[nn.Module, HeadTransform]:
    """The module that maps hidden states to vocabulary logits, and what the model does to its output."""
    core = unwrap_model(model)
    head = core.get_output_embeddings()
    if head is None:
        raise ConfigError(
            f"{type(core).__name__} has no language-model head",
            expected="a causal LM (a ...ForCausalLM model)",
        )
    config = core.config.get_text_config() if hasattr(core.config, "get_text_config") else core.config
    scale = 1.0
    if getattr(config, "logit_scale", None) is not None:  # Cohere: logits * logit_scale
        scale *= float(getattr(core, "logit_scale", config.logit_scale))
    if getattr(config, "logits_scaling", None) is not None:  # Granite: logits / logits_scaling
        scale /= float(config.logits_scaling)
    return head, HeadTransform(scale=scale, softcap=getattr(config, "final_logit_softcapping", None))


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP, torch.compile and peft wrappers (peft's layers stay injected in it)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model


@torch.no_grad()
def check_model(model: nn.Module, *, packed: bool) -> None:
    """Fail before training when `causal_lm_loss` would differ from the model's own logits on this model.

    Runs two tiny probes: the head (with its scaling/soft-capping) must reproduce the model's logits, and, for
    packed batches, an example's logits must not change when another example shares its row. Catches model
    families that add an unknown logit transform or that ignore packed position ids.
    """
    core = unwrap_model(model)
    vocab = core.get_output_embeddings().weight.shape[0]
    device = next(core.parameters()).device
    first = torch.arange(3, 8, device=device) % vocab  # (5,)
    second = torch.arange(11, 15, device=device) % vocab  # (4,)
    training = model.training
    model.eval()  # no dropout in the probe
    try:
        alone = model(input_ids=second[None], use_cache=False).logits[0].float()  # (4, V)
        head, transform = output_head(model)
        ours = transform(head(_hidden_states(model, {"input_ids": second[None]}))[0].float())  # (4, V)
        if not torch.allclose(ours, alone, rtol=1e-3, atol=1e-3):
            raise ConfigError(
                f"{type(core).__name__} transforms its logits in a way tailorlm's chunked loss does not know",
                found=f"a difference of {(ours - alone).abs().max().item():.3g} from the model's own logits",
                expected="a head followed at most by logit scaling and final soft-capping",
            )
        if packed:
            _refuse_packed_prompt_learning(model, {"position_ids": second})
            # Two rows: flash-attention's varlen path reads packing from position ids only when there is one row.
            ids = torch.cat([first, second]).expand(2, -1)  # (2, 9)
            positions = torch.cat([torch.arange(5), torch.arange(4)]).to(device).expand(2, -1)  # (2, 9)
            together = model(input_ids=ids, position_ids=positions, use_cache=False).logits[:, 5:].float()
            if not torch.allclose(together, alone.expand(2, -1, -1), rtol=1e-3, atol=1e-3):
                raise ConfigError(
                    f"{type(core).__name__} lets packed examples attend to each other",
                    key="packing",
                    found="logits of an example that change when another example shares its row",
                    expected="a model whose attention masks follow restarting position ids (most transformers 5 "
                    "decoders with sdpa or eager attention)",
                    hint="Set packing: false; examples are then batched by length instead",
                )
    finally:
        model.train(training)


def _refuse_packed_prompt_learning(model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
    """peft's prompt methods drop position ids (prompt/P-tuning) or add a cache (prefix tuning): no packing."""
    config = getattr(model, "active_peft_config", None)
    if "position_ids" in batch and config is not None and config.is_prompt_learning:
        raise ConfigError(
            f"packed batches do not work with peft's {config.peft_type}",
            key="packing",
            found="position_ids in the batch",
            expected="unpacked batches for prompt tuning, P-tuning and prefix tuning",
            hint="Set packing: false",
        )


def _hidden_states(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The decoder trunk's last hidden states, (B, T', H), from a full forward that computes no logits.

    The full model (not just the trunk) runs so that wrappers such as peft's prompt learning do their part;
    an empty `logits_to_keep` makes its own head a no-op, and a hook on the trunk takes the hidden states.
    """
    core = unwrap_model(model)
    trunk = core.get_decoder()
    captured: list[torch.Tensor] = []

    def grab(module: nn.Module, args: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    handle = trunk.register_forward_hook(grab)
    try:
        if "logits_to_keep" in inspect.signature(core.forward).parameters:
            no_logits = torch.empty(0, dtype=torch.long, device=inputs["input_ids"].device)
            model(**inputs, use_cache=False, logits_to_keep=no_logits)
        else:  # correct, only slower: the model computes logits nobody reads
            model(**inputs, use_cache=False)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"expected the decoder trunk to run once per forward, it ran {len(captured)} times")
    return captured[0]


def _is_plain_linear(head: nn.Module) -> bool:
    """A float nn.Linear with no hooks: its weight can be used directly (not a peft or quantized wrapper)."""
    return (
        type(head) is nn.Linear
        and head.weight.dtype.is_floating_point
        and not head._forward_hooks
        and not head._forward_pre_hooks
    )


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `transform(hidden @ weight.T + bias)`, chunk by chunk, gradients computed on the way.

    Computing the gradient in the forward costs no extra matmul (checkpointing would recompute the head) and
    keeps only (N, H) and (V, H) gradients, never (N, V).
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,  # (N, H)
        weight: torch.Tensor,  # (V, H)
        bias: torch.Tensor | None,  # (V,)
        targets: torch.Tensor,  # (N,)
        transform: HeadTransform,
        chunk_size: int,
        onednn: bool = False,
        compiled: Any = None,  # tailorlm's CPU kernels (training/cpu_kernels.py), for fp32 chunks
    ) -> torch.Tensor:
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_bias = bias is not None and ctx.needs_input_grad[2]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if want_bias else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            out = None if grad_hidden is None else grad_hidden[rows]
            total += _chunk_loss_and_grads(
                hidden[rows], weight, bias, targets[rows], transform, out, grad_weight, grad_bias, onednn, compiled
            )
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads = [
            None if g is None else (g * grad_total).to(dtype) for g, dtype in zip(ctx.saved_tensors, ctx.dtypes)
        ]
        return grads[0], grads[1], grads[2], None, None, None, None, None


def _chunk_loss_and_grads(
    h: torch.Tensor,  # (C, H)
    weight: torch.Tensor,  # (V, H)
    bias: torch.Tensor | None,  # (V,)
    y: torch.Tensor,  # (C,)
    transform: HeadTransform,
    grad_h: torch.Tensor | None,  # (C, H), written
    grad_weight: torch.Tensor | None,  # (V, H) fp32, accumulated
    grad_bias: torch.Tensor | None,  # (V,) fp32, accumulated
    onednn: bool = False,
    compiled: Any = None,
) -> torch.Tensor:
    """Summed cross-entropy of one chunk; its gradients go into the given buffers. The (C, V) logits die on return.

    With `onednn`, the two products that need no buffer of the weight's size (logits and ∂h) go through oneDNN
    (`training/matmul.py`); ∂W accumulates in place through PyTorch's addmm. With `compiled` (an identity
    transform, fp32 logits), one kernel turns the logits into their gradient in place and returns each row's loss.
    """
    logits = (mm_t(h, weight, bias) if onednn else F.linear(h, weight, bias)).float()  # (C, V)
    if compiled is not None and transform.identity and logits.dtype == torch.float32 and logits.is_contiguous():
        loss = compiled.softmax_cross_entropy_(logits, y).sum()
        return _chunk_grads(logits, h, weight, grad_h, grad_weight, grad_bias, onednn, loss)
    if transform.scale != 1.0:
        logits.mul_(transform.scale)
    tanh = None
    if transform.softcap is not None:
        tanh = logits.div_(transform.softcap).tanh_()  # kept for the soft-cap derivative
        logits = tanh * transform.softcap
    wants_grad = grad_h is not None or grad_weight is not None or grad_bias is not None
    loss = softmax_cross_entropy_(logits, y, gradient=wants_grad)
    if not wants_grad:
        return loss
    grad = logits  # d loss / d logits = softmax - one_hot: (C, V)
    if tanh is not None:
        grad.mul_(tanh.square_().neg_().add_(1.0))  # d(cap * tanh(z / cap)) / dz, in place
    if transform.scale != 1.0:
        grad.mul_(transform.scale)
    return _chunk_grads(grad.to(weight.dtype), h, weight, grad_h, grad_weight, grad_bias, onednn, loss)


def softmax_cross_entropy_(logits: torch.Tensor, y: torch.Tensor, *, gradient: bool) -> torch.Tensor:
    """Summed cross-entropy of fp32 logits (C, V) against targets (C,), PyTorch's operations; with `gradient`, the
    logits become its gradient, softmax - one_hot, in place (the compiled kernel's `softmax_cross_entropy_` does both
    in one pass). Softmax in place, so one (C, V) buffer is all a chunk holds (torch.logsumexp would add another)."""
    target_logits = logits.gather(1, y[:, None])  # (C, 1)
    top = logits.amax(dim=-1, keepdim=True)  # (C, 1)
    sums = logits.sub_(top).exp_().sum(dim=-1, keepdim=True)  # (C, 1)
    loss = (sums.log() + top - target_logits).sum()
    if gradient:
        logits.div_(sums)[torch.arange(y.shape[0], device=y.device), y] -= 1.0
    return loss


def _chunk_grads(grad: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, grad_h: torch.Tensor | None,
                 grad_weight: torch.Tensor | None, grad_bias: torch.Tensor | None, onednn: bool,
                 loss: torch.Tensor) -> torch.Tensor:
    """Writes ∂h and accumulates ∂W and ∂b of a chunk from ∂logits (C, V); returns `loss`."""
    if grad_h is not None and onednn:
        grad_h.copy_(mm_t(grad, weight.t()))  # (C, H)
    elif grad_h is not None:
        torch.mm(grad, weight, out=grad_h)  # (C, H)
    if grad_weight is not None and grad.dtype == torch.float32:
        grad_weight.addmm_(grad.t(), h)  # (V, H)
    elif grad_weight is not None:  # bf16/fp16: multiply in the weight's dtype, accumulate chunks in fp32
        grad_weight += (grad.t() @ h).float()  # (V, H)
    if grad_bias is not None:
        grad_bias += grad.sum(0, dtype=torch.float32)
    return loss


def _checkpointed_cross_entropy(
    head: nn.Module, transform: HeadTransform, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """Summed cross-entropy through any head module (e.g. peft LoRA on lm_head), recomputing each chunk's logits."""
    total = (hidden.sum() * 0.0).float()  # keeps the graph connected when no token is trained
    for start in range(0, hidden.shape[0], chunk_size):
        h, y = hidden[start : start + chunk_size], targets[start : start + chunk_size]  # (C, H), (C,)
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_cross_entropy, head, transform, h, y, use_reentrant=False)
        else:
            total = total + _chunk_cross_entropy(head, transform, h, y)
    return total


def _chunk_cross_entropy(
    head: nn.Module, transform: HeadTransform, hidden: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Summed cross-entropy of one chunk."""
    logits = transform(head(hidden).float())  # (C, V)
    return F.cross_entropy(logits, targets, reduction="sum")
