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


def test_operands_with_other_strides_are_made_dense_first() -> None:
    wide = _randn(40, 48)
    a, b = wide[:, :20], wide[3:14, 20:40]  # rows 48 apart: neither contiguous nor a transposed contiguous matrix
    assert not a.is_contiguous() and not a.t().is_contiguous()
    dense = matmul._dense(a)
    assert dense.is_contiguous() and torch.equal(dense, a)
    contiguous = _randn(5, 4)
    assert matmul._dense(contiguous) is contiguous
    assert matmul._dense(contiguous.t()).data_ptr() == contiguous.data_ptr()  # a transposed view is read as it is
    exact = (a.double() @ b.double().t()).float()
    torch.testing.assert_close(mm_t(a, b), exact, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mm_t(b, a), exact.t(), rtol=1e-5, atol=1e-5)


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
    assert use_onednn_linear(fast) == linears + (14 if lora else 0)  # and each LoRA layer as a whole
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
    fused: list[int] = []
    apply_lora = matmul._OneDnnLora.apply
    monkeypatch.setattr(matmul._OneDnnLora, "apply", lambda *a: fused.append(1) or apply_lora(*a))
    fast = _run(tmp_path, tiny_llama_dir, "fast", "onednn", calls)
    fast_calls, fused_calls = len(calls), len(fused)
    fused.clear()
    own = _run(tmp_path, tiny_llama_dir, "own", "default", calls)
    assert fast_calls > 0 and len(calls) == 0
    assert fused_calls > 0 and fused == []  # the LoRA layers trained as fused products, and only with oneDNN
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


def _lora_net(features_in: int = 24, features_out: int = 40, *, bias: bool = False, **lora: object) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(features_in, features_out, bias=bias), nn.Tanh(), nn.Linear(features_out, 8))
    config = LoraConfig(r=4, lora_alpha=12, target_modules=["0", "2"], init_lora_weights=False, **lora)
    return get_peft_model(net, config)


def _grads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    y = model(x)
    y.square().sum().backward()
    return y.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, x.grad


def _count_fused(monkeypatch) -> list[int]:
    calls: list[int] = []
    apply = matmul._OneDnnLora.apply
    monkeypatch.setattr(matmul._OneDnnLora, "apply", lambda *a: calls.append(1) or apply(*a))
    return calls


