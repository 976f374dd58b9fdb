#!/usr/bin/env python3
"""Cut the small, shipped slices under ``examples/data`` from the full public datasets.

Usage (from the repository root)::

    python scripts/make_examples.py                      # reads ../shared/data, writes examples/data
    python scripts/make_examples.py /path/to/shared/data # another copy of the full data
    python scripts/make_examples.py --check              # rebuild in a temporary folder, compare byte for byte

Standard library only, and deterministic: every sample comes from its own
``random.Random`` seeded with ``SEED`` and the slice's name, picked rows keep their
original relative order, and files are read and written in a fixed order. Rows are
copied as the original raw bytes (no re-serialisation) wherever the format allows,
so the loaders see exactly the formats the full files have. Whole-file JSON documents
(SQuAD, PubMedQA) are re-written with the indentation and escaping that reproduce
the original file byte for byte (checked before writing). Gzip output has mtime 0 and
no file name, so it is byte-identical from run to run.

Each output folder gets a SOURCE.txt: the original's lines (repo, commit, paths,
license, notes) copied verbatim, followed by what slice was taken and how.
"""

from __future__ import annotations

import argparse
import csv
import filecmp
import gzip
import hashlib
import io
import json
import random
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SEED = 20240617
SCRIPT = "scripts/make_examples.py"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO_ROOT.parent / "shared" / "data"
DEFAULT_OUT = REPO_ROOT / "examples" / "data"


# ---------------------------------------------------------------------------------------------
# helpers


def rng_for(*parts: object) -> random.Random:
    """A private, deterministic generator per slice (and per stratum)."""
    return random.Random(f"{SEED}/" + "/".join(str(p) for p in parts))


def pick_in_order(n_items: int, k: int, rng: random.Random) -> list[int]:
    """k distinct indices out of range(n_items), returned in ascending (original) order."""
    if k > n_items:
        raise SystemExit(f"asked for {k} rows but only {n_items} exist")
    return sorted(rng.sample(range(n_items), k))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def split_lines(data: bytes) -> tuple[list[bytes], bool]:
    """Split on b'\\n' only (never on NEL / U+2028 etc.); report whether the file ends with a newline."""
    ends_nl = data.endswith(b"\n")
    lines = data.split(b"\n")
    if ends_nl:
        lines.pop()
    return lines, ends_nl


def join_lines(lines: list[bytes], ends_nl: bool) -> bytes:
    out = b"\n".join(lines)
    return out + b"\n" if ends_nl and lines else out


def read_jsonl_raw(path: Path) -> tuple[list[bytes], bool]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    lines, ends_nl = split_lines(data)
    if any(not line.strip() for line in lines):
        raise SystemExit(f"{path}: unexpected blank line")
    return lines, ends_nl


def gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


def csv_raw_records(text: str, **fmt) -> list[tuple[list[str], str]]:
    """Parse CSV/TSV and keep, for each record, the exact raw text it came from (multi-line records included)."""
    consumed: list[str] = []

    def lines():
        for line in io.StringIO(text, newline=""):
            consumed.append(line)
            yield line

    out = []
    for row in csv.reader(lines(), **fmt):
        out.append((row, "".join(consumed)))
        consumed.clear()
    if "".join(raw for _, raw in out) != text:
        raise SystemExit("CSV raw-record split does not reproduce the file")
    return out


def json_dump_like(obj, original: str) -> str:
    """Serialise obj with the json.dumps settings that reproduce `original` exactly."""
    full = json.loads(original)
    for indent in (None, 2, 4):
        for ensure_ascii in (True, False):
            for tail in ("", "\n"):
                if json.dumps(full, indent=indent, ensure_ascii=ensure_ascii) + tail == original:
                    return json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii) + tail
    raise SystemExit("could not find json.dumps settings that reproduce the original file")


# ---------------------------------------------------------------------------------------------
# slice bookkeeping


@dataclass
class Slice:
    folder: str  # relative to the output root, e.g. "sentiment/poem_sentiment"
    source_folder: str  # relative to the shared data root
    files: dict[str, bytes] = field(default_factory=dict)
    taken: list[str] = field(default_factory=list)  # human-readable lines for SOURCE.txt
    counts: dict[str, str] = field(default_factory=dict)  # file -> "N rows" etc. for SOURCE.txt and README
    inputs: list[str] = field(default_factory=list)  # source files read (relative to source_folder)
    # README columns
    rows: str = ""
    fmt: str = ""
    license: str = ""
    use: str = ""


