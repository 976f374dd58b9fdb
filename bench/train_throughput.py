"""Training throughput and memory: tailorlm against TRL's SFTTrainer + peft, measured in one run on this machine.

    python bench/train_throughput.py            # all cases, ~10 minutes on 2 CPU cores
    python bench/train_throughput.py --steps 2  # quicker, noisier

Setup (issue 3): SmolLM2-135M-Instruct, LoRA r=16 on all linear layers, MedQuAD question/answer pairs as chat,
batch 4, max length 512, fp32 on CPU. tailorlm's LoRA runs three times: as it trains by default (fp32 linear layers
through oneDNN, training/matmul.py; attention, loss softmax, SwiGLU and RMSNorm through its compiled kernels,
training/cpu_kernels.py), with train.cpu_kernels=false (oneDNN only), and with both off (PyTorch's own operations
throughout: MKL products, SDPA per example). Each case runs in its own process so that its peak memory is its own.
Real tokens are non-padding input tokens. TRL is a benchmark-only dependency: pip install "trl==1.16.*".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "medical_qa" / "medquad"
SLICE = ROOT / "examples" / "data" / "medical_qa" / "medquad"
MODEL = "smollm2-135m-instruct"
BATCH, MAX_LENGTH, RANK = 4, 512, 16
CASES = ["tailorlm_lora", "tailorlm_lora_no_kernels", "tailorlm_lora_mkl", "trl_default", "trl_packed", "tailorlm_full"]


def medquad_messages(limit: int = 2000) -> list[list[dict[str, str]]]:
    folder = SHARED if SHARED.is_dir() else SLICE
    rows = []
    for file in sorted(folder.glob("*.jsonl")):
        rows += [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [[{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]
            for r in rows[:limit]]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def case_tailorlm(method: str, steps: int, cpu_matmul: str = "onednn", cpu_kernels: bool = True) -> dict:
    from tailorlm.training.config import resolve_config
    from tailorlm.training.loop import train
    from tailorlm.training.tracking import read_metrics

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "medquad.jsonl"
        data.write_text("\n".join(json.dumps({"messages": m}) for m in medquad_messages()), encoding="utf-8")
        config = resolve_config(values={
            "model": MODEL, "objective": "sft", "method": method, "data": str(data), "output": str(Path(tmp) / "out"),
        }, overrides=[f"train.max_steps={steps + 1}", f"train.batch_size={BATCH}", f"train.max_length={MAX_LENGTH}",
                      f"lora.r={RANK}", "data.split={}", "train.tensorboard=false", "train.warmup_steps=0",
                      f"train.cpu_matmul={cpu_matmul}", f"train.cpu_kernels={str(cpu_kernels).lower()}"])
        train(config)
        records = [r for r in read_metrics(Path(tmp) / "out") if "loss" in r][1:]  # step 1 pays one-off costs
    tokens = sum(r["step_tokens"] for r in records)
    seconds = sum(r["step_tokens"] / r["tokens_per_second"] for r in records)
    return {"real_tokens_per_second": tokens / seconds, "seconds_per_step": seconds / len(records),
            "peak_memory_mb": peak_rss_mb(), "steps_timed": len(records)}


def case_trl(packing: bool, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tailorlm.models.hub import resolve

    path = resolve(MODEL)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    dataset = Dataset.from_list([{"messages": m} for m in medquad_messages()])
    timings: list[float] = []
    real_tokens: list[int] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            timings.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as tmp:
        config = SFTConfig(output_dir=tmp, per_device_train_batch_size=BATCH, max_length=MAX_LENGTH, max_steps=steps + 1,
                           packing=packing, gradient_checkpointing=not packing, report_to=[], save_strategy="no",
                           logging_steps=1, use_cpu=True, bf16=False, dataloader_num_workers=0)
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules="all-linear",
                                                    task_type="CAUSAL_LM"),
                             callbacks=[Clock()])
        collate = trainer.data_collator

        def counting(features):
            batch = collate(features)
            mask = batch.get("attention_mask")
            if mask is not None and mask.dim() == 2:
                real_tokens.append(int(mask.sum()))
            else:  # packed rows without a mask: count what is not padding
                real_tokens.append(int((batch["input_ids"] != tokenizer.pad_token_id).sum()))
            return batch

        trainer.data_collator = counting
        trainer.train()
    tokens, seconds = sum(real_tokens[1:steps + 1]), sum(timings[1:])
    return {"real_tokens_per_second": tokens / seconds, "seconds_per_step": seconds / len(timings[1:]),
            "peak_memory_mb": peak_rss_mb(), "steps_timed": len(timings[1:])}


def matmul_ceiling() -> dict:
    """fp32 GFLOP/s of a few products, through PyTorch's default (`a @ b`, MKL) and through oneDNN (`_onednn` names),
    as tailorlm's training multiplies by default (training/matmul.py)."""
    import torch

    from tailorlm.training.matmul import mm_t, onednn_unavailable

    shapes = {"square_2048": (2048, 2048, 2048), "mlp_1024x576x1536": (1024, 576, 1536),
              "lm_head_1024x576x49152": (1024, 576, 49152)}
    products = {name: (shape, lambda a, w: a @ w.t()) for name, shape in shapes.items()}
    if onednn_unavailable() is None:
        for name in ("mlp_1024x576x1536", "lm_head_1024x576x49152"):
            products[f"{name}_onednn"] = (shapes[name], mm_t)
    results = {}
    for name, ((m, k, n), multiply) in products.items():
        a, w = torch.randn(m, k), torch.randn(n, k)
        multiply(a, w)
        start, reps = time.perf_counter(), 0
        while time.perf_counter() - start < 2.0:
            multiply(a, w)
            reps += 1
        results[name] = 2 * m * k * n * reps / (time.perf_counter() - start) / 1e9
    return results