@pytest.mark.parametrize("bias", [False, True])
def test_a_lora_layer_is_one_fused_product_with_peft_s_outputs_and_gradients(monkeypatch, bias) -> None:
    calls = _count_fused(monkeypatch)
    own, fast = _lora_net(bias=bias), _lora_net(bias=bias)
    for layer in (own, fast):  # the base layers train too, so that every gradient of the fused product is checked
        layer.requires_grad_(True)
    x = _randn(3, 5, 24)
    y_own, grads_own, x_own = _grads(own, x)
    assert use_onednn_linear(fast) == 2 + 6  # two LoRA layers, and their base, A and B linears
    y_fast, grads_fast, x_fast = _grads(fast, x)
    assert len(calls) == 2  # each LoRA layer went through _OneDnnLora, once
    torch.testing.assert_close(y_fast, y_own, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_fast, x_own, rtol=1e-4, atol=1e-5)
    assert grads_own.keys() == grads_fast.keys() and len(grads_own) == (8 if bias else 7)  # the last layer has a bias either way
    for name, grad in grads_own.items():
        torch.testing.assert_close(grads_fast[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    restore_linear(fast)
    assert not any("forward" in m.__dict__ for m in fast.modules())


def test_a_frozen_base_gets_no_gradient_and_the_adapter_trains(monkeypatch) -> None:
    calls = _count_fused(monkeypatch)
    own, fast = _lora_net(), _lora_net()
    use_onednn_linear(fast)
    x = _randn(7, 24)  # 2-D input
    y_own, grads_own, x_own = _grads(own, x)
    y_fast, grads_fast, x_fast = _grads(fast, x)
    assert len(calls) == 2
    assert sorted(grads_fast) == sorted(grads_own) and all("lora_" in n for n in grads_fast)
    for name, grad in grads_own.items():
        torch.testing.assert_close(grads_fast[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(x_fast, x_own, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["dropout", "dora", "lora_bias", "disabled", "merged"])
def test_lora_layers_peft_computes_otherwise_keep_peft_s_forward(monkeypatch, case) -> None:
    calls = _count_fused(monkeypatch)
    extra = {"dropout": {"lora_dropout": 0.1}, "dora": {"use_dora": True}, "lora_bias": {"lora_bias": True}}
    own, fast = _lora_net(**extra.get(case, {})), _lora_net(**extra.get(case, {}))
    for model in (own, fast):
        model.eval()  # dropout off, so that both give the same numbers
        if case == "merged":
            model.merge_adapter()
    use_onednn_linear(fast)
    x = _randn(6, 24)
    with torch.no_grad():
        if case == "disabled":
            with own.disable_adapter(), fast.disable_adapter():
                y_own, y_fast = own(x), fast(x)
        else:
            y_own, y_fast = own(x), fast(x)
    assert calls == []
    torch.testing.assert_close(y_fast, y_own, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(own.base_model.model[0].base_layer(x), own.base_model.model[0](x)) or case in (
            "disabled", "merged")  # the adapter does change the output: the comparison means something


def test_a_gpt2_lora_layer_over_conv1d_is_fused_with_the_same_gradients(monkeypatch) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    calls = _count_fused(monkeypatch)
    config = GPT2Config(vocab_size=120, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(get_peft_model(GPT2LMHeadModel(config), LoraConfig(
            r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, init_lora_weights=False)))
    own, fast = models
    use_onednn_linear(fast)
    ids = torch.randint(0, 120, (2, 16), generator=torch.Generator().manual_seed(1))
    _, logits_own, grads_own = _loss_and_grads(own, ids)
    _, logits_fast, grads_fast = _loss_and_grads(fast, ids)
    assert len(calls) == 4  # c_attn and c_fc of two blocks
    torch.testing.assert_close(logits_fast, logits_own, rtol=1e-5, atol=1e-5)
    assert grads_own.keys() == grads_fast.keys() and len(grads_own) == 8
    for name, grad in grads_own.items():
        torch.testing.assert_close(grads_fast[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_lora_layer_whose_parts_have_hooks_or_sit_on_another_adapter_keeps_peft_s_forward(monkeypatch) -> None:
    import warnings

    from peft import LoHaConfig

    calls = _count_fused(monkeypatch)
    x = _randn(6, 24)
    own, fast = _lora_net(), _lora_net()
    seen: list[str] = []
    for model in (own, fast):  # a hook that changes the base output: peft's forward applies it, so must tailorlm
        model.base_model.model[0].base_layer.register_forward_hook(lambda m, i, o: o * 0.5)
        model.base_model.model[0].lora_A["default"].register_forward_pre_hook(lambda m, i: seen.append("A"))
    use_onednn_linear(fast)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), own(x), rtol=1e-5, atol=1e-5)
    assert seen == ["A", "A"] and len(calls) == 1  # the hooked layer went through peft, the other was fused

    def stacked() -> nn.Module:  # a LoRA layer over a LoHa layer (peft's mixed models): both adapters count
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_peft_model(nn.Sequential(nn.Linear(16, 16)), LoHaConfig(
                r=4, target_modules=["0"], init_weights=False), adapter_name="loha", mixed=True)
            model.add_adapter("lora", LoraConfig(r=4, target_modules=["0"], init_lora_weights=False))
            model.set_adapter(["loha", "lora"])
        return model

    calls.clear()
    own, fast = stacked(), stacked()
    use_onednn_linear(fast)
    x = _randn(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), own(x), rtol=1e-5, atol=1e-5)
    assert calls == []


def test_lora_layers_in_another_dtype_are_not_swapped() -> None:
    model = _lora_net().to(torch.bfloat16)
    assert use_onednn_linear(model) == 0 and not any(uses_onednn(m) for m in model.modules())