def copy_whole(s: Slice, src: Path, names: list[str]) -> None:
    for name in names:
        s.files[name] = (src / s.source_folder / name).read_bytes()
        s.inputs.append(name)


# ---------------------------------------------------------------------------------------------
# the slices


def finance_sentiment(src: Path) -> Slice:
    s = Slice(
        "sentiment/twitter_financial_news_sentiment",
        "sentiment/twitter_financial_news_sentiment",
        fmt="CSV `text,label` (CRLF, quoted multi-line fields kept) + labels.json",
        license="MIT",
        use="quickstart pre-flight check; classification recipes (SFT/adapters/prompting)",
    )
    per_class = {"train.csv": ("sent_train.csv", 300), "valid.csv": ("sent_valid.csv", 100)}
    for out_name, (in_name, k) in per_class.items():
        text = (src / s.source_folder / in_name).read_bytes().decode("utf-8")
        records = csv_raw_records(text)
        header, body = records[0], records[1:]
        if header[0] != ["text", "label"] or any(len(row) != 2 for row, _ in body):
            raise SystemExit(f"{in_name}: unexpected layout")
        chosen: list[int] = []
        for label in sorted({row[1] for row, _ in body}):
            idx = [i for i, (row, _) in enumerate(body) if row[1] == label]
            chosen += [idx[j] for j in pick_in_order(len(idx), k, rng_for(s.folder, out_name, label))]
        chosen.sort()
        s.files[out_name] = (header[1] + "".join(body[i][1] for i in chosen)).encode("utf-8")
        s.inputs.append(in_name)
        s.counts[out_name] = f"{len(chosen)} rows ({k} per label 0/1/2) from {in_name} ({len(body)} rows)"
    s.files["labels.json"] = (json.dumps({"0": "bearish", "1": "bullish", "2": "neutral"}, indent=2) + "\n").encode()
    s.taken.append(
        "stratified sample without replacement, equal count per label, rows kept in their original relative "
        "order and copied as their raw CSV records (header kept; CRLF line ends and quoted multi-line tweets as in the source)"
    )
    s.taken.append("labels.json written by the script from the label names in the notes line (0 bearish, 1 bullish, 2 neutral)")
    s.rows = "900 train / 300 valid (balanced)"
    return s


def uci_reviews(src: Path) -> Slice:
    s = Slice(
        "sentiment/uci_sentiment_labelled_sentences",
        "sentiment/uci_sentiment_labelled_sentences",
        fmt="TSV `reviews<TAB>sentiment`, header row, no quoting (read with csv.QUOTE_NONE)",
        license="CC BY 4.0",
        use="binary sentiment across three domains; TSV loader with quoting off",
    )
    names = ["amazon_cells_labelled.txt", "imdb_labelled.txt", "yelp_labelled.txt"]
    copy_whole(s, src, names)
    for n in names:
        s.counts[n] = "1000 rows + header (whole file)"
    s.taken.append("whole files, byte-for-byte copies (mirror's header row and imdb NEL characters kept)")
    s.rows = "3 × 1,000"
    return s


def poem(src: Path) -> Slice:
    s = Slice(
        "sentiment/poem_sentiment",
        "sentiment/poem_sentiment",
        fmt="TSV `id<TAB>verse<TAB>label`, no header, no quoting (raw labels -1/0/1/2)",
        license="CC BY 4.0",
        use="small multi-class sentiment; header-less TSV",
    )
    names = ["train.tsv", "dev.tsv", "test.tsv"]
    copy_whole(s, src, names)
    for n in names:
        s.counts[n] = "whole file"
    s.taken.append("whole files, byte-for-byte copies (test.tsv still lacks its trailing newline)")
    s.rows = "892 / 105 / 104"
    return s


