"""`tailor rag`: index documents, search them, answer with citations, evaluate retrieval, build RAFT training data."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Any

SNIPPET_CHARS = 300


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    index = sub.add_parser("index", help="index documents (incremental: only new or changed files are embedded)",
                           description="Read, chunk and embed documents into an index folder. Re-running embeds only "
                           "new or changed files and drops chunks of deleted ones.")
    index.add_argument("paths", nargs="+", metavar="PATHS", help=".txt .md .html .pdf .docx, .jsonl/.csv rows, a BEIR "
                       "folder or corpus.jsonl; folders are read recursively")
    index.add_argument("--index", required=True, metavar="DIR", help="index folder (created when missing)")
    index.add_argument("--embed-model", default="minilm-l6", metavar="REF",
                       help="sentence-transformers model reference (default minilm-l6); an index holds one model")
    index.add_argument("--chunk-tokens", type=int, metavar="N", help="chunk size in tokens (default: what the model reads at once)")
    index.add_argument("--overlap", type=int, default=32, metavar="M", help="tokens shared by neighbouring chunks (default 32)")
    index.add_argument("--backend", choices=("lance", "qdrant"), default="lance",
                       help="chunk store: embedded LanceDB (default) or Qdrant's local mode")
    index.add_argument("--text-column", default="text", metavar="C", help="text column of JSONL/CSV rows (default text)")
    index.add_argument("--id-column", metavar="C", help="document id column of JSONL/CSV rows (default: file#row)")

    query = sub.add_parser("query", help="print the chunks that best match a question, with sources and scores",
                           description="Search an index and print the ranked chunks with their sources and scores.")
    query.add_argument("question")
    query.add_argument("--index", required=True, metavar="DIR", help="index folder made by `tailor rag index`")
    add_retrieval_flags(query)
    query.add_argument("--json", action="store_true", help="print the hits as a JSON list, nothing else")

    evaluate = sub.add_parser("eval", help="recall@1/5/10, MRR@10 and nDCG@10 of dense, BM25 and hybrid search",
                              description="Score retrieval against relevance judgements (BEIR layout), one row per mode.")
    evaluate.add_argument("--index", required=True, metavar="DIR", help="index folder made by `tailor rag index`")
    evaluate.add_argument("--queries", required=True, metavar="FILE_OR_BEIR_FOLDER",
                          help="queries.jsonl (_id, text), or a BEIR folder that also holds qrels/<split>.tsv")
    evaluate.add_argument("--qrels", metavar="FILE.tsv", help="qrels TSV: query-id, corpus-id, score, after a header line")
    evaluate.add_argument("--modes", default="dense,bm25,hybrid", metavar="M,M",
                          help="comma-separated search modes (default dense,bm25,hybrid)")
    evaluate.add_argument("--split", default="test", help="qrels split of a BEIR folder (default test)")
    evaluate.add_argument("--per-query", metavar="OUT.jsonl", help="also write one line per query and mode")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON, nothing else")

    ask = sub.add_parser("ask", help="answer a question from the documents, citing them as [1], [2]",
                         description="Retrieve passages, then stream an answer that cites them, followed by the sources.")
    ask.add_argument("question")
    ask.add_argument("--model", required=True, metavar="REF_OR_SPECIALIST",
                     help="a model reference, or a RAG specialist folder (which names its index and settings)")
    ask.add_argument("--index", metavar="DIR", help="index folder (default: the specialist's)")
    add_retrieval_flags(ask)
    add_answer_flags(ask)
    ask.add_argument("--json", action="store_true", help="print the answer and its sources as JSON, nothing else")

    specialist = sub.add_parser("specialist", help="save a RAG specialist: a model, an index and retrieval settings",
                                description="Save a folder that `tailor rag ask --model` (and evaluation, chat, serving) "
                                "use as a retrieval-augmented model.")
    specialist.add_argument("--model", required=True, metavar="REF_OR_SPECIALIST", help="the model that answers")
    specialist.add_argument("--index", required=True, metavar="DIR", help="index folder made by `tailor rag index`")
    specialist.add_argument("--output", required=True, metavar="DIR", help="folder for the specialist")
    add_retrieval_flags(specialist)
    add_answer_flags(specialist)

    training = sub.add_parser("build-training", help="write RAFT chat examples: retrieved passages plus distractors",
                              description="Write chat examples whose prompt holds the relevant passage and distractors "
                              "(in random order) and whose answer is the reference: a data file for `tailor train`.")
    training.add_argument("--index", required=True, metavar="DIR", help="index folder made by `tailor rag index`")
    training.add_argument("--questions", required=True, metavar="FILE_OR_BEIR_FOLDER", help="questions with reference answers")
    training.add_argument("--output", required=True, metavar="FILE.jsonl", help="chat examples to write")
    training.add_argument("--distractors", type=int, default=3, metavar="N", help="passages beside the relevant one (default 3)")
    training.add_argument("--oracle-share", type=float, default=0.8, metavar="P",
                          help="share of examples that hold the relevant passage (default 0.8)")
    training.add_argument("--seed", type=int, default=0, help="seed for the passage order and oracle choice (default 0)")
    training.add_argument("--limit", type=int, metavar="N", help="at most this many examples")
    training.add_argument("--split", help="qrels split of a BEIR folder (default test, or its only split)")
    training.add_argument("--k-candidates", type=int, default=20, metavar="N",
                          help="retrieved chunks that distractors are drawn from (default 20)")


def add_retrieval_flags(parser: argparse.ArgumentParser) -> None:
    """The search flags of query, ask and specialist; each defaults to None, so that only the flags given apply."""
    parser.add_argument("--k", type=int, metavar="N", help="chunks to retrieve (default 5)")
    parser.add_argument("--mode", choices=("dense", "bm25", "hybrid"), help="search mode (default hybrid)")
    parser.add_argument("--filter", action="append", metavar="KEY=VALUE",
                        help="keep chunks whose doc_id, title, heading, page or metadata field equals VALUE (repeatable)")
    parser.add_argument("--rerank", action="store_true", default=None, help="rescore the candidates with a cross-encoder")
    parser.add_argument("--reranker", metavar="REF", help="cross-encoder model reference for reranking (implies --rerank)")
    parser.add_argument("--mmr", type=float, metavar="LAMBDA",
                        help="reorder for diversity: 1 = most relevant, 0 = most diverse (e.g. 0.7)")


def add_answer_flags(parser: argparse.ArgumentParser) -> None:
    """The answering flags shared by ask and specialist."""
    parser.add_argument("--min-score", type=float, metavar="X",
                        help="below this best cosine similarity of question and chunk, say the documents do not hold the answer")
    parser.add_argument("--max-new-tokens", type=int, metavar="N", help="longest answer in tokens")


def run(args: argparse.Namespace) -> int:
    return {"index": _index, "query": _query, "eval": _eval, "ask": _ask, "specialist": _specialist,
            "build-training": _build_training}[args.action](args)


def retrieval_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The retrieval and answering flags the user gave, by setting name (search's and RagSettings' keywords)."""
    from tailorlm.retrieval.search import parse_filters

    settings = {name: getattr(args, name, None) for name in ("k", "mode", "mmr", "reranker", "min_score", "max_new_tokens")}
    settings["filters"] = parse_filters(args.filter) if args.filter else None
    settings["rerank"] = True if args.reranker else args.rerank
    return {name: value for name, value in settings.items() if value is not None}


