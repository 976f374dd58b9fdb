"""tailorlm's compiled CPU kernels: packed attention and the loss's softmax give PyTorch's results, and training
falls back to PyTorch's operations where the kernels cannot be built."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from tailorlm.training import attention as attention_module
from tailorlm.training import cpu_kernels as kernels_module
from tailorlm.training.attention import (ATTENTION, KERNEL_ATTENTION, _KernelAttention, _span_table, _spans,
                                         use_packed_attention)
from tailorlm.training.cpu_kernels import cpu_kernels
from tailorlm.training.loss import causal_lm_loss


@pytest.fixture(scope="module")
def kernels():
    module = cpu_kernels()
    if module is None:
        if shutil.which("c++") or shutil.which("g++"):
            pytest.fail(f"a C++ compiler is here but the kernels did not build: {kernels_module._state.get('error')}")
        pytest.skip("no C++ compiler: the kernels cannot be built here")
    return module


def per_span_sdpa(q, k, v, spans, scale):
    """The reference: SDPA on each span alone, (B, T, H, D) out, zero outside spans."""
    out = torch.zeros(q.shape[0], q.shape[2], q.shape[1], q.shape[3])
    for row, start, end in spans.tolist():
        part = F.scaled_dot_product_attention(
            q[row:row + 1, :, start:end], k[row:row + 1, :, start:end].repeat_interleave(q.shape[1] // k.shape[1], 1),
            v[row:row + 1, :, start:end].repeat_interleave(q.shape[1] // k.shape[1], 1), is_causal=True, scale=scale)
        out[row:row + 1, start:end] = part.transpose(1, 2)
    return out


def projections(batch, width, heads, kv_heads, dim, seed):
    """q (B, H, T, D) and k, v (B, KV, T, D) laid out (B, T, heads, D), as a model's projections give them."""
    generator = torch.Generator().manual_seed(seed)

    def make(n):
        return torch.randn(batch, width, n, dim, generator=generator).transpose(1, 2).requires_grad_()

    return make(heads), make(kv_heads), make(kv_heads)


@pytest.mark.parametrize("heads,kv_heads,dim,rows", [
    (9, 3, 64, [[1, 63, 64, 65, 130, 21], [344]]),  # SmolLM2's grouping; spans at and around the 64-row blocks
    (4, 4, 32, [[200, 1, 143]]),  # no grouping
    (2, 1, 16, [[513]]),  # a span longer than 8 blocks and not a multiple of 64
])
def test_attention_matches_sdpa_per_span_forward_and_backward(kernels, heads, kv_heads, dim, rows):
    width = max(sum(lengths) for lengths in rows) + 7  # positions after the last span belong to no example
    q, k, v = projections(len(rows), width, heads, kv_heads, dim, seed=heads)
    spans = []
    for row, lengths in enumerate(rows):
        start = 0
        for length in lengths:
            spans.append((row, start, start + length))
            start += length
    spans = torch.tensor(spans)
    grad_out = torch.randn(len(rows), width, heads, dim, generator=torch.Generator().manual_seed(7))
    expected = per_span_sdpa(q, k, v, spans, scale=0.3)
    expected.backward(grad_out)
    expected_grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    got = _KernelAttention.apply(q, k, v, spans, 0.3)
    got.backward(grad_out)
    covered = torch.zeros(len(rows), width, dtype=torch.bool)
    for row, start, end in spans.tolist():
        covered[row, start:end] = True
    torch.testing.assert_close(got[covered], expected[covered], rtol=1e-5, atol=1e-5)
    for name, x, want in zip("qkv", (q, k, v), expected_grads):
        torch.testing.assert_close(x.grad, want, rtol=1e-5, atol=2e-5, msg=lambda m, name=name: f"∂{name}: {m}")
    assert got[~covered].abs().max().item() == 0.0  # positions outside every span stay untouched (zero)


def test_attention_is_bitwise_repeatable(kernels):
    q, k, v = projections(2, 300, 9, 3, 64, seed=1)
    spans = torch.tensor([[0, 0, 120], [0, 120, 300], [1, 0, 300]])
    runs = []
    for _ in range(2):
        for x in (q, k, v):
            x.grad = None
        out = _KernelAttention.apply(q, k, v, spans, 0.125)
        out.square().sum().backward()
        runs.append([out.detach().clone()] + [x.grad.clone() for x in (q, k, v)])
    for first, second in zip(*runs):
        assert torch.equal(first, second)


