"""Token cache throughput and memory: 1 vs 2 tokenizing processes on a corpus bigger than one would hold at once.

    python bench/token_cache.py [--mb 200] [--out bench/results/token_cache.json]

The corpus is tiny Shakespeare repeated to `--mb` megabytes in one text file under /tmp (one document, the hardest
case for memory: nothing splits it but the cache's own pieces). The tokenizer is SmolLM2's (49,152 ids, byte-level
BPE) when the pack is pulled, else the tests' tiny tokenizer. Every case runs in its own process; its memory is the
proportional anonymous memory (Pss_Anon: the heap, not memory-mapped files the kernel can drop, and pages a forked
worker shares with its parent counted once) summed over the process and its children, sampled every 100 ms: the
peak, and the growth over the process's own footprint once its libraries and the tokenizer are loaded. CPU time
(the process and its workers) is reported next to wall time: on a shared machine the wall time measures the other
jobs as much as this code.

Cases: `build_token_cache` with num_proc=1 and num_proc=2 on the full corpus (their token files must be
byte-identical), a second call (cache hit: hashing only), num_proc=1 on a tenth of the corpus (memory must not grow
with size), and the in-memory way users write instead (nanoGPT's prepare.py: read the file, tokenize it in one call,
`np.array(ids, np.uint16).tofile`) on a tenth and a hundredth of the corpus, since the full size would not fit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared/data/pretraining_text/tiny_shakespeare/input.txt"
WORK = Path("/tmp/tailorlm-bench-token-cache")


def load_tokenizer():
    """SmolLM2's tokenizer when its pack is in the cache, else the tests' tiny tokenizer."""
    from transformers import AutoTokenizer

    from tailorlm.errors import ModelError
    from tailorlm.models.hub import resolve

    try:
        return AutoTokenizer.from_pretrained(str(resolve("smollm2-135m-instruct", pull_if_missing=False)))
    except ModelError:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import build_tiny_tokenizer

        return build_tiny_tokenizer()


def make_corpus(megabytes: float) -> Path:
    """Tiny Shakespeare repeated to about `megabytes` MB (written once)."""
    path = WORK / f"shakespeare-{megabytes:g}mb.txt"
    if not path.is_file():
        WORK.mkdir(parents=True, exist_ok=True)
        block = SHAKESPEARE.read_bytes()
        copies = max(1, round(megabytes * 1e6 / len(block)))
        with open(path.with_suffix(".part"), "wb") as fh:
            for _ in range(copies):
                fh.write(block)
        path.with_suffix(".part").rename(path)
    return path


class PeakMemory:
    """Largest Pss_Anon summed over this process and its children, sampled in a thread; `start` is the first sample."""

    def __init__(self) -> None:
        self.start = self.peak = self._total()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self._total())

    @staticmethod
    def _total() -> int:
        import psutil

        me, total = psutil.Process(), 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                with open(f"/proc/{proc.pid}/smaps_rollup") as fh:
                    total += next(int(line.split()[1]) * 1024 for line in fh if line.startswith("Pss_Anon:"))
            except (OSError, StopIteration):
                continue
        return total


def run_case(case: str, corpus: Path, num_proc: int, root: Path) -> dict:
    """One measurement, in this process."""
    import numpy as np

    from tailorlm.data.token_cache import build_token_cache

    tokenizer = load_tokenizer()
    if case != "baseline":
        import datasets  # noqa: F401  (loaded before measuring, as in a training run)
    tokens_file = None
    cpu_before = _cpu_seconds()
    with PeakMemory() as memory:
        start = time.perf_counter()
        if case == "baseline":
            text = corpus.read_text(encoding="utf-8")
            ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] + [tokenizer.eos_token_id]
            tokens_file = root / "baseline.bin"
            root.mkdir(parents=True, exist_ok=True)
            np.array(ids, dtype=np.uint16).tofile(tokens_file)
            num_tokens = len(ids)
        else:
            cache = build_token_cache([corpus], tokenizer, cache_root=root, num_proc=num_proc, progress=False)
            tokens_file, num_tokens = cache.path, cache.num_tokens
        seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_before
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "case": case,
        "num_proc": num_proc,
        "corpus_mb": round(corpus.stat().st_size / 1e6, 1),
        "tokenizer": str(getattr(tokenizer, "name_or_path", "")) or "tiny",
        "seconds": round(seconds, 2),
        "num_tokens": num_tokens,
        "mb_per_s": round(corpus.stat().st_size / 1e6 / seconds, 3),
        "cpu_seconds": round(cpu, 1),
        "mb_per_cpu_s": round(corpus.stat().st_size / 1e6 / cpu, 3),
        "tokens_per_s": round(num_tokens / seconds),
        "peak_anon_mb": round(memory.peak / 1e6, 1),
        "anon_growth_mb": round((memory.peak - memory.start) / 1e6, 1),
        "max_rss_mb": round(max(self_kb, children_kb) * 1024 / 1e6, 1),
        "tokens_sha256": _sha256(tokens_file),
    }


def _cpu_seconds() -> float:
    """User + system time of this process and its finished children (forked tokenizing workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def in_subprocess(case: str, corpus: Path, num_proc: int, root: Path) -> dict:
    command = [sys.executable, __file__, "--case", case, "--corpus", str(corpus), "--num-proc", str(num_proc)]
    output = subprocess.run([*command, "--root", str(root)], check=True, capture_output=True, text=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    print(
        f"{result['case']:>9} num_proc={num_proc} {result['corpus_mb']:>7} MB: {result['seconds']:>7} s "
        f"{result['mb_per_s']:>6} MB/s {result['tokens_per_s']:>9,} tok/s, "
        f"{result['cpu_seconds']} CPU s ({result['mb_per_cpu_s']} MB per CPU s), "
        f"memory peak {result['peak_anon_mb']} MB, growth {result['anon_growth_mb']} MB "
        f"(maxrss {result['max_rss_mb']} MB)",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/token_cache.json")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--num-proc", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.corpus, args.num_proc, args.root)))
        return

    big, tenth, hundredth = make_corpus(args.mb), make_corpus(args.mb / 10), make_corpus(args.mb / 100)
    roots = [WORK / name for name in ("one", "two", "small", "base")]
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)
    results = [
        in_subprocess("build", big, 1, roots[0]),
        in_subprocess("hit", big, 1, roots[0]),
        in_subprocess("build", big, 2, roots[1]),
        in_subprocess("build", tenth, 1, roots[2]),
        in_subprocess("baseline", tenth, 1, roots[3]),
        in_subprocess("baseline", hundredth, 1, roots[3]),
    ]
    one, two = results[0], results[2]
    summary = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
        f"{os.getloadavg()[0]:.1f} at the end (other jobs share this machine)",
        "same_bytes_1_vs_2_processes": one["tokens_sha256"] == two["tokens_sha256"],
        "speedup_2_vs_1_processes": round(one["seconds"] / two["seconds"], 2),
        "small_baseline_equals_cache": results[3]["tokens_sha256"] == results[4]["tokens_sha256"],
        "results": results,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