def cpu_flags() -> list[str]:
    """The vector extensions of this CPU that matter to the kernels (fbgemm uses AVX-512 where there is one)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f in ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_fp16"))


def run_case(name: str, steps: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, __file__, "--case", name, "--steps", str(steps)], env=env,
                         capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per case (after one warm-up step)")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="*", choices=CASES, help="run only these cases")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_throughput.json"))
    args = parser.parse_args()
    if args.case:
        fn = {"tailorlm_lora": lambda: case_tailorlm("lora", args.steps),
              "tailorlm_lora_no_kernels": lambda: case_tailorlm("lora", args.steps, cpu_kernels=False),
              "tailorlm_lora_mkl": lambda: case_tailorlm("lora", args.steps, "default", cpu_kernels=False),
              "tailorlm_full": lambda: case_tailorlm("full", args.steps),
              "trl_default": lambda: case_trl(False, args.steps), "trl_packed": lambda: case_trl(True, args.steps)}
        print(json.dumps(fn[args.case]()))
        return

    ceiling = matmul_ceiling()
    results = {name: run_case(name, args.steps) for name in (args.only or CASES)}
    n_params = 134_515_008
    # The machine's fp32 matmul ceiling: the faster of PyTorch's default (MKL) and oneDNN on a training-sized layer.
    mkl = ceiling["mlp_1024x576x1536"]
    best = max(mkl, ceiling.get("mlp_1024x576x1536_onednn", 0.0))
    lora_limit, full_limit = best * 1e9 / (4 * n_params), best * 1e9 / (6 * n_params)
    lora_limit_mkl, full_limit_mkl = mkl * 1e9 / (4 * n_params), mkl * 1e9 / (6 * n_params)
    report = {"setup": {"model": MODEL, "batch": BATCH, "max_length": MAX_LENGTH, "lora_rank": RANK,
                        "steps_timed": args.steps, "threads": __import__("torch").get_num_threads(),
                        "cpu_flags": cpu_flags()},
              "matmul_gflops": ceiling, "matmul_ceiling_gflops": best,
              "lora_limit_tokens_per_second": lora_limit, "full_limit_tokens_per_second": full_limit,
              "lora_limit_at_mkl_rate_tokens_per_second": lora_limit_mkl,
              "full_limit_at_mkl_rate_tokens_per_second": full_limit_mkl, "cases": results}
    default, packed = (results.get(k, {}) for k in ("trl_default", "trl_packed"))
    ratios = {}
    for case, suffix in (("tailorlm_lora", ""), ("tailorlm_lora_no_kernels", "_no_kernels"), ("tailorlm_lora_mkl", "_mkl")):
        ours = results.get(case, {})
        if "real_tokens_per_second" not in ours:
            continue
        ratios[f"share_of_lora_limit{suffix}"] = ours["real_tokens_per_second"] / lora_limit
        ratios[f"share_of_lora_limit_at_mkl_rate{suffix}"] = ours["real_tokens_per_second"] / lora_limit_mkl
        if "real_tokens_per_second" in default:
            ratios[f"vs_trl_default_speed{suffix}"] = ours["real_tokens_per_second"] / default["real_tokens_per_second"]
            ratios[f"vs_trl_default_memory{suffix}"] = ours["peak_memory_mb"] / default["peak_memory_mb"]
        if "real_tokens_per_second" in packed:
            ratios[f"vs_trl_packed_speed{suffix}"] = ours["real_tokens_per_second"] / packed["real_tokens_per_second"]
            ratios[f"vs_trl_packed_memory{suffix}"] = ours["peak_memory_mb"] / packed["peak_memory_mb"]
    if ratios:
        report["ratios"] = ratios
    full = results.get("tailorlm_full", {})
    if "real_tokens_per_second" in full:
        report.setdefault("ratios", {})["full_share_of_matmul_ceiling"] = full["real_tokens_per_second"] / full_limit
        report["ratios"]["full_share_of_mkl_rate"] = full["real_tokens_per_second"] / full_limit_mkl
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"matmul ceiling: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in ceiling.items()))
    print(f"{'case':<26}{'real tok/s':>12}{'s/step':>9}{'peak MB':>10}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<26}  failed: {r['error']}")
        else:
            print(f"{name:<26}{r['real_tokens_per_second']:>12.1f}{r['seconds_per_step']:>9.2f}{r['peak_memory_mb']:>10.0f}")
    for key, value in report.get("ratios", {}).items():
        print(f"{key}: {value:.2f}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
