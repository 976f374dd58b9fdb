"""fp32 matrix multiplications on the CPU: PyTorch's default (MKL) against oneDNN (training/matmul.py), in one run.

    python bench/cpu_matmul.py        # about 2 minutes on 2 CPU cores

Part 1 times the products of a SmolLM2-135M training step (512-token rows) and of decoding (1 and 8 rows), each
both ways. Part 2 evaluates as `tailor eval` does, on SmolLM2-135M-Instruct: greedy answers to 8 questions (48 new
tokens, batched) and constrained-choice scoring of 8 long prompts, with the model's linear layers on PyTorch's own path
and then through oneDNN (`evaluation/evaluator.py` uses oneDNN by default), and checks that the answers are the same.
Writes bench/results/cpu_matmul.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # name: (rows, in, out)
    "train: MLP up, 512 rows": (512, 576, 1536),
    "train: MLP down, 512 rows": (512, 1536, 576),
    "train: attention q/o, 512 rows": (512, 576, 576),
    "train: output layer, 256 rows": (256, 576, 49152),
    "decode: MLP up, 1 row": (1, 576, 1536),
    "decode: output layer, 1 row": (1, 576, 49152),
    "decode: MLP up, 8 rows": (8, 576, 1536),
    "decode: output layer, 8 rows": (8, 576, 49152),
}
QUESTIONS = ["What is the capital of France?", "Name three primary colors.", "What is 12 times 12?",
             "Explain photosynthesis in one sentence.", "Who wrote Hamlet?", "What is the boiling point of water?",
             "Translate 'hello' into Spanish.", "What is a prime number?"]


def seconds_per_call(fn, budget: float = 0.7) -> float:
    fn()
    fn()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < budget:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls


def products() -> dict[str, dict[str, float]]:
    from tailorlm.training.matmul import mm_t

    results = {}
    for name, (rows, k, n) in SHAPES.items():
        x, w = torch.randn(rows, k), torch.randn(n, k)
        flops = 2 * rows * k * n
        mkl, onednn = seconds_per_call(lambda: F.linear(x, w)), seconds_per_call(lambda: mm_t(x, w))
        results[name] = {"mkl_gflops": flops / mkl / 1e9, "onednn_gflops": flops / onednn / 1e9,
                         "speedup": mkl / onednn}
    return results


def evaluation() -> dict[str, float | bool]:
    from tailorlm.evaluation.likelihood import greedy, option_logprobs
    from tailorlm.models.load import load_model
    from tailorlm.training.matmul import onednn_linear

    model, tokenizer = load_model("smollm2-135m-instruct", progress=False)
    model.eval()
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True) for q in QUESTIONS]
    long_prompts = [tokenizer(p)["input_ids"] * 20 for p in prompts]  # about 600 tokens each
    options = [tokenizer(w)["input_ids"] for w in (" positive", " negative", " neutral")]
    pad = tokenizer.pad_token_id or 0

    def run() -> tuple[float, float, list, list]:
        start = time.perf_counter()
        answers = greedy(model, tokenizer, prompts, 48)
        generated = time.perf_counter() - start
        start = time.perf_counter()
        scores = option_logprobs(model, long_prompts, options, pad_id=pad)
        return generated, time.perf_counter() - start, answers, scores

    own = run()
    with onednn_linear(model):
        fast = run()
    return {"greedy_8x48_seconds_default": own[0], "greedy_8x48_seconds_onednn": fast[0],
            "greedy_speedup": own[0] / fast[0],
            "choice_8x600_seconds_default": own[1], "choice_8x600_seconds_onednn": fast[1],
            "choice_speedup": own[1] / fast[1], "same_greedy_answers": own[2] == fast[2],
            "max_logprob_difference": max(abs(a - b) for r, s in zip(own[3], fast[3]) for a, b in zip(r, s))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu_matmul.json"))
    args = parser.parse_args()
    from tailorlm.training.matmul import onednn_unavailable

    why = onednn_unavailable()
    if why is not None:
        raise SystemExit(f"nothing to compare: {why}")
    report = {"threads": torch.get_num_threads(), "products": products(), "evaluation": evaluation()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"{'product':<34}{'MKL GFLOP/s':>13}{'oneDNN GFLOP/s':>16}{'speed-up':>10}")
    for name, r in report["products"].items():
        print(f"{name:<34}{r['mkl_gflops']:>13.0f}{r['onednn_gflops']:>16.0f}{r['speedup']:>9.2f}x")
    e = report["evaluation"]
    print(f"greedy, 8 questions x 48 tokens: {e['greedy_8x48_seconds_default']:.2f} s -> "
          f"{e['greedy_8x48_seconds_onednn']:.2f} s ({e['greedy_speedup']:.2f}x), same answers: {e['same_greedy_answers']}")
    print(f"choice scoring, 8 prompts of ~600 tokens: {e['choice_8x600_seconds_default']:.2f} s -> "
          f"{e['choice_8x600_seconds_onednn']:.2f} s ({e['choice_speedup']:.2f}x), "
          f"largest log-probability difference {e['max_logprob_difference']:.1e}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
