"""fp32 linear layers through oneDNN on the CPU: the same products and gradients as PyTorch's own path."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM

from tailorlm.training import matmul
from tailorlm.training.matmul import mm_t, onednn_unavailable, restore_linear, use_onednn_linear, uses_onednn

pytestmark = pytest.mark.skipif(onednn_unavailable() is not None, reason=str(onednn_unavailable()))


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_mm_t_is_a_times_b_transposed_for_any_strides_and_with_a_bias() -> None:
    a, b, bias = _randn(37, 20), _randn(11, 20, seed=1), _randn(11, seed=2)
    exact = (a.double() @ b.double().t()).float()
    torch.testing.assert_close(mm_t(a, b), exact, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mm_t(a, b, bias), exact + bias, rtol=1e-5, atol=1e-5)
    # transposed views, as the backward passes them: ∂y W (b is Wᵀ) and ∂yᵀ x
    torch.testing.assert_close(mm_t(a.t().contiguous().t(), b.t().contiguous().t()), exact, rtol=1e-5, atol=1e-5)
    g = _randn(37, 11, seed=3)
    torch.testing.assert_close(mm_t(g, b.t()), (g.double() @ b.double()).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mm_t(g.t(), a.t()), (g.double().t() @ a.double()).float(), rtol=1e-5, atol=1e-5)


def test_mm_t_leaves_other_dtypes_to_pytorch() -> None:
    a, b = _randn(5, 4).double(), _randn(3, 4, seed=1).double()
    assert torch.equal(mm_t(a, b), F.linear(a, b))  # float64: PyTorch's own kernel, bit for bit


def _loss_and_grads(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), out.logits.detach(), grads


@pytest.mark.parametrize("lora", [False, True])
def test_a_swapped_model_gives_the_same_logits_and_gradients(tiny_llama_dir, lora) -> None:
    ids = torch.randint(3, 100, (2, 24), generator=torch.Generator().manual_seed(0))
    models = []
    for _ in range(2):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
        if lora:
            torch.manual_seed(0)
            model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
        models.append(model)
    own, fast = models
    linears = sum(type(m) is nn.Linear for m in fast.modules())
    # 2 layers x 7 projections and the output layer; with LoRA also an A and a B per projection
    assert linears == (15 + 28 if lora else 15)
    assert use_onednn_linear(fast) == linears
    assert use_onednn_linear(fast) == 0  # already swapped
    loss_own, logits_own, grads_own = _loss_and_grads(own, ids)
    loss_fast, logits_fast, grads_fast = _loss_and_grads(fast, ids)
    torch.testing.assert_close(logits_fast, logits_own, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_fast, loss_own, rtol=1e-6, atol=1e-6)
    assert grads_own.keys() == grads_fast.keys()
    assert len(grads_own) == (28 if lora else sum(1 for _ in own.parameters()))
    for name, grad in grads_own.items():
        torch.testing.assert_close(grads_fast[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # Same inputs, same threads: the same bits again.
    again = _loss_and_grads(fast, ids)
    assert torch.equal(again[1], logits_fast) and all(torch.equal(again[2][k], v) for k, v in grads_fast.items())

    restore_linear(fast)
    assert not any(uses_onednn(m) or "forward" in m.__dict__ for m in fast.modules())
    assert torch.equal(fast(input_ids=ids).logits, own(input_ids=ids).logits)  # PyTorch's own path again


def test_a_linear_layer_with_a_bias_gets_every_gradient() -> None:
    torch.manual_seed(0)
    own = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    fast = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    fast.load_state_dict(own.state_dict())
    assert use_onednn_linear(fast) == 2
    x = _randn(4, 2, 6)  # 3-D input, as a transformer's layers get
    for model in (own, fast):
        model.zero_grad()
        model(x).square().sum().backward()
    torch.testing.assert_close(fast(x), own(x), rtol=1e-6, atol=1e-6)
    for (name, p), q in zip(own.named_parameters(), fast.parameters()):
        assert q.grad is not None and q.grad.abs().sum() > 0, name
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
    with torch.no_grad():  # float64 is not oneDNN's: the swapped forward hands it to nn.Linear's own path
        assert torch.equal(fast.double()(x.double()), own.double()(x.double()))


def test_nothing_is_swapped_where_pytorch_has_no_onednn(monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert "no oneDNN" in onednn_unavailable()
    model = nn.Linear(4, 3)
    assert use_onednn_linear(model) == 0 and "forward" not in model.__dict__
    a, b = _randn(2, 4), _randn(3, 4, seed=1)
    assert torch.equal(mm_t(a, b), F.linear(a, b))


def _run(tmp_path, tiny_llama_dir, name: str, cpu_matmul: str, calls: list) -> list[float]:
    from rich.console import Console

    from tailorlm.training.config import resolve_config
    from tailorlm.training.loop import train
    from tailorlm.training.tracking import read_metrics

    data = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"what is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{2 * i}, since {i} and {i} make {2 * i}."}]}
            for i in range(12)]
    data.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    calls.clear()
    config = resolve_config(values={"model": str(tiny_llama_dir), "objective": "sft", "method": "lora",
                                    "data": str(data), "output": str(tmp_path / name)},
                            overrides=["train.max_steps=4", "train.batch_size=4", "train.max_length=64",
                                       "data.split={}", "train.tensorboard=false", "train.lr=5e-3",
                                       f"train.cpu_matmul={cpu_matmul}"])
    train(config, console=Console(quiet=True))
    return [r["loss"] for r in read_metrics(tmp_path / name) if "loss" in r]


def test_training_multiplies_through_onednn_by_default_and_not_when_told(tmp_path, tiny_llama_dir, monkeypatch) -> None:
    calls: list[int] = []
    apply = matmul._OneDnnLinear.apply
    monkeypatch.setattr(matmul._OneDnnLinear, "apply", lambda *a: calls.append(1) or apply(*a))
    fast = _run(tmp_path, tiny_llama_dir, "fast", "onednn", calls)
    fast_calls = len(calls)
    own = _run(tmp_path, tiny_llama_dir, "own", "default", calls)
    assert fast_calls > 0 and len(calls) == 0
    assert len(fast) == 4 and fast == pytest.approx(own, rel=1e-4)
    # the saved specialist is a plain peft model either way
    from tailorlm.strategies.base import load_specialist

    model = load_specialist(tmp_path / "fast")[0]
    assert not any(uses_onednn(m) for m in model.modules())


def test_an_empty_input_and_a_second_order_gradient() -> None:
    layer = nn.Linear(64, 32)
    use_onednn_linear(layer)
    x = torch.randn(0, 64, requires_grad=True)
    layer(x).sum().backward()  # no rows: PyTorch's own path, a zero gradient
    assert torch.equal(layer.weight.grad, torch.zeros_like(layer.weight))
    y = layer(torch.randn(3, 64, requires_grad=True)).square().sum()
    (grad,) = torch.autograd.grad(y, layer.weight, create_graph=True)
    with pytest.raises(RuntimeError):  # oneDNN's product has no derivative: refused, not silently zero
        grad.sum().backward()


def test_gpt2_conv1d_layers_are_swapped_with_the_same_gradients() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=120, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    own = GPT2LMHeadModel(config)
    fast = GPT2LMHeadModel(config)
    fast.load_state_dict(own.state_dict())
    ids = torch.randint(0, 120, (2, 16), generator=torch.Generator().manual_seed(1))
    # 2 blocks x 4 Conv1D (attention in and out, MLP in and out) and the output layer
    assert use_onednn_linear(fast) == 9
    _, logits_own, grads_own = _loss_and_grads(own, ids)
    _, logits_fast, grads_fast = _loss_and_grads(fast, ids)
    torch.testing.assert_close(logits_fast, logits_own, rtol=1e-5, atol=1e-5)
    assert grads_own.keys() == grads_fast.keys()
    for name, grad in grads_own.items():
        torch.testing.assert_close(grads_fast[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    restore_linear(fast)
    assert not any("forward" in m.__dict__ for m in fast.modules())
