"""tailorlm's compiled CPU kernels against the PyTorch operations they replace, forward and backward, in one run.

    python bench/cpu_kernels.py     # about a minute on 2 CPU cores (plus the kernels' first build)

Shapes are SmolLM2-135M's (9 query heads, 3 key-value heads of 64, hidden 576, MLP 1536, vocabulary 49,152) on
512-token rows packed from examples of the lengths MedQuAD's question/answer pairs have in the training benchmark
(bench/train_throughput.py). Each case times the same inputs both ways, alternating, and reports the ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
HEADS, KV_HEADS, HEAD_DIM, HIDDEN, MLP, VOCAB, WIDTH = 9, 3, 64, 576, 1536, 49152, 512


def timed(fn, inputs, rounds: int = 3) -> float:
    """Best of `rounds` mean seconds per input."""
    for x in inputs[:2]:
        fn(*x)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for x in inputs:
            fn(*x)
        best = min(best, (time.perf_counter() - start) / len(inputs))
    return best


def attention_case(rows: int) -> dict:
    from types import SimpleNamespace

    from tailorlm.training.attention import packed_kernel, packed_sdpa

    # Example lengths as packed from MedQuAD chat examples at max length 512 (measured in the training benchmark).
    lengths = [1, 4, 5, 44, 60, 100, 103, 108, 111, 117, 118, 120, 122, 130, 131, 132, 195, 197, 202, 204, 205, 206,
               218, 226, 234, 235, 236, 250, 262, 276, 277, 294, 307, 401]
    generator = random.Random(0)
    inputs = []
    for _ in range(rows):
        positions, start = [], 0
        while start < WIDTH:
            length = min(generator.choice(lengths), WIDTH - start)
            positions.append(torch.arange(length))
            start += length
        q = torch.randn(1, WIDTH, HEADS, HEAD_DIM).transpose(1, 2).requires_grad_()
        k = torch.randn(1, WIDTH, KV_HEADS, HEAD_DIM).transpose(1, 2).requires_grad_()
        v = torch.randn(1, WIDTH, KV_HEADS, HEAD_DIM).transpose(1, 2).requires_grad_()
        inputs.append((q, k, v, torch.cat(positions)[None], torch.randn(1, WIDTH, HEADS, HEAD_DIM)))
    layer = SimpleNamespace(training=True, num_key_value_groups=HEADS // KV_HEADS)  # what they read of a layer

    def sdpa(q, k, v, positions, grad):  # causal SDPA per example (train.cpu_kernels=false)
        packed_sdpa(layer, q, k, v, None, position_ids=positions)[0].backward(grad)

    def kernel(q, k, v, positions, grad):
        packed_kernel(layer, q, k, v, None, position_ids=positions)[0].backward(grad)

    return {"pytorch_ms": timed(sdpa, inputs) * 1e3, "kernel_ms": timed(kernel, inputs) * 1e3,
            "unit": "forward + backward of one layer on one 512-token packed row"}


def loss_case(tokens: int) -> dict:
    from tailorlm.training.cpu_kernels import cpu_kernels
    from tailorlm.training.loss import softmax_cross_entropy_

    compiled = cpu_kernels()
    inputs = [(torch.randn(tokens, VOCAB) * 3, torch.randint(0, VOCAB, (tokens,))) for _ in range(4)]
    work = torch.empty(tokens, VOCAB)  # both work in place: each call copies its input here first

    def copy_only(logits, targets):
        work.copy_(logits)

    def pytorch(logits, targets):  # the chunked loss's own softmax and gradient (training/loss.py)
        softmax_cross_entropy_(work.copy_(logits), targets, gradient=True)

    def kernel(logits, targets):
        compiled.softmax_cross_entropy_(work.copy_(logits), targets).sum()

    copy = timed(copy_only, inputs)
    return {"pytorch_ms": (timed(pytorch, inputs) - copy) * 1e3, "kernel_ms": (timed(kernel, inputs) - copy) * 1e3,
            "unit": f"softmax cross-entropy and its gradient of a {tokens} x {VOCAB} chunk of logits"}


def swiglu_case() -> dict:
    from tailorlm.training.cpu_kernels import cpu_kernels
    from tailorlm.training.fused import _SwiGLU

    compiled = cpu_kernels()
    inputs = [(torch.randn(WIDTH, MLP, requires_grad=True), torch.randn(WIDTH, MLP, requires_grad=True),
               torch.randn(WIDTH, MLP)) for _ in range(8)]
    return {"pytorch_ms": timed(lambda g, u, d: _SwiGLU.apply(g, u, None).backward(d), inputs) * 1e3,
            "kernel_ms": timed(lambda g, u, d: _SwiGLU.apply(g, u, compiled).backward(d), inputs) * 1e3,
            "unit": "SiLU(gate) * up, forward + backward, one layer on one 512-token row"}


def rms_norm_case() -> dict:
    from tailorlm.training.cpu_kernels import cpu_kernels
    from tailorlm.training.fused import _RMSNorm

    compiled = cpu_kernels()
    weight = torch.randn(HIDDEN)  # frozen, as with LoRA
    inputs = [(torch.randn(WIDTH, HIDDEN, requires_grad=True), torch.randn(WIDTH, HIDDEN)) for _ in range(8)]
    return {"pytorch_ms": timed(lambda x, d: _RMSNorm.apply(x, weight, 1e-5, None).backward(d), inputs) * 1e3,
            "kernel_ms": timed(lambda x, d: _RMSNorm.apply(x, weight, 1e-5, compiled).backward(d), inputs) * 1e3,
            "unit": "RMSNorm forward + backward, one norm on one 512-token row"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu_kernels.json"))
    args = parser.parse_args()
    from tailorlm.training.cpu_kernels import cpu_kernels

    start = time.perf_counter()
    if cpu_kernels() is None:
        raise SystemExit("the kernels could not be built here (see the warning above)")
    build = time.perf_counter() - start
    torch.manual_seed(0)
    cases = {"attention": attention_case(rows=24), "loss_softmax": loss_case(tokens=256),
             "swiglu": swiglu_case(), "rms_norm": rms_norm_case()}
    for case in cases.values():
        case["speedup"] = case["pytorch_ms"] / case["kernel_ms"]
    report = {"threads": torch.get_num_threads(), "build_or_load_seconds": build, "cases": cases}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"{'case':<14}{'PyTorch ms':>12}{'kernel ms':>11}{'speed-up':>10}  per")
    for name, case in cases.items():
        print(f"{name:<14}{case['pytorch_ms']:>12.2f}{case['kernel_ms']:>11.2f}{case['speedup']:>9.2f}x  {case['unit']}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