MEDQUAD_FILES = [  # (file, collection, BEIR query-id prefix), fixed order
    ("medquad_cdc.jsonl", "9_CDC_QA", "CDC"),
    ("medquad_medlineplus_health_topics.jsonl", "4_MPlus_Health_Topics_QA", "MPlus"),
    ("medquad_ninds.jsonl", "6_NINDS_QA", "NINDS"),
    ("medquad_seniorhealth.jsonl", "7_SeniorHealth_QA", "SeniorHealth"),
]
MEDQUAD_PER_COLLECTION = 75


def medquad(src: Path) -> tuple[Slice, list[tuple[str, str]]]:
    """Returns the slice and the (BEIR query id, question) of every row picked, for the retrieval slice."""
    s = Slice(
        "medical_qa/medquad",
        "medical_qa/medquad",
        fmt="JSONL qid, collection, source, url, focus, qtype, question, answer (one file per collection)",
        license="CC BY 4.0",
        use="healthcare QA fine-tuning / RAG answers; its questions' answers are in retrieval/medquad_beir",
    )
    picked_queries = []
    for name, collection, prefix in MEDQUAD_FILES:
        lines, ends_nl = read_jsonl_raw(src / s.source_folder / name)
        idx = pick_in_order(len(lines), MEDQUAD_PER_COLLECTION, rng_for(s.folder, name))
        chosen = [lines[i] for i in idx]
        for line in chosen:
            row = json.loads(line)
            if row["collection"] != collection:
                raise SystemExit(f"{name}: unexpected collection {row['collection']}")
            picked_queries.append((f"q-{prefix}-{row['qid']}", row["question"]))
        s.files[name] = join_lines(chosen, ends_nl)
        s.inputs.append(name)
        s.counts[name] = f"{len(chosen)} of {len(lines)} rows"
    s.taken.append(
        f"random sample of {MEDQUAD_PER_COLLECTION} rows per collection (4 collections, 300 rows), "
        "original order, raw JSON lines copied unchanged; every picked question's answer document is in "
        "../../retrieval/medquad_beir (same slice run)"
    )
    s.rows = "300 (75 per collection)"
    return s, picked_queries


def pubmedqa(src: Path) -> Slice:
    s = Slice(
        "medical_qa/pubmedqa_labeled",
        "medical_qa/pubmedqa_labeled",
        fmt="JSON dict PMID -> {QUESTION, CONTEXTS, LABELS, MESHES, YEAR, ..., final_decision, LONG_ANSWER}; ground truth PMID -> label",
        license="MIT",
        use="QA with context (yes/no/maybe); few-shot pool + official-test-split evaluation",
    )
    raw = (src / s.source_folder / "ori_pqal.json").read_text(encoding="utf-8")
    gt_raw = (src / s.source_folder / "test_ground_truth.json").read_text(encoding="utf-8")
    data, gt = json.loads(raw), json.loads(gt_raw)
    keys = list(data)
    test_keys = [k for k in keys if k in gt]
    other_keys = [k for k in keys if k not in gt]
    n_test, n_other = 100, 50
    take = {test_keys[i] for i in pick_in_order(len(test_keys), n_test, rng_for(s.folder, "test"))}
    take |= {other_keys[i] for i in pick_in_order(len(other_keys), n_other, rng_for(s.folder, "other"))}
    sub = {k: data[k] for k in keys if k in take}
    sub_gt = {k: gt[k] for k in gt if k in take}
    if any(sub_gt[k] != sub[k]["final_decision"] for k in sub_gt):
        raise SystemExit("pubmedqa ground truth disagrees with final_decision")
    s.files["ori_pqal.json"] = json_dump_like(sub, raw).encode("utf-8")
    s.files["test_ground_truth.json"] = json_dump_like(sub_gt, gt_raw).encode("utf-8")
    s.inputs += ["ori_pqal.json", "test_ground_truth.json"]
    labels = {}
    for v in sub.values():
        labels[v["final_decision"]] = labels.get(v["final_decision"], 0) + 1
    s.counts["ori_pqal.json"] = (
        f"{len(sub)} of {len(data)} entries: {n_test} from the official 500-id test split + {n_other} from the "
        f"other 500; final_decision " + ", ".join(f"{k} {labels[k]}" for k in sorted(labels))
    )
    s.counts["test_ground_truth.json"] = f"{len(sub_gt)} of {len(gt)} ids (the picked test-split entries)"
    s.taken.append(
        "random sample of PMIDs (100 test-split, 50 non-test), original key order, same JSON layout "
        "(indent 4, ASCII escapes); ground truth restricted to the picked ids"
    )
    s.rows = "150 (100 test-split + 50 other)"
    return s