def test_a_model_gives_the_same_logits_and_gradients_with_the_kernel(kernels, monkeypatch):
    def tiny():
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=6, num_key_value_heads=2, attn_implementation="sdpa")
        return LlamaForCausalLM(config)

    ids = torch.randint(1, 64, (2, 150), generator=torch.Generator().manual_seed(3))
    positions = torch.stack([torch.cat([torch.arange(70), torch.arange(80)]),
                             torch.cat([torch.arange(5), torch.arange(100), torch.arange(45)])])
    calls, searches = [], []
    apply = _KernelAttention.apply
    monkeypatch.setattr(_KernelAttention, "apply", lambda *args: calls.append(1) or apply(*args))
    find = attention_module._find_spans
    monkeypatch.setattr(attention_module, "_find_spans", lambda ids: searches.append(1) or find(ids))
    results = []
    for kernel in (False, True):
        model = tiny()
        assert use_packed_attention(model, kernel=kernel)
        assert model.config._attn_implementation == (KERNEL_ATTENTION if kernel else ATTENTION)
        logits = model(input_ids=ids, position_ids=positions.clone(), use_cache=False).logits  # a forward's own ids
        logits.square().mean().backward()
        results.append((logits.detach(), model.model.layers[0].self_attn.q_proj.weight.grad))
        assert len(calls) == (2 if kernel else 0)  # one call per layer, for both rows
        assert len(searches) == (2 if kernel else 1)  # the spans are found once per forward, not once per layer
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("case", ["bf16", "mask", "dropout", "value_dim", "positions_3d", "positions_short",
                                  "positions_1d"])
def test_calls_the_kernel_does_not_take_go_to_sdpa_per_example(kernels, monkeypatch, case):
    from types import SimpleNamespace

    from tailorlm.training.attention import packed_kernel, packed_sdpa

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, heads, 12, 8, generator=generator) for heads in (4, 2, 2))
    positions = torch.cat([torch.arange(5), torch.arange(7)]).expand(2, 12)
    module = SimpleNamespace(training=True, num_key_value_groups=2)
    kwargs = {"attention_mask": None, "dropout": 0.0, "position_ids": positions}
    if case == "bf16":
        q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    elif case == "mask":
        kwargs["attention_mask"] = torch.zeros(2, 1, 12, 12)
    elif case == "dropout":
        kwargs["dropout"] = 0.5
    elif case == "value_dim":
        v = torch.randn(2, 2, 12, 4, generator=generator)
    elif case == "positions_3d":
        kwargs["position_ids"] = positions.expand(3, 2, 12)
    elif case == "positions_short":
        kwargs["position_ids"] = positions[:, :10]
    else:
        kwargs["position_ids"] = positions[0]
    monkeypatch.setattr(_KernelAttention, "apply", lambda *args: pytest.fail("the kernel took this call"))
    attention_mask = kwargs.pop("attention_mask")

    def outcome(function):  # its output, or the type of what it raised (the per-example path may refuse a shape)
        torch.manual_seed(0)  # the same dropout draws for both
        try:
            return function(module, q, k, v, attention_mask, **kwargs)[0]
        except RuntimeError as error:
            return type(error)

    expected, got = outcome(packed_sdpa), outcome(packed_kernel)
    if isinstance(expected, torch.Tensor):
        assert torch.equal(got, expected)
    else:
        assert got is expected


def test_the_kernel_refuses_overlapping_spans(kernels):
    q, k, v = (torch.randn(1, 20, heads, 8) for heads in (2, 1, 1))
    with pytest.raises(RuntimeError, match="spans overlap"):
        kernels.attention_forward(q, k, v, torch.tensor([[0, 0, 12], [0, 10, 20]]), 0.3)
    with pytest.raises(RuntimeError, match="outside the batch"):
        kernels.attention_forward(q, k, v, torch.tensor([[1, 0, 12]]), 0.3)


def test_span_table_starts_every_row_at_its_first_token():
    positions = torch.tensor([[3, 4, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5]])
    assert _span_table(positions, 2).tolist() == [[0, 0, 2], [0, 2, 5], [0, 5, 6], [1, 0, 6]]
    assert _span_table(positions[1:], 3).tolist() == [[r, 0, 6] for r in range(3)]  # one row of positions for all
    assert _spans(positions) is _spans(positions)  # found once for all layers of a forward
    positions[1, 3] = 0  # an in-place change is seen
    assert _span_table(positions, 2).tolist()[3:] == [[1, 0, 3], [1, 3, 6]]