def _index(args: argparse.Namespace) -> int:
    from tailorlm.retrieval.index import build_index

    report = build_index(args.paths, args.index, embed_model=args.embed_model, chunk_tokens=args.chunk_tokens,
                         overlap=args.overlap, backend=args.backend, text_column=args.text_column, id_column=args.id_column)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"indexed into {args.index}: {report.summary()}")
    return 0


def _query(args: argparse.Namespace) -> int:
    from tailorlm.retrieval.index import open_index
    from tailorlm.retrieval.search import search

    with open_index(args.index) as index:
        hits = search(index, args.question, **retrieval_settings(args))
    for note in hits.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps([_hit_dict(rank, hit) for rank, hit in enumerate(hits, start=1)], indent=2, ensure_ascii=False))
        return 0
    if not hits:
        print("no chunk matches" + (" the filters" if args.filter else ""))
    for rank, hit in enumerate(hits, start=1):
        print(f"[{rank}] score {hit.score:.4f}  {_source(hit.chunk)}")
        print(textwrap.indent(textwrap.shorten(hit.chunk.text, SNIPPET_CHARS, placeholder=" …"), "    "))
    return 0


def _source(chunk: Any) -> str:
    """Where a chunk comes from: its source label, then its document id when the label does not already say it."""
    from tailorlm.retrieval.prompt import source_label

    label = source_label(chunk)
    return label if label.split(" — ")[0] == chunk.doc_id else f"{label}  (doc_id {chunk.doc_id})"