def legal(src: Path, task: str, classes: str) -> Slice:
    s = Slice(
        f"legal/legalbench_{task}",
        f"legal/legalbench_{task}",
        fmt="TSV with header (test: label,text[,slice]; train: index,answer,text[,slice]) + task README.md",
        license="CC BY 4.0",
        use=f"legal classification ({classes}); 5-shot train + 95 test",
    )
    copy_whole(s, src, ["README.md", "test.tsv", "train.tsv"])
    s.counts["test.tsv"] = "95 rows (whole file)"
    s.counts["train.tsv"] = "5 rows (whole file)"
    s.counts["README.md"] = "task README (whole file)"
    s.taken.append("whole files, byte-for-byte copies (note: train.tsv and test.tsv use different headers)")
    s.rows = "95 test + 5 train"
    return s


def gsm8k(src: Path) -> Slice:
    s = Slice(
        "education/gsm8k",
        "education/gsm8k",
        fmt="JSONL question, answer (answer ends with `#### N`)",
        license="MIT",
        use="math-tutoring SFT and exact-match evaluation on the final number",
    )
    for name, k in (("train.jsonl", 300), ("test.jsonl", 100)):
        lines, ends_nl = read_jsonl_raw(src / s.source_folder / name)
        idx = pick_in_order(len(lines), k, rng_for(s.folder, name))
        s.files[name] = join_lines([lines[i] for i in idx], ends_nl)
        s.inputs.append(name)
        s.counts[name] = f"{k} of {len(lines)} rows"
    s.taken.append("random sample, original order, raw JSON lines copied unchanged (test_socratic.jsonl not sliced)")
    s.rows = "300 train / 100 test"
    return s


def xquad(src: Path) -> Slice:
    s = Slice(
        "qa_extractive/xquad",
        "qa_extractive/xquad",
        fmt="SQuAD v1.1 JSON {version, data:[{title, paragraphs:[{context, qas}]}]}",
        license="CC BY-SA 4.0 (ShareAlike)",
        use="extractive QA; SQuAD-format loader",
    )
    raw = (src / s.source_folder / "xquad.en.json").read_text(encoding="utf-8")
    doc = json.loads(raw)
    n_articles = 4
    sub = dict(doc)  # keeps the original key order
    sub["data"] = doc["data"][:n_articles]
    s.files["xquad.en.json"] = json_dump_like(sub, raw).encode("utf-8")
    s.inputs.append("xquad.en.json")
    n_par = sum(len(a["paragraphs"]) for a in sub["data"])
    n_q = sum(len(p["qas"]) for a in sub["data"] for p in a["paragraphs"])
    titles = ", ".join(a["title"] for a in sub["data"])
    s.counts["xquad.en.json"] = f"first {n_articles} of {len(doc['data'])} articles ({titles}): {n_par} paragraphs, {n_q} questions"
    s.taken.append("first articles in file order, whole; same JSON layout (indent 2, ASCII escapes). xquad.de/es/zh.json not copied")
    s.rows = f"{n_q} questions / {n_par} paragraphs"
    return s


def scitldr(src: Path) -> Slice:
    s = Slice(
        "summarization/scitldr_a",
        "summarization/scitldr_a",
        fmt="JSONL source (sentences), source_labels, rouge_scores, paper_id, target (list of TLDRs), title",
        license="Apache-2.0",
        use="summarization SFT and ROUGE evaluation with multiple references",
    )
    for name, k in (("train.jsonl", 200), ("dev.jsonl", 50), ("test.jsonl", 50)):
        lines, ends_nl = read_jsonl_raw(src / s.source_folder / name)
        idx = pick_in_order(len(lines), k, rng_for(s.folder, name))
        s.files[name] = join_lines([lines[i] for i in idx], ends_nl)
        s.inputs.append(name)
        s.counts[name] = f"{k} of {len(lines)} rows"
    s.taken.append("random sample, original order, raw JSON lines copied unchanged (no trailing newline, as in the source)")
    s.rows = "200 / 50 / 50"
    return s


