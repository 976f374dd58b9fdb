"""RAG indexing throughput, query latency and recall@10: tailorlm against a default LlamaIndex VectorStoreIndex.

    python bench/rag.py                       # all cases: about 35 minutes on a quiet 2-core CPU
    python bench/rag.py --docs 1500 --queries 100 --only tailorlm llamaindex   # a quick look

Setup (issue 5): one corpus built from ../shared/data (medquad_beir and xquad_en_beir corpora, legalbench,
scitldr, gsm8k, pubmedqa contexts, tiny shakespeare in 5,000-character pieces; 16,774 documents, 14.0 M characters,
21,474 chunks as tailorlm cuts them), written as a BEIR corpus.jsonl in a temporary folder. Both pipelines embed
with all-MiniLM-L6-v2 from the same local folder (tailorlm's `minilm-l6` pack), with 2 torch threads, each case
in its own process. Cases: tailorlm as it runs by default (bfloat16 on a CPU with native bfloat16, else float32),
tailorlm forced to float32 (LlamaIndex's arithmetic), and LlamaIndex's defaults (float32, 10 texts a batch). Indexing time runs from reading the corpus file to a searchable index (model loading is
timed apart). Query latency is end to end (embedding the query and searching, k=10), over timed queries after a
warm-up. Recall@10 is scored on xquad_en_beir, indexed on its own by each pipeline, by the BEIR document id of the
ten chunks returned, with the same code for every case.

LlamaIndex is a benchmark-only dependency (bench/README.md says how to install it next to the project's pins).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
XQUAD = DATA / "retrieval" / "xquad_en_beir"
MEDQUAD = DATA / "retrieval" / "medquad_beir"
MODEL = "minilm-l6"
K = 10
THREADS = 2  # the project machine's cores; --threads changes it
CHUNK_TOKENS, OVERLAP = 254, 32  # MiniLM reads 256 tokens, [CLS] and [SEP] included
WARMUP = 20
CASES = ["tailorlm", "tailorlm_float32", "llamaindex"]


# --- the corpus and the queries -------------------------------------------------------------------------------

def corpus_rows(limit: int | None = None) -> list[dict[str, str]]:
    """BEIR rows (_id, title, text) from the shared data, in a fixed order; `limit` keeps an even sample."""
    rows: list[dict[str, str]] = []

    def add(doc_id: str, text: str, title: str | None = None) -> None:
        if text.strip():
            rows.append({"_id": doc_id, "title": title or "", "text": text.strip()})

    for folder in (MEDQUAD, XQUAD):
        for line in (folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            add(row["_id"], row["text"], row.get("title"))
    for path in sorted((DATA / "legal").glob("*/*.tsv")):
        with path.open(encoding="utf-8", newline="") as f:
            for i, row in enumerate(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)):
                add(f"{path.parent.name}-{path.stem}-{i}", row["text"])
    for path in sorted((DATA / "summarization" / "scitldr_a").glob("*.jsonl")):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            add(f"scitldr-{path.stem}-{i}", " ".join(json.loads(line)["source"]))
    for path in sorted((DATA / "education" / "gsm8k").glob("*.jsonl")):
        if "socratic" not in path.name:  # the same questions again, with other answers
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
                row = json.loads(line)
                add(f"gsm8k-{path.stem}-{i}", row["question"] + "\n\n" + row["answer"])
    pubmed = json.loads((DATA / "medical_qa" / "pubmedqa_labeled" / "ori_pqal.json").read_text(encoding="utf-8"))
    for pmid, row in pubmed.items():
        add(f"pubmedqa-{pmid}", "\n\n".join(row["CONTEXTS"]), row["QUESTION"])
    piece = ""
    pieces = []
    for paragraph in (DATA / "pretraining_text" / "tiny_shakespeare" / "input.txt").read_text(encoding="utf-8").split("\n\n"):
        piece += paragraph + "\n\n"
        if len(piece) > 5000:
            pieces.append(piece)
            piece = ""
    for i, text in enumerate([*pieces, piece]):
        add(f"shakespeare-{i}", text)
    # (qa_extractive/xquad holds the same 240 paragraphs as xquad_en_beir, so it adds nothing.)
    if limit is not None and limit < len(rows):
        rows = [rows[i] for i in sorted(random.Random(0).sample(range(len(rows)), limit))]
    return rows


def read_beir(folder: Path) -> tuple[list[dict[str, str]], dict[str, str], dict[str, set[str]]]:
    """A BEIR folder's corpus rows, queries by id and relevant document ids by query id."""
    corpus = [json.loads(line) for line in (folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if line]
    queries = {r["_id"]: r["text"] for r in map(json.loads, (folder / "queries.jsonl").read_text(encoding="utf-8").splitlines())}
    qrels: dict[str, set[str]] = {}
    for row in list(csv.reader((folder / "qrels" / "test.tsv").open(encoding="utf-8"), delimiter="\t"))[1:]:
        if int(row[2]) > 0:
            qrels.setdefault(row[0], set()).add(row[1])
    return corpus, queries, qrels


def timed_queries(n: int) -> tuple[list[str], list[str]]:
    """Warm-up queries and `n` timed queries, half from xquad and half from medquad, in a fixed shuffled order."""
    pool = []
    for folder in (XQUAD, MEDQUAD):
        texts = [json.loads(line)["text"] for line in (folder / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
        random.Random(1).shuffle(texts)
        pool.append(texts)
    timed = [q for pair in zip(pool[0], pool[1]) for q in pair][:n]
    warmup = pool[0][-WARMUP // 2:] + pool[1][-WARMUP // 2:]
    return warmup, timed


def write_corpus(rows: list[dict[str, str]], folder: Path) -> Path:
    """`rows` as a BEIR corpus.jsonl in `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return folder


def read_corpus_file(folder: Path) -> list[dict[str, str]]:
    """The rows of `folder`/corpus.jsonl (what a LlamaIndex user writes to load one)."""
    with (folder / "corpus.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --- measuring, the same for every pipeline -------------------------------------------------------------------

def latency(retrieve: Callable[[str], list[str]], warmup: list[str], queries: list[str]) -> dict:
    """p50/p95/mean milliseconds of `retrieve` over `queries`, after running the warm-up queries."""
    for query in warmup:
        retrieve(query)
    times = []
    for query in queries:
        start = time.perf_counter()
        retrieve(query)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"p50_ms": statistics.median(times), "p95_ms": times[min(len(times) - 1, int(0.95 * len(times)))],
            "mean_ms": statistics.fmean(times), "queries_timed": len(times)}


def recall_at_k(retrieve: Callable[[str], list[str]], queries: dict[str, str], qrels: dict[str, set[str]], k: int = K) -> float:
    """Share of queries with a relevant document among the documents of the k chunks `retrieve` returns."""
    hits = [bool(set(retrieve(queries[qid])[:k]) & relevant) for qid, relevant in qrels.items() if qid in queries]
    return sum(hits) / len(hits)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def token_lengths(tokenizer, texts: list[str]) -> list[int]:
    """Tokens of each text in the embedding model's tokenizer, special tokens left out."""
    from tailorlm.retrieval.chunking import plain_tokenizer

    return [len(e.ids) for e in plain_tokenizer(tokenizer).encode_batch(texts, add_special_tokens=False)]


# --- the cases ------------------------------------------------------------------------------------------------

def case_tailorlm(docs: int | None, n_queries: int, threads: int, dtype: str, modes: tuple[str, ...]) -> dict:
    import bm25s  # noqa: F401  (imported before the clock starts, as LlamaIndex's modules are)
    import lancedb  # noqa: F401
    import torch

    from tailorlm.retrieval.embeddings import Embedder
    from tailorlm.retrieval.index import build_index, open_index
    from tailorlm.retrieval.search import search

    torch.set_num_threads(threads)
    rows = corpus_rows(docs)
    warmup, queries = timed_queries(n_queries)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_corpus(rows, Path(tmp) / "corpus")
        start = time.perf_counter()
        embedder = Embedder(MODEL, dtype=dtype)
        load_s = time.perf_counter() - start
        start, cpu = time.perf_counter(), time.process_time()
        build_index(corpus, Path(tmp) / "index", embedder=embedder, chunk_tokens=CHUNK_TOKENS, overlap=OVERLAP, progress=False)
        index_s, index_cpu_s = time.perf_counter() - start, time.process_time() - cpu
        start = time.perf_counter()
        index = open_index(Path(tmp) / "index", embedder=embedder)
        open_s = time.perf_counter() - start
        texts = [chunk.text for chunk in index.store.all_chunks()]
        result = {"dtype": embedder.dtype, "embed_batch_size": embedder.batch_size, "load_model_s": load_s,
                  "index_s": index_s, "index_cpu_s": index_cpu_s, "open_s": open_s,
                  **sizes(rows, texts, embedder.tokenizer, index_s)}
        for mode in modes:
            result[mode] = latency(lambda q: search(index, q, k=K, mode=mode), warmup, queries)
        vectors = {q: embedder.embed_queries([q])[0] for q in warmup + queries}
        result["dense"]["stages_p50_ms"] = {
            "embed_query": latency(lambda q: embedder.embed_queries([q]), warmup, queries)["p50_ms"],
            "vector_search": latency(lambda q: index.store.search(vectors[q], K), warmup, queries)["p50_ms"]}
        index.close()

        _, queries_x, qrels_x = read_beir(XQUAD)
        build_index(XQUAD, Path(tmp) / "xquad", embedder=embedder, chunk_tokens=CHUNK_TOKENS, overlap=OVERLAP, progress=False)
        with open_index(Path(tmp) / "xquad", embedder=embedder) as index:
            for mode in modes:
                result[mode]["recall_at_10"] = recall_at_k(
                    lambda q: [hit.chunk.doc_id for hit in search(index, q, k=K, mode=mode)], queries_x, qrels_x)
    result["peak_memory_mb"] = peak_rss_mb()
    return result


def case_llamaindex(docs: int | None, n_queries: int, threads: int) -> dict:
    import torch
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.core.vector_stores import VectorStoreQuery
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    from tailorlm.models.hub import resolve

    torch.set_num_threads(threads)
    rows = corpus_rows(docs)
    warmup, queries = timed_queries(n_queries)
    start = time.perf_counter()
    embed_model = HuggingFaceEmbedding(model_name=str(resolve(MODEL)), device="cpu")  # float32, 10 texts a batch
    load_s = time.perf_counter() - start
    tokenizer = embed_model._model.tokenizer
    # Chunk sizes counted in MiniLM's own tokens, as tailorlm counts them (LlamaIndex's default counts tiktoken's).
    splitter = SentenceSplitter(chunk_size=CHUNK_TOKENS, chunk_overlap=OVERLAP,
                                tokenizer=lambda text: tokenizer.encode(text, add_special_tokens=False, verbose=False))

    def documents(folder: Path) -> list:
        # The id travels as metadata; like tailorlm, only the chunk text is embedded.
        return [Document(text=row["text"], metadata={"doc_id": row["_id"], "title": row.get("title", "")},
                         excluded_embed_metadata_keys=["doc_id", "title"], excluded_llm_metadata_keys=["doc_id", "title"])
                for row in read_corpus_file(folder)]

    def build(folder: Path) -> VectorStoreIndex:
        return VectorStoreIndex.from_documents(documents(folder), transformations=[splitter], embed_model=embed_model)

    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_corpus(rows, Path(tmp) / "corpus")
        start, cpu = time.perf_counter(), time.process_time()
        index = build(corpus)
        index_s, index_cpu_s = time.perf_counter() - start, time.process_time() - cpu
        start = time.perf_counter()
        index.storage_context.persist(str(Path(tmp) / "persist"))
        persist_s = time.perf_counter() - start
    texts = [node.get_content() for node in index.docstore.docs.values()]
    result = {"dtype": str(embed_model._model.dtype).removeprefix("torch."), "embed_batch_size": embed_model.embed_batch_size,
              "load_model_s": load_s, "index_s": index_s, "index_cpu_s": index_cpu_s, "persist_s": persist_s,
              **sizes(rows, texts, tokenizer, index_s)}
    retriever = index.as_retriever(similarity_top_k=K)
    result["dense"] = latency(retriever.retrieve, warmup, queries)
    vectors = {q: embed_model.get_query_embedding(q) for q in warmup + queries}
    result["dense"]["stages_p50_ms"] = {
        "embed_query": latency(embed_model.get_query_embedding, warmup, queries)["p50_ms"],
        "vector_search": latency(lambda q: index.vector_store.query(
            VectorStoreQuery(query_embedding=vectors[q], similarity_top_k=K)), warmup, queries)["p50_ms"]}
    del index, retriever

    _, queries_x, qrels_x = read_beir(XQUAD)
    retriever = build(XQUAD).as_retriever(similarity_top_k=K)
    result["dense"]["recall_at_10"] = recall_at_k(
        lambda q: [hit.node.metadata["doc_id"] for hit in retriever.retrieve(q)], queries_x, qrels_x)
    result["peak_memory_mb"] = peak_rss_mb()
    return result


def sizes(rows: list[dict[str, str]], chunk_texts: list[str], tokenizer, index_s: float) -> dict:
    """Documents, characters and chunks (as this pipeline cut them) with their rates, and chunk lengths in tokens."""
    lengths = sorted(token_lengths(tokenizer, chunk_texts))
    chars = sum(len(row["text"]) for row in rows)
    return {"documents": len(rows), "source_chars": chars, "chunks": len(chunk_texts),
            "chunks_per_s": len(chunk_texts) / index_s, "chars_per_s": chars / index_s,
            "chunk_tokens_mean": statistics.fmean(lengths), "chunk_tokens_max": lengths[-1],
            "chunks_over_254_tokens": sum(n > CHUNK_TOKENS for n in lengths)}


# --- driver ---------------------------------------------------------------------------------------------------

def run_case(name: str, docs: int | None, n_queries: int, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, __file__, "--case", name, "--queries", str(n_queries), "--threads", str(threads)]
    command += ["--docs", str(docs)] if docs else []
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(lines[-1])


def table_rows(results: dict) -> list[tuple[str, dict, dict]]:
    """(label, case result, query result) per row: one per pipeline, plus tailorlm's hybrid mode."""
    out = []
    for name, r in results.items():
        for mode in ("dense", "hybrid"):
            if mode in r:
                out.append((f"{name} ({mode})", r, r[mode]))
    return out


def setup(args: argparse.Namespace) -> dict:
    """What was measured, and on what."""
    from importlib.metadata import PackageNotFoundError, version

    from tailorlm.retrieval.embeddings import _native_bfloat16

    versions = {}
    for name in ("torch", "sentence-transformers", "lancedb", "llama-index-core", "llama-index-embeddings-huggingface"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown") if Path("/proc/cpuinfo").exists() else "unknown"
    return {"model": MODEL, "chunk_tokens": CHUNK_TOKENS, "overlap": OVERLAP, "k": K, "threads": args.threads,
            "docs": args.docs or "all", "queries_timed": args.queries, "warmup_queries": WARMUP,
            "cpu": cpu, "cpus": os.cpu_count(), "native_bfloat16": _native_bfloat16(),
            "load_average_at_end": os.getloadavg(), "versions": versions}


def ratios(results: dict) -> dict:
    """Each tailorlm case against LlamaIndex: indexing speed up (>1 is faster), latency share (<1 is faster)."""
    theirs = results.get("llamaindex", {})
    out = {}
    for name in ("tailorlm", "tailorlm_float32"):
        ours = results.get(name, {})
        if "index_s" in ours and "index_s" in theirs:
            out[name] = {
                "indexing_chunks_per_s": ours["chunks_per_s"] / theirs["chunks_per_s"],
                "indexing_chars_per_s": ours["chars_per_s"] / theirs["chars_per_s"],
                "query_p50": ours["dense"]["p50_ms"] / theirs["dense"]["p50_ms"],
                "query_p95": ours["dense"]["p95_ms"] / theirs["dense"]["p95_ms"],
                "recall_at_10_difference": ours["dense"]["recall_at_10"] - theirs["dense"]["recall_at_10"],
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, help="index an even sample of this many documents (default: all)")
    parser.add_argument("--queries", type=int, default=300, help="timed queries per mode (after 20 warm-up queries)")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads in every case")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="*", choices=CASES, help="run only these cases")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "rag.json"))
    args = parser.parse_args()
    if args.case:
        fn = {"tailorlm": lambda: case_tailorlm(args.docs, args.queries, args.threads, "auto", ("dense", "hybrid")),
              "tailorlm_float32": lambda: case_tailorlm(args.docs, args.queries, args.threads, "float32", ("dense",)),
              "llamaindex": lambda: case_llamaindex(args.docs, args.queries, args.threads)}
        print(json.dumps(fn[args.case]()))
        return

    results = {}
    for name in args.only or CASES:
        print(f"running {name} ...", flush=True)
        results[name] = run_case(name, args.docs, args.queries, args.threads)
    report = {"setup": setup(args), "cases": results, "ratios": ratios(results)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"CPU: {report['setup']['cpu']} (native bfloat16: {report['setup']['native_bfloat16']}), "
          f"load average at the end {report['setup']['load_average_at_end'][0]:.1f}")
    print(f"{'case':<28}{'dtype':>9}{'chunks':>8}{'chunks/s':>10}{'kchars/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'R@10':>7}{'peak MB':>9}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<28}  failed: {r['error']}")
    for label, r, q in table_rows(results):
        print(f"{label:<28}{r['dtype']:>9}{r['chunks']:>8}{r['chunks_per_s']:>10.1f}{r['chars_per_s'] / 1000:>10.1f}"
              f"{q['p50_ms']:>9.1f}{q['p95_ms']:>9.1f}{q.get('recall_at_10', float('nan')):>7.3f}{r['peak_memory_mb']:>9.0f}")
    for case, values in report["ratios"].items():
        print(f"{case} vs llamaindex: " + ", ".join(f"{key} {value:.3f}" for key, value in values.items()))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