def _hit_dict(rank: int, hit: Any) -> dict[str, Any]:
    """One hit as JSON: rank, score, ids, source fields, character offsets and the chunk's full text."""
    from tailorlm.retrieval.prompt import source_label

    chunk = hit.chunk
    return {"rank": rank, "score": hit.score, "chunk_id": chunk.chunk_id, "doc_id": chunk.doc_id,
            "source": source_label(chunk), "path": chunk.metadata.get("path"), "title": chunk.title,
            "heading": chunk.heading, "page": chunk.page, "start": chunk.start, "end": chunk.end,
            "text": chunk.text, "metadata": chunk.metadata}


def _eval(args: argparse.Namespace) -> int:
    from tailorlm.retrieval.evaluation import evaluate_index, read_eval_set
    from tailorlm.retrieval.index import open_index

    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    data = read_eval_set(args.queries, args.qrels, split=args.split)
    with open_index(args.index) as index:
        result = evaluate_index(index, data.queries, data.qrels, modes, keep_per_query=bool(args.per_query),
                                progress=not args.json)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.per_query:
        lines = result.write_per_query(args.per_query)
        print(f"wrote {lines} per-query lines to {args.per_query}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"{result.queries} queries ({data.qrels_path}), documents ranked by their best chunk\n{result.table()}")
    return 0


def _ask(args: argparse.Namespace) -> int:
    from tailorlm.strategies.rag import ask

    stream = None if args.json else (lambda piece: print(piece, end="", flush=True))
    answer = ask(args.question, model=args.model, index=args.index, overrides=retrieval_settings(args), on_text=stream)
    if args.json:
        print(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
        return 0
    print(f"\n\n{answer.sources_text()}" if answer.sources else "")
    for note in answer.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _specialist(args: argparse.Namespace) -> int:
    from tailorlm.strategies.rag import save_rag_specialist

    folder = save_rag_specialist(args.output, model=args.model, index=args.index, overrides=retrieval_settings(args))
    print(f"saved the RAG specialist to {folder}\nuse it: tailor rag ask \"your question\" --model {folder}")
    return 0


def _build_training(args: argparse.Namespace) -> int:
    from tailorlm.retrieval.raft import build_training_data

    report = build_training_data(args.index, args.questions, args.output, distractors=args.distractors,
                                 oracle_share=args.oracle_share, seed=args.seed, limit=args.limit,
                                 candidates=args.k_candidates, split=args.split, progress=True)
    for warning in report.warnings[:10]:
        print(f"warning: {warning}", file=sys.stderr)
    if len(report.warnings) > 10:
        print(f"warning: ... and {len(report.warnings) - 10} more rows skipped", file=sys.stderr)
    print(report.summary())
    return 0