def test_softmax_cross_entropy_gives_the_loss_and_its_gradient(kernels):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 1000, generator=generator) * 4
    logits[3, 17] = 80.0  # a confident row
    targets = torch.randint(0, 1000, (37,), generator=generator)
    reference = logits.clone().requires_grad_()
    expected = F.cross_entropy(reference, targets, reduction="none")
    expected.sum().backward()
    work = logits.clone()
    losses = kernels.softmax_cross_entropy_(work, targets)
    torch.testing.assert_close(losses, expected.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(work, reference.grad, rtol=1e-5, atol=1e-6)  # softmax - one_hot, in place
    with pytest.raises(RuntimeError, match="target 1000 is not in"):
        kernels.softmax_cross_entropy_(logits.clone(), torch.full((37,), 1000))


def test_causal_lm_loss_with_the_kernel_matches_pytorch(kernels):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :10] = -100
    results = []
    for kernel in (False, True):
        model.zero_grad()
        loss, count = causal_lm_loss(model, {"input_ids": ids, "labels": labels}, chunk_size=16, kernels=kernel)
        loss.backward()
        results.append((loss.detach(), count, model.lm_head.weight.grad.clone(), model.model.norm.weight.grad.clone()))
    assert results[0][1] == results[1][1] == 2 * 30  # next-token labels 10 .. 39 of each row
    for index in (0, 2, 3):  # the loss, ∂ of the output layer, and ∂ of the last norm (through ∂hidden)
        torch.testing.assert_close(results[1][index], results[0][index], rtol=1e-5, atol=1e-6)


def test_without_a_compiler_training_keeps_pytorch_operations(monkeypatch):
    """A failed build warns once; attention and the loss then take PyTorch's paths with the same results."""
    monkeypatch.setattr(kernels_module, "_state", {})

    def no_compiler(announce=None):
        raise RuntimeError("Error building extension\nc++: command not found")

    monkeypatch.setattr(kernels_module, "_build", no_compiler)
    with pytest.warns(RuntimeWarning, match="could not build tailorlm's CPU kernels .*c\\+\\+: command not found"):
        assert cpu_kernels() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert cpu_kernels() is None
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa"))
    ids = torch.arange(1, 25)[None]
    positions = torch.cat([torch.arange(10), torch.arange(14)])[None]
    use_packed_attention(model)
    expected = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    assert use_packed_attention(model, kernel=True)  # still switches: the kernel's function falls back per call
    got = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    torch.testing.assert_close(got, expected)
    batch = {"input_ids": ids, "labels": ids, "position_ids": positions}
    torch.testing.assert_close(causal_lm_loss(model, batch, kernels=True)[0], causal_lm_loss(model, batch)[0])


def test_swiglu_and_rms_norm_match_pytorch_forward_and_backward(kernels):
    from tailorlm.training.fused import _RMSNorm, _SwiGLU

    generator = torch.Generator().manual_seed(0)
    gate = (torch.randn(3, 70, 40, generator=generator) * 6).requires_grad_()  # large |gate|: sigmoid's both tails
    up = torch.randn(3, 70, 40, generator=generator).requires_grad_()
    grad = torch.randn(3, 70, 40, generator=generator)
    expected = F.silu(gate) * up
    expected.backward(grad)
    want = [gate.grad.clone(), up.grad.clone()]
    gate.grad = up.grad = None
    got = _SwiGLU.apply(gate, up, kernels)
    got.backward(grad)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close([gate.grad, up.grad], want, rtol=1e-5, atol=1e-6)

    x = (torch.randn(5, 33, 72, generator=generator) * 3).requires_grad_()
    weight = torch.randn(72, generator=generator).requires_grad_()
    expected = weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    expected.backward(grad_norm := torch.randn(5, 33, 72, generator=generator))
    want = [x.grad.clone(), weight.grad.clone()]
    x.grad = weight.grad = None
    got = _RMSNorm.apply(x, weight, 1e-6, kernels)
    got.backward(grad_norm)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close([x.grad, weight.grad], want, rtol=1e-4, atol=1e-5)
    frozen = weight.detach()  # LoRA: the norm's weight does not train, so no ∂weight is computed
    x.grad = None
    _RMSNorm.apply(x, frozen, 1e-6, kernels).backward(grad_norm)
    torch.testing.assert_close(x.grad, want[0], rtol=1e-4, atol=1e-5)


def test_lean_layers_use_the_kernels_only_when_asked(kernels, monkeypatch):
    from tailorlm.training import fused
    from tailorlm.training.fused import _KERNELS, restore_layers, use_lean_layers

    calls = []

    class Counting:  # the real kernels, counting the SwiGLU and RMSNorm calls
        def __getattr__(self, name):
            function = getattr(kernels, name)
            return lambda *args: calls.append(name) or function(*args)

    monkeypatch.setattr(fused, "cpu_kernels", lambda: Counting())
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))
    ids = torch.arange(1, 20)[None]
    expected = model(input_ids=ids).logits
    assert use_lean_layers(model, kernels=True) == 4  # 2 norms and the MLP of the layer, and the final norm
    assert all(getattr(m, _KERNELS, False) for m in (model.model.norm, model.model.layers[0].mlp))
    torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
    assert sorted(calls) == ["rms_norm_forward"] * 3 + ["swiglu_forward"]
    use_lean_layers(model)  # again, without: the swapped modules stop using them
    assert not hasattr(model.model.norm, _KERNELS)
    calls.clear()
    torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
    assert calls == []
    use_lean_layers(model, kernels=True)
    restore_layers(model)
    assert not hasattr(model.model.norm, _KERNELS)
