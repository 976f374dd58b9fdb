"""Lean RMSNorm and SwiGLU: same outputs and gradients as the model's own layers, fewer tensors kept for backward."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM

from tailorlm.training.fused import restore_layers, use_lean_layers


def _model(path, lora: bool = False) -> nn.Module:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    return model


def _loss_and_grads(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), grads


def _saved_bytes(model: nn.Module, ids: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of one forward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids).loss
    return sum(seen.values())


def test_lean_layers_keep_outputs_and_gradients(tiny_llama_dir) -> None:
    ids = torch.randint(3, 100, (2, 24), generator=torch.Generator().manual_seed(0))
    for lora in (False, True):
        torch.manual_seed(0)
        own = _model(tiny_llama_dir, lora)
        torch.manual_seed(0)
        lean = _model(tiny_llama_dir, lora)
        # 2 layers: 2 norms each plus the final norm, and 2 MLPs
        assert use_lean_layers(lean) == 7
        logits_own, grads_own = _loss_and_grads(own, ids)
        logits_lean, grads_lean = _loss_and_grads(lean, ids)
        assert torch.equal(logits_own, logits_lean)  # the forward arithmetic is the same, operation for operation
        assert grads_own.keys() == grads_lean.keys() and len(grads_own) > 0
        for name, grad in grads_own.items():
            torch.testing.assert_close(grads_lean[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_lean_layers_keep_fewer_tensors(tiny_llama_dir) -> None:
    ids = torch.randint(3, 100, (1, 40), generator=torch.Generator().manual_seed(1))
    hidden, ffn, layers, tokens = 32, 64, 2, 40
    for lora in (True, False):
        own = _model(tiny_llama_dir, lora)
        lean = _model(tiny_llama_dir, lora)
        use_lean_layers(lean)
        # Each MLP drops SiLU(gate), (T, F). A norm whose weight trains also drops its normalised input, (T, H);
        # with LoRA the norm weights are frozen and autograd keeps no more than the lean norm does. All fp32.
        expected = 4 * tokens * (ffn * layers + (0 if lora else hidden * (2 * layers + 1)))
        assert _saved_bytes(own, ids) - _saved_bytes(lean, ids) == expected


def test_restore_layers_gives_the_own_forward_back(tiny_llama_dir) -> None:
    model = _model(tiny_llama_dir)
    norm = model.model.norm
    own = norm.forward
    use_lean_layers(model)
    assert norm.forward.__func__ is not own.__func__
    restore_layers(model)
    assert norm.forward.__func__ is own.__func__ and "forward" not in norm.__dict__


class _OnePlusNorm(nn.Module):
    """Gemma's RMSNorm formula: (1 + weight) * normalised x. Looks like Llama's by its parts, computes otherwise."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width))
        self.variance_epsilon = 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (1.0 + self.weight) * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


class _GeluMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 8)
        self.act_fn = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def test_other_formulas_keep_their_own_forward() -> None:
    model = nn.Sequential(_OnePlusNorm(8), _GeluMLP())
    assert use_lean_layers(model) == 0
    assert "forward" not in model[0].__dict__ and "forward" not in model[1].__dict__