def translation(src: Path) -> Slice:
    s = Slice(
        "translation/xquad_parallel",
        "translation/xquad_parallel",
        fmt="JSONL id, [title], type, en, de",
        license="CC BY-SA 4.0 (ShareAlike)",
        use="en→de translation SFT / chrF-BLEU evaluation",
    )
    n_par = 60
    par_lines, par_nl = read_jsonl_raw(src / s.source_folder / "xquad_paragraphs.en-de.jsonl")
    q_lines, q_nl = read_jsonl_raw(src / s.source_folder / "xquad_questions.en-de.jsonl")
    # Map paragraphs to their question ids through the English SQuAD file (alignment is by position).
    squad = json.loads((src / "qa_extractive/xquad/xquad.en.json").read_text(encoding="utf-8"))
    paragraphs = [p for a in squad["data"] for p in a["paragraphs"]]
    if len(paragraphs) != len(par_lines):
        raise SystemExit("xquad paragraph count mismatch")
    for p, line in zip(paragraphs[:n_par], par_lines[:n_par]):
        if json.loads(line)["en"] != p["context"]:
            raise SystemExit("xquad_parallel paragraphs are not aligned with xquad.en.json")
    keep_q = {q["id"] for p in paragraphs[:n_par] for q in p["qas"]}
    chosen_q = [line for line in q_lines if json.loads(line)["id"] in keep_q]
    if len(chosen_q) != len(keep_q):
        raise SystemExit("xquad_parallel questions missing")
    s.files["xquad_paragraphs.en-de.jsonl"] = join_lines(par_lines[:n_par], par_nl)
    s.files["xquad_questions.en-de.jsonl"] = join_lines(chosen_q, q_nl)
    s.inputs += ["xquad_paragraphs.en-de.jsonl", "xquad_questions.en-de.jsonl"]
    s.counts["xquad_paragraphs.en-de.jsonl"] = f"first {n_par} of {len(par_lines)} rows (12 whole articles)"
    s.counts["xquad_questions.en-de.jsonl"] = (
        f"{len(chosen_q)} of {len(q_lines)} rows: exactly the questions asked about those {n_par} paragraphs"
    )
    s.taken.append(
        "en-de only (en-es not copied); the first 60 paragraphs in file order and the questions belonging to them "
        "(mapped through shared data qa_extractive/xquad/xquad.en.json), raw JSON lines copied unchanged"
    )
    s.rows = f"{len(chosen_q)} questions + {n_par} paragraphs"
    return s


def humaneval(src: Path) -> Slice:
    s = Slice(
        "code_generation/humaneval",
        "code_generation/humaneval",
        fmt="gzip JSONL task_id, prompt, entry_point, canonical_solution, test",
        license="MIT",
        use="code-generation prompts / pass@k plumbing (executing tests runs untrusted code: sandbox it)",
    )
    copy_whole(s, src, ["HumanEval.jsonl.gz"])
    s.counts["HumanEval.jsonl.gz"] = "164 problems (whole file)"
    s.taken.append("whole file, byte-for-byte copy (still gzip)")
    s.rows = "164"
    return s


def self_instruct(src: Path) -> Slice:
    s = Slice(
        "instruction_tuning/self_instruct",
        "instruction_tuning/self_instruct",
        fmt="JSONL id, name, instruction, instances[{input, output}], is_classification",
        license="Apache-2.0",
        use="instruction-tuning SFT (Alpaca-style mapping)",
    )
    copy_whole(s, src, ["seed_tasks.jsonl"])
    s.counts["seed_tasks.jsonl"] = "175 tasks (whole file)"
    s.taken.append(
        "seed_tasks.jsonl whole, byte-for-byte copy; user_oriented_instructions.jsonl (evaluation-only per the "
        "authors) is not in the shared snapshot and not in this slice"
    )
    s.rows = "175"
    return s


