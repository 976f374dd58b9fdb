"""Micro-benchmark of training/packing.py and training/loss.py on this CPU; prints a table and writes JSON.

    python bench/packing_and_loss.py [--out bench/packing_and_loss.json]

1. Padding waste on real data (MedQuAD chat pairs, SmolLM2 tokenizer, max length 512, batch 4): random
   batches vs length-grouped batches vs best-fit-decreasing packing; time to pack 100k examples.
2. LM head + cross-entropy at SmolLM2's shape (hidden 576, vocabulary 49,152), 4 x 512 tokens: full fp32 logits
   (what transformers does) vs the chunked loss, forward + backward time and peak resident memory growth.
3. Attention isolation cost: a SmolLM2-shaped 4-layer trunk, 4 x 512 tokens, plain causal vs packed masks.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tailorlm.training.loss import HeadTransform, _checkpointed_cross_entropy, _LinearCrossEntropy
from tailorlm.training.packing import group_by_length_batches, pack_best_fit, packing_stats

ROOT = Path(__file__).resolve().parents[1]
MEDQUAD = ROOT / "examples/data/medical_qa/medquad"
TOKENIZER = Path.home() / ".cache/tailorlm/models/smollm2-135m-instruct"


def peak_growth(fn) -> tuple[float, int]:
    """(seconds, peak resident memory growth in bytes) of one call; Linux only."""

    def status(key: str) -> int:
        return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))

    open("/proc/self/clear_refs", "w").write("5")
    before = status("VmRSS:")
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, status("VmHWM:") - before


def best_times(cases: dict, rounds: int = 4) -> dict[str, float]:
    """Fastest of `rounds` calls of each case, taken round-robin so that a busy moment hits every case alike."""
    best = {name: float("inf") for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def padding(report: dict) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    rows = [json.loads(line) for f in sorted(MEDQUAD.glob("*.jsonl")) for line in f.open()]
    lengths = [
        min(512, len(tok.apply_chat_template([{"role": "user", "content": r["question"]},
                                             {"role": "assistant", "content": r["answer"]}],
                                            tokenize=True, return_dict=True)["input_ids"]))
        for r in rows
    ]
    real = sum(lengths)
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    random_batches = [order[k : k + 4] for k in range(0, len(order), 4)]
    grouped = group_by_length_batches(lengths, batch_size=4, seed=0)
    examples = [{"input_ids": [0] * n} for n in lengths]
    packs = pack_best_fit(examples, 512)

    def padded(batches: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    report["padding"] = {
        "examples": len(lengths),
        "mean_tokens": real / len(lengths),
        "random_batches_real_share": real / padded(random_batches),
        "length_grouped_real_share": real / padded(grouped),
        "packed_real_share": packing_stats(packs, 512).efficiency,
        "packed_rows": len(packs),
    }
    rng = random.Random(1)
    many = [{"input_ids": [0] * rng.randint(20, 500)} for _ in range(100_000)]
    start = time.perf_counter()
    pack_best_fit(many, 2048)
    report["padding"]["pack_100k_seconds"] = time.perf_counter() - start


def head_loss(report: dict, trained_share: float, weight_trains: bool) -> None:
    torch.manual_seed(0)
    n_tokens, hidden_size, vocab = 2048, 576, 49_152
    weight = (torch.randn(vocab, hidden_size) * 0.02).requires_grad_(weight_trains)
    hidden = torch.randn(n_tokens, hidden_size, requires_grad=True)
    targets = torch.randint(0, vocab, (n_tokens,))
    targets[torch.rand(n_tokens) > trained_share] = -100
    keep = targets != -100
    results = {}

    def full() -> None:  # transformers: logits for every position, then cross-entropy with ignore_index
        logits = (hidden @ weight.t()).float()  # (N, V)
        F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum").backward()

    def fused(chunk: int):
        def run() -> None:
            _LinearCrossEntropy.apply(hidden[keep], weight, None, targets[keep], HeadTransform(), chunk).backward()

        return run

    def checkpointed(chunk: int):
        head = torch.nn.Linear(hidden_size, vocab, bias=False)
        head.weight = torch.nn.Parameter(weight.detach(), requires_grad=weight_trains)

        def run() -> None:
            _checkpointed_cross_entropy(head, HeadTransform(), hidden[keep], targets[keep], chunk).backward()

        return run

    cases = {"full logits": full}
    cases.update({f"chunked {c}": fused(c) for c in (256, 1024)})
    cases["checkpointed 1024"] = checkpointed(1024)
    for name, fn in cases.items():
        fn()  # warm-up
        results[name] = {"peak_growth_mb": peak_growth(fn)[1] / 1e6}
    for name, seconds in best_times(cases).items():
        results[name]["seconds"] = seconds
    key = f"head+loss, {trained_share:.0%} of tokens trained, head weight {'trains' if weight_trains else 'frozen'}"
    report[key] = results


def attention(report: dict) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=576, intermediate_size=1536, num_hidden_layers=4,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048)
    trunk = LlamaForCausalLM(config).model.train()
    ids = torch.randint(0, 1000, (4, 512))
    lengths = [100, 200, 150, 62]
    positions = torch.cat([torch.arange(n) for n in lengths]).expand(4, -1)  # (B, T)
    segment = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)]).expand(4, -1)
    allowed = (segment[:, :, None] == segment[:, None, :]) & torch.ones(512, 512, dtype=torch.bool).tril()
    additive = torch.zeros(4, 1, 512, 512).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)

    def step(**kw):
        return lambda: trunk(ids, use_cache=False, **kw).last_hidden_state.sum().backward()

    cases = {
        "causal, no mask (unpacked)": step(),
        "packed: position_ids (chosen)": step(position_ids=positions),
        "packed: 4D additive float mask": step(position_ids=positions, attention_mask=additive),
    }
    for fn in cases.values():
        fn()  # warm-up
    timings = {name: {"seconds": seconds} for name, seconds in best_times(cases).items()}
    report["4-layer SmolLM2-shaped trunk fwd+bwd, 4x512"] = timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/packing_and_loss.json")
    args = parser.parse_args()
    report: dict = {"torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if TOKENIZER.exists() and MEDQUAD.exists():
        padding(report)
    for share, trains in ((1.0, False), (0.5, False), (1.0, True)):
        head_loss(report, share, trains)
    attention(report)
    print(json.dumps(report, indent=2))
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