def hh_rlhf(src: Path) -> Slice:
    s = Slice(
        "chat_preference/hh_rlhf_harmless_base",
        "chat_preference/hh_rlhf_harmless_base",
        fmt="gzip JSONL chosen, rejected (full '\\n\\nHuman: … \\n\\nAssistant: …' dialogues)",
        license="MIT",
        use="preference pairs for DPO / reward-model plumbing. CONTENT WARNING: offensive by design",
    )
    lines, ends_nl = read_jsonl_raw(src / s.source_folder / "test.jsonl.gz")
    k = 200
    idx = pick_in_order(len(lines), k, rng_for(s.folder, "test"))
    s.files["test.jsonl.gz"] = gzip_bytes(join_lines([lines[i] for i in idx], ends_nl))
    s.inputs.append("test.jsonl.gz")
    s.counts["test.jsonl.gz"] = f"{k} of {len(lines)} pairs"
    s.taken.append(
        "random sample, original order, raw JSON lines copied unchanged, re-gzipped (mtime 0, no file name, level 9). "
        "CONTENT WARNING still applies: red-team dialogues with offensive/upsetting text"
    )
    s.rows = "200 pairs"
    return s


def xquad_beir(src: Path) -> Slice:
    s = Slice(
        "retrieval/xquad_en_beir",
        "retrieval/xquad_en_beir",
        fmt="BEIR: corpus.jsonl {_id,title,text}, queries.jsonl {_id,text,answers}, qrels/test.tsv",
        license="CC BY-SA 4.0 (ShareAlike)",
        use="retrieval / RAG evaluation with same-article hard negatives",
    )
    copy_whole(s, src, ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
    s.counts["corpus.jsonl"] = "240 docs (whole file)"
    s.counts["queries.jsonl"] = "1190 queries (whole file)"
    s.counts["qrels/test.tsv"] = "1190 judgments + header (whole file)"
    s.taken.append("whole files, byte-for-byte copies (about 0.4 MB)")
    s.rows = "240 docs / 1,190 queries"
    return s


def medquad_beir(src: Path, qa_queries: list[tuple[str, str]]) -> Slice:
    s = Slice(
        "retrieval/medquad_beir",
        "retrieval/medquad_beir",
        fmt="BEIR: corpus.jsonl {_id,title,text,url,source}, queries.jsonl {_id,text,qtype}, qrels/test.tsv",
        license="CC BY 4.0",
        use="medical retrieval / RAG over the medical_qa/medquad slice",
    )
    base = src / s.source_folder
    c_lines, c_nl = read_jsonl_raw(base / "corpus.jsonl")
    q_lines, q_nl = read_jsonl_raw(base / "queries.jsonl")
    qrels_rows = list(csv.reader(io.StringIO((base / "qrels/test.tsv").read_text(encoding="utf-8"), newline=""), delimiter="\t"))
    qrels_text = (base / "qrels/test.tsv").read_bytes()
    qrel_lines, qrel_nl = split_lines(qrels_text)
    if qrels_rows[0] != ["query-id", "corpus-id", "score"] or len(qrel_lines) != len(qrels_rows):
        raise SystemExit("medquad_beir qrels: unexpected layout")
    corpus = [json.loads(line) for line in c_lines]
    queries = {json.loads(line)["_id"]: json.loads(line) for line in q_lines}
    rel = {row[0]: row[1] for row in qrels_rows[1:]}

    # 1) the answer documents of every question in the medical_qa/medquad slice
    must = set()
    for qid, question in qa_queries:
        if qid not in queries or queries[qid]["text"] != question:
            raise SystemExit(f"medquad_beir: query {qid} missing or different from the QA slice")
        must.add(rel[qid])
    # 2) top up to 150 documents per source with a random sample of the others
    per_source = 150
    chosen_docs = set(must)
    for source in sorted({d["source"] for d in corpus}):
        ids = [d["_id"] for d in corpus if d["source"] == source]
        have = [i for i in ids if i in must]
        rest = [i for i in ids if i not in must]
        need = per_source - len(have)
        chosen_docs |= {rest[j] for j in pick_in_order(len(rest), need, rng_for(s.folder, source))}
    # 3) every query judged against a chosen document, and those judgments
    keep_q = {q for q, d in rel.items() if d in chosen_docs}
    s.files["corpus.jsonl"] = join_lines([line for line, d in zip(c_lines, corpus) if d["_id"] in chosen_docs], c_nl)
    s.files["queries.jsonl"] = join_lines([line for line in q_lines if json.loads(line)["_id"] in keep_q], q_nl)
    s.files["qrels/test.tsv"] = join_lines(
        [qrel_lines[0]] + [line for line, row in zip(qrel_lines[1:], qrels_rows[1:]) if row[0] in keep_q], qrel_nl
    )
    s.inputs += ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"]
    s.counts["corpus.jsonl"] = f"{len(chosen_docs)} of {len(corpus)} docs ({per_source} per source)"
    s.counts["queries.jsonl"] = f"{len(keep_q)} of {len(queries)} queries (all whose relevant doc is in the slice)"
    s.counts["qrels/test.tsv"] = f"{len(keep_q)} of {len(rel)} judgments + header"
    s.taken.append(
        f"corpus: the answer docs of the {len(qa_queries)} questions in ../../medical_qa/medquad ({len(must)} docs) plus a "
        f"random sample of the other docs, {per_source} docs per source in total; queries and qrels restricted to "
        "the picked docs (a merged duplicate answer keeps all its queries). Original order, raw lines copied unchanged"
    )
    s.rows = f"{len(chosen_docs)} docs / {len(keep_q)} queries"
    return s


def shakespeare(src: Path) -> Slice:
    s = Slice(
        "pretraining_text/tiny_shakespeare",
        "pretraining_text/tiny_shakespeare",
        fmt="plain text",
        license="public domain text (repo MIT)",
        use="continued pre-training / packing on raw text",
    )
    copy_whole(s, src, ["input.txt"])
    s.counts["input.txt"] = "1,115,394 characters (whole file)"
    s.taken.append("whole file, byte-for-byte copy")
    s.rows = "1.1 M characters"
    return s


def build_slices(src: Path) -> list[Slice]:
    med, med_queries = medquad(src)
    return [
        finance_sentiment(src),
        uci_reviews(src),
        poem(src),
        med,
        pubmedqa(src),
        legal(src, "hearsay", "hearsay Yes/No"),
        legal(src, "abercrombie", "5 trademark classes"),
        gsm8k(src),
        xquad(src),
        scitldr(src),
        translation(src),
        humaneval(src),
        self_instruct(src),
        hh_rlhf(src),
        xquad_beir(src),
        medquad_beir(src, med_queries),
        shakespeare(src),
    ]


# ---------------------------------------------------------------------------------------------
# writing


def source_txt(s: Slice, src: Path) -> str:
    original = (src / s.source_folder / "SOURCE.txt").read_text(encoding="utf-8").rstrip("\n")
    lines = [original, ""]
    lines.append(f"slice_of: shared data {s.source_folder}/ (the full copy described above)")
    lines.append(f"slice_made_by: {SCRIPT} (python, stdlib only), seed {SEED}; rerun it to reproduce these files byte for byte")
    for t in s.taken:
        lines.append(f"slice_method: {t}")
    for name in sorted(s.counts):
        lines.append(f"slice_counts: {name}: {s.counts[name]}")
    for name in s.inputs:
        lines.append(f"slice_input_sha256: {name} {sha256(src / s.source_folder / name)}")
    lic = "same as the original (see license line above)"
    if "BY-SA" in s.license:
        lic += "; CC BY-SA 4.0 ShareAlike: this slice and anything derived from it stay CC BY-SA 4.0"
    lines.append(f"slice_license: {lic}")
    return "\n".join(lines) + "\n"


def size_h(n: int) -> str:
    return f"{n / 1024:.0f} KB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MB"


def readme(slices: list[Slice]) -> str:
    out = [
        "# Example data: small slices of real public datasets",
        "",
        f"Generated by `{SCRIPT}` (seed {SEED}) from the full copies in `../shared/data`; do not edit by hand.",
        "Every folder keeps the original file format and has a `SOURCE.txt` with the origin repository, commit,",
        "license and notes, followed by the slice method and counts. These files let the tests, the docs and",
        "`tailor quickstart` run on a fresh clone; benchmarks read the full data from `../shared/data` when it exists.",
        "",
        "| folder | rows | format | license | used for | size |",
        "|---|---|---|---|---|---|",
    ]
    total = 0
    for s in slices:
        n = sum(len(b) for b in s.files.values())
        total += n
        out.append(f"| `{s.folder}/` | {s.rows} | {s.fmt} | {s.license} | {s.use} | {size_h(n)} |")
    out += [
        "",
        f"Data files in total: {size_h(total)}.",
        "",
        "Licenses: each slice keeps its original license (see its `SOURCE.txt`). **CC BY-SA 4.0 data stays",
        "CC BY-SA 4.0** (`qa_extractive/xquad`, `translation/xquad_parallel`, `retrieval/xquad_en_beir`): copies and",
        "adaptations of these files (re-sliced, converted, edited) must keep CC BY-SA 4.0 and the attribution.",
        "CC BY 4.0 slices need attribution (kept in `SOURCE.txt`).",
        "The project's own Apache-2.0 license does not cover these files.",
        "",
        "Content warning: `chat_preference/hh_rlhf_harmless_base` holds red-team dialogues with offensive and",
        "upsetting text, by design. `code_generation/humaneval` tests execute code: run them sandboxed.",
        "",
        "Things to know when loading:",
        "",
        "- `sentiment/twitter_financial_news_sentiment/*.csv`: CRLF line ends and some quoted tweets span several lines;",
        "  use a real CSV parser. `labels.json` maps 0/1/2 to bearish/bullish/neutral.",
        "- `sentiment/uci_sentiment_labelled_sentences/*.txt`: header row added by the mirror; parse with",
        "  `quoting=csv.QUOTE_NONE`; `imdb_labelled.txt` contains NEL (U+0085) characters, so split lines on `\\n` only.",
        "- `sentiment/poem_sentiment/*.tsv`: no header; raw labels -1/0/1/2; verses contain bare `\"` characters, so",
        "  parse with `quoting=csv.QUOTE_NONE` (default quoting merges rows: 749 instead of 892 in train);",
        "  `test.tsv` has no trailing newline.",
        "- `legal/*/train.tsv` has columns `index,answer,text[,slice]` while `test.tsv` has `label,text[,slice]`;",
        "  `train.tsv` uses CSV quoting (`\"...\"\"...\"\"\"`), so read these with the default quoting, not QUOTE_NONE.",
        "- `medical_qa/medquad`: every question's answer document is in `retrieval/medquad_beir`.",
        "- `translation/xquad_parallel`: the questions are exactly those about the 60 shipped paragraphs.",
        "",
    ]
    return "\n".join(out)


def write_all(slices: list[Slice], src: Path, out: Path) -> None:
    for s in slices:
        folder = out / s.folder
        for name, data in sorted(s.files.items()):
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        (folder / "SOURCE.txt").write_text(source_txt(s, src), encoding="utf-8", newline="\n")
    (out / "README.md").write_text(readme(slices), encoding="utf-8", newline="\n")


def expected_paths(slices: list[Slice]) -> set[str]:
    paths = {"README.md"}
    for s in slices:
        paths |= {f"{s.folder}/{n}" for n in s.files} | {f"{s.folder}/SOURCE.txt"}
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", nargs="?", type=Path, default=DEFAULT_SRC, help=f"full data folder (default {DEFAULT_SRC})")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--check", action="store_true", help="rebuild in a temporary folder and compare with --out; write nothing")
    args = ap.parse_args(argv)
    src = args.src.resolve()
    if not (src / "README.md").is_file():
        print(f"error: {src} does not look like the shared data folder (no README.md)", file=sys.stderr)
        return 2
    slices = build_slices(src)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            write_all(slices, src, Path(tmp))
            want = expected_paths(slices)
            have = {p.relative_to(args.out).as_posix() for p in args.out.rglob("*") if p.is_file()}
            problems = [f"missing: {p}" for p in sorted(want - have)]
            problems += [f"not made by the script: {p}" for p in sorted(have - want)]
            problems += [f"differs: {p}" for p in sorted(want & have) if not filecmp.cmp(Path(tmp) / p, args.out / p, shallow=False)]
        for p in problems:
            print(p, file=sys.stderr)
        print("examples/data is up to date" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0
    write_all(slices, src, args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    for s in slices:
        print(f"{s.folder:45s} {s.rows}")
    print(f"wrote {len(expected_paths(slices))} files, {size_h(total)} under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
