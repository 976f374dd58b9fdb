"""Retrieval-augmented fine-tuning data, the RAFT recipe (Zhang et al., 2024, arXiv:2403.10131).

Each question becomes one chat example in the prompt layout of `tailor rag ask` (`prompt.rag_messages`): numbered
passages, then the question, and the reference answer as the assistant turn. With probability `oracle_share` the
passages hold the oracle (the passage the answer comes from) among `distractors` hard negatives; otherwise only
`distractors + 1` hard negatives, so that the model also learns the answer itself (RAFT's P). Hard negatives are
the best hybrid-search hits that come from no document judged relevant.

How the oracle is chosen, per question:

- a judged document (BEIR qrels, or a `doc_id` column): among its chunks, those containing the answer text win,
  then the highest dense cosine with the question. When the answer is the document itself (BEIR queries without
  `answers`, as in MedQuAD), the oracle is every chunk of the document, in order, so the answer is in the prompt;
- a `context` column only: the retrieved chunk sharing the most words with the context (at least half of the
  shorter of the two), searched with the context and the question;
- neither: the best-ranked hit of the question that contains the answer, else the top hit. Such an oracle may be
  wrong; the report counts them apart.

Each question draws from its own random stream, seeded by (`seed`, question id): first whether the oracle is
shown, then random fallback distractors (only when search finds too few), then the passage order. The same
inputs and seed give a byte-identical file; a question's random choices depend only on the seed and its id.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tailorlm.data.formats import ALIASES
from tailorlm.data.loaders import JSONL_SUFFIXES, read_records
from tailorlm.errors import ConfigError, DataError
from tailorlm.retrieval.chunking import Chunk
from tailorlm.retrieval.documents import BEIR_CORPUS
from tailorlm.retrieval.index import Index, open_index
from tailorlm.retrieval.prompt import rag_messages
from tailorlm.retrieval.search import search

QUERIES = ("queries.jsonl", "queries.jsonl.gz")
ID_COLUMNS = ("question_id", "id", "_id", "qid")
MIN_CONTEXT_COVERAGE = 0.5
EMBED_BATCH = 64
_WORD = re.compile(r"\w+")
_HOW = {"judged": "from judged documents", "context": "matched to the given context", "retrieval": "top retrieved"}


@dataclass
class Question:
    """One question to turn into an example, or the reason it cannot be (`problem`)."""

    question_id: str
    text: str
    answer: str | None
    """The reference answer; None when it is the text of the judged document (BEIR queries without `answers`)."""
    where: str
    judged: dict[str, int] = field(default_factory=dict)
    """Relevant document id -> relevance grade (above 0)."""
    context: str | None = None
    problem: str | None = None


@dataclass
class RaftReport:
    """What `build_training_data` wrote and skipped."""

    path: str
    source: str = ""
    rows: int = 0
    with_oracle: int = 0
    without_oracle: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    """Reason -> questions skipped for it."""
    oracle_by: dict[str, int] = field(default_factory=lambda: {"judged": 0, "context": 0, "retrieval": 0})
    """How each written example's oracle was found: a judged document, a context column, or the top hit."""
    few_distractors: int = 0
    """Examples with fewer distractors than asked (the index holds too few chunks of other documents)."""
    warnings: list[str] = field(default_factory=list)

    def skip(self, reason: str, where: str) -> None:
        """Count one skipped question, with a warning naming its row."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.warnings.append(f"{where}: skipped, {reason}")

    def summary(self) -> str:
        """One or two lines for people."""
        text = (f"Wrote {self.rows} examples to {self.path} from {self.source}: {self.with_oracle} with the oracle "
                f"passage, {self.without_oracle} without.")
        found = ", ".join(f"{n} {_HOW[how]}" for how, n in self.oracle_by.items() if n)
        if found:
            text += f" Oracle passages: {found}."
        if self.oracle_by["retrieval"]:
            text += f" The {self.oracle_by['retrieval']} retrieved oracles are not judged and may be wrong."
        if self.few_distractors:
            text += f" {self.few_distractors} examples have fewer distractors than asked (too few other chunks)."
        if self.skipped:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
            text += f"\nSkipped {sum(self.skipped.values())} questions ({reasons})."
        return text


def build_training_data(
    index_dir: str | Path,
    questions: str | Path,
    output: str | Path,
    *,
    distractors: int = 3,
    oracle_share: float = 0.8,
    seed: int = 0,
    limit: int | None = None,
    candidates: int = 20,
    progress: bool = True,
    split: str | None = None,
    embedder: Any = None,
) -> RaftReport:
    """Write RAFT chat examples (JSONL) for the questions of `questions`, with passages from the index.

    `questions` is a BEIR folder (or its queries.jsonl, next to qrels/), whose judged queries of `split` (default
    `test`, or the only split) are used, or a JSONL/JSON/CSV file with question and answer columns and an optional
    `doc_id` or `context`. `limit` takes the first questions of the file. `candidates` is the search depth for
    hard negatives. `embedder` replaces the index's embedding model (tests pass a fake one).
    """
    _check_settings(distractors, oracle_share, seed, limit, candidates)
    source, output = Path(questions), Path(output)
    _check_output(output, source)
    with open_index(index_dir, embedder=embedder) as index:
        items, description = read_questions(source, split)
        items = items[:limit] if limit is not None else items
        report = RaftReport(str(output), description)
        chunk_ids = _chunk_ids_by_doc(index)
        temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        try:
            with temporary.open("w", encoding="utf-8") as out:
                for question, vector in _progress(_with_vectors(items, index.embedder), len(items), progress):
                    if question.problem is not None:
                        report.skip(question.problem, question.where)
                        continue
                    row = _example(index, question, vector, chunk_ids, report,
                                   distractors=distractors, oracle_share=oracle_share, seed=seed, candidates=candidates)
                    if row is not None:
                        out.write(json.dumps(row, ensure_ascii=False) + "\n")
                out.flush()
                os.fsync(out.fileno())
            if report.rows == 0:
                raise _nothing_usable(source, report)
            os.replace(temporary, output)
        finally:
            temporary.unlink(missing_ok=True)
    return report


def question_rng(seed: int, question_id: str) -> random.Random:
    """The question's own random stream: its first draw decides whether the oracle is shown."""
    return random.Random(f"raft:{seed}:{question_id}")


def _example(index: Index, question: Question, vector: np.ndarray, chunk_ids: dict[str, list[str]], report: RaftReport,
             *, distractors: int, oracle_share: float, seed: int, candidates: int) -> dict[str, Any] | None:
    """One output row for the question, or None (counted in the report) when it has to be skipped."""
    hits = search(index, question.text, k=candidates, mode="hybrid", query_vector=vector)
    found = _oracle(index, question, vector, [hit.chunk for hit in hits], chunk_ids, candidates)
    if isinstance(found, str):
        report.skip(found, question.where)
        return None
    oracle, answer, how = found
    excluded = {oracle[0].doc_id, *question.judged}
    rng = question_rng(seed, question.question_id)
    shown = rng.random() < oracle_share
    wanted = distractors if shown else distractors + 1
    chosen = [hit.chunk for hit in hits if hit.chunk.doc_id not in excluded][:wanted]
    if len(chosen) < wanted:
        chosen += _random_chunks(index, chunk_ids, excluded, {c.chunk_id for c in chosen}, wanted - len(chosen), rng)
        report.few_distractors += len(chosen) < wanted
    units = ([oracle] if shown else []) + [[chunk] for chunk in chosen]
    rng.shuffle(units)  # the oracle's chunks stay together and in document order
    passages = [chunk for unit in units for chunk in unit]
    report.rows += 1
    report.with_oracle += shown
    report.without_oracle += not shown
    report.oracle_by[how] += 1
    return {
        "messages": rag_messages(question.text, passages) + [{"role": "assistant", "content": answer}],
        "oracle": shown, "oracle_doc": oracle[0].doc_id, "oracle_by": how, "question_id": question.question_id,
        "chunk_ids": [chunk.chunk_id for chunk in passages],
    }


def _oracle(index: Index, question: Question, vector: np.ndarray, hits: list[Chunk], chunk_ids: dict[str, list[str]],
            candidates: int) -> tuple[list[Chunk], str, str] | str:
    """(oracle chunks, answer, how it was found), or the reason there is none."""
    if question.judged:
        present = [doc_id for doc_id in question.judged if doc_id in chunk_ids]
        if not present:
            return "judged document not in the index"
        ids = [chunk_id for doc_id in present for chunk_id in chunk_ids[doc_id]]
        chunks = index.store.get(ids)
        cosines = index.store.vectors(ids) @ np.asarray(vector, dtype=np.float32)  # (N,)
        grade = question.judged
        best = max(range(len(chunks)), key=lambda i: (grade[chunks[i].doc_id], _contains(chunks[i].text, question.answer),
                                                      float(cosines[i])))
        if question.answer is None:  # the answer is the whole document: show all of it
            document = sorted((c for c in chunks if c.doc_id == chunks[best].doc_id), key=lambda c: c.start)
            return document, document_text(document), "judged"
        return [chunks[best]], question.answer, "judged"
    assert question.answer is not None
    if question.context:
        retrieved = [hit.chunk for hit in search(index, question.context, k=candidates, mode="hybrid")] + hits
        pool = {chunk.chunk_id: chunk for chunk in retrieved}
        context_words = Counter(_words(question.context))
        scored = [(_overlap(context_words, chunk.text), chunk) for chunk in pool.values()]
        (shared, coverage), chunk = max(scored, key=lambda pair: pair[0], default=((0, 0.0), None))
        if chunk is None or coverage < MIN_CONTEXT_COVERAGE:
            return "context not found in the index"
        return [chunk], question.answer, "context"
    if not hits:
        return "nothing retrieved"
    best = next((chunk for chunk in hits if _contains(chunk.text, question.answer)), hits[0])
    return [best], question.answer, "retrieval"


def document_text(chunks: Sequence[Chunk]) -> str:
    """A document's text put back together from its chunks (in order, overlaps once; a gap becomes one space).

    >>> a, b = Chunk("d:0", "d", "one two three", 0, 13), Chunk("d:1", "d", "three four", 8, 18)
    >>> document_text([a, b])
    'one two three four'
    """
    text, end = "", None
    for chunk in chunks:
        if end is None:
            text = chunk.text
        elif chunk.start < end:
            text += chunk.text[end - chunk.start:]
        else:
            text += " " + chunk.text
        end = chunk.end if end is None else max(end, chunk.end)
    return text


def _random_chunks(index: Index, chunk_ids: dict[str, list[str]], excluded_docs: set[str], taken: set[str], count: int,
                   rng: random.Random) -> list[Chunk]:
    """Up to `count` random chunks, neither from `excluded_docs` nor already `taken`."""
    pool = sorted(cid for doc_id, ids in chunk_ids.items() if doc_id not in excluded_docs for cid in ids if cid not in taken)
    return index.store.get(rng.sample(pool, min(count, len(pool)))) if pool else []


def _chunk_ids_by_doc(index: Index) -> dict[str, list[str]]:
    """Document id -> its chunk ids in document order, for every chunk of the index."""
    by_doc: dict[str, list[tuple[int, str]]] = {}
    for chunk in index.store.all_chunks():
        by_doc.setdefault(chunk.doc_id, []).append((chunk.start, chunk.chunk_id))
    return {doc_id: [cid for _, cid in sorted(pairs)] for doc_id, pairs in sorted(by_doc.items())}


def _contains(text: str, answer: str | None) -> bool:
    """Whether the answer appears in the text, ignoring case and runs of whitespace."""
    if not answer:
        return False
    return " ".join(answer.lower().split()) in " ".join(text.lower().split())


def _words(text: str) -> list[str]:
    """Lower-cased words."""
    return _WORD.findall(text.lower())


def _overlap(context_words: Counter, text: str) -> tuple[int, float]:
    """(words shared with the context, counted with repeats; that count over the shorter word count)."""
    words = Counter(_words(text))
    shared = sum((words & context_words).values())
    shorter = min(sum(words.values()), sum(context_words.values()))
    return shared, shared / shorter if shorter else 0.0


# Reading questions


def read_questions(path: Path, split: str | None = None) -> tuple[list[Question], str]:
    """The questions of a BEIR folder (or queries.jsonl beside qrels/) or a QA file, and a description of the source."""
    if path.is_dir() or (path.name in QUERIES and (path.parent / "qrels").is_dir()):
        return _beir_questions(path if path.is_dir() else path.parent, split)
    records = read_records(path)
    if not records:
        raise DataError("no rows", where=str(path), expected="rows with a question and an answer")
    return [_qa_question(record.fields, record.origin.row, path) for record in records], str(path)


def _beir_questions(folder: Path, split: str | None) -> tuple[list[Question], str]:
    """The queries judged in one qrels split, in queries.jsonl order; answers from `answers` when present."""
    queries_path = next((folder / name for name in QUERIES if (folder / name).is_file()), None)
    tables = sorted((folder / "qrels").glob("*.tsv"))
    if queries_path is None or not tables:
        raise DataError("not a BEIR folder with questions", where=str(folder),
                        found=", ".join(sorted(p.name for p in folder.iterdir())) or "an empty folder",
                        expected="queries.jsonl and qrels/SPLIT.tsv (or a JSONL/CSV file of question and answer rows)")
    splits = {table.stem: table for table in tables}
    if split is None:
        if "test" not in splits and len(splits) > 1:
            raise ConfigError("several qrels splits and none is `test`", where=str(folder / "qrels"), key="split",
                              found=", ".join(splits), expected="one of them named", hint="Pass split=NAME")
        split = "test" if "test" in splits else next(iter(splits))
    if split not in splits:
        raise ConfigError("no such qrels split", where=str(folder / "qrels"), key="split", found=repr(split),
                          expected="one of " + ", ".join(splits))
    judged: dict[str, dict[str, int]] = {}
    for record in read_records(splits[split], csv_columns=["query-id", "corpus-id", "score"]):
        score = _score(record.fields["score"], str(record.origin))
        if score > 0:  # 0 means judged not relevant: such a document is a fair distractor
            judged.setdefault(str(record.fields["query-id"]), {})[str(record.fields["corpus-id"])] = score
    questions = []
    for record in read_records(queries_path):
        fields, where = record.fields, str(record.origin)
        query_id = str(fields.get("_id", ""))
        if query_id not in judged:
            continue  # a query of another split
        text, answer = _string(fields.get("text")), _first_answer(fields.get("answers"))
        questions.append(Question(query_id, text, answer or None, where, judged[query_id],
                                  problem=None if text else "no question"))
    if not questions:
        raise DataError("no judged queries", where=str(queries_path), found=f"no query id of qrels/{split}.tsv",
                        expected="queries whose _id appears in the qrels")
    return questions, f"{folder} (qrels split {split})"


def _qa_question(fields: dict[str, Any], row: int, path: Path) -> Question:
    """A question from a row with question and answer columns (the names the `qa` and `squad` formats accept)."""
    text = _string(_column(fields, "question"))
    answer = _string(_column(fields, "answer")) or _first_answer(_column(fields, "answers"))
    question_id = next((_string(fields[k]) for k in ID_COLUMNS if _string(fields.get(k))), f"{path.name}:{row}")
    doc_id = _string(fields.get("doc_id"))
    context = _string(_column(fields, "context")) or None
    problem = "no question" if not text else "no answer" if not answer else None
    return Question(question_id, text, answer, f"{path}, row {row}", {doc_id: 1} if doc_id else {}, context, problem)


def _column(fields: dict[str, Any], canonical: str) -> Any:
    """The value of a canonical column under any of its known names (`formats.ALIASES`), exact names first."""
    names = ALIASES.get(canonical, (canonical,))
    folded = {key.lower(): key for key in reversed(list(fields))}
    key = next((n for n in names if n in fields), None) or next((folded[n] for n in names if n in folded), None)
    return None if key is None else fields[key]


def _string(value: Any) -> str:
    """A non-empty text value stripped, numbers written out; anything else gives ''."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value.strip() if isinstance(value, str) else ""


def _first_answer(value: Any) -> str:
    """The first answer of `answers`: a string, a list of strings, SQuAD's [{text}] or {text: [...]}."""
    if isinstance(value, dict):
        value = value.get("text")
    items = value if isinstance(value, list) else [value]
    texts = [_string(item.get("text") if isinstance(item, dict) else item) for item in items]
    return next((text for text in texts if text), "")


def _score(value: Any, where: str) -> int:
    """A qrels relevance score."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError("a qrels score is not a whole number", where=where, key="score", found=repr(value),
                        expected="0, 1, 2, ...") from None


# Checks and output


def _check_settings(distractors: int, oracle_share: float, seed: int, limit: int | None, candidates: int) -> None:
    """ConfigError for a setting outside what the recipe allows."""
    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not whole(distractors) or distractors < 0:
        raise ConfigError("bad number of distractors", key="distractors", found=repr(distractors), expected="0 or more")
    if isinstance(oracle_share, bool) or not isinstance(oracle_share, (int, float)) or not 0.0 <= oracle_share <= 1.0:
        raise ConfigError("the oracle share is out of range", key="oracle_share", found=repr(oracle_share),
                          expected="a fraction from 0 (never show the oracle) to 1 (always)")
    if not whole(seed):
        raise ConfigError("the seed must be a whole number", key="seed", found=repr(seed))
    if limit is not None and (not whole(limit) or limit < 1):
        raise ConfigError("bad limit", key="limit", found=repr(limit), expected="1 or more questions, or no limit")
    if not whole(candidates) or candidates < 1:
        raise ConfigError("bad search depth", key="candidates", found=repr(candidates), expected="1 or more")


def _check_output(output: Path, source: Path) -> None:
    """ConfigError for an output that is not a JSONL path or that would overwrite the questions."""
    if output.suffix.lower() not in JSONL_SUFFIXES:
        raise ConfigError("the output must be a JSON Lines file", key="output", found=repr(str(output)),
                          expected="a path ending in " + " or ".join(JSONL_SUFFIXES))
    if output.is_dir():
        raise ConfigError("the output is a folder", key="output", found=str(output), expected="a file path")
    inputs = [source / name for name in (*QUERIES, *BEIR_CORPUS)] if source.is_dir() else [source]
    if any(output.resolve() == path.resolve() for path in inputs):
        raise ConfigError("the output would overwrite the questions", key="output", found=str(output),
                          expected="a path outside the questions file or folder")
    if not output.parent.is_dir():
        raise ConfigError("the output folder does not exist", key="output", found=str(output.parent),
                          expected="an existing folder")


def _nothing_usable(source: Path, report: RaftReport) -> DataError:
    """The error for a run in which every question was skipped."""
    reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(report.skipped.items())) or "no questions"
    hint = report.warnings[0] if report.warnings else None
    if "judged document not in the index" in report.skipped:
        hint = "Was the index built from these documents? " + (hint or "")
    return DataError("no usable questions", where=str(source), found=f"every question skipped ({reasons})",
                     expected="rows with a question and an answer (question/query and answer/response/output/answers)",
                     hint=hint)


def _with_vectors(items: Sequence[Question], embedder: Any) -> Iterator[tuple[Question, np.ndarray | None]]:
    """Each question with its query vector (None for those with a problem), embedded a batch at a time."""
    for first in range(0, len(items), EMBED_BATCH):
        block = items[first:first + EMBED_BATCH]
        usable = [q.text for q in block if q.problem is None]
        vectors = iter(embedder.embed_queries(usable) if usable else [])
        for question in block:
            yield question, None if question.problem is not None else next(vectors)


def _progress(pairs: Iterable[Any], total: int, show: bool) -> Iterable[Any]:
    """The items, with a transient progress bar over the questions when asked."""
    if not show or not total:
        return pairs
    from rich.progress import track

    return track(pairs, total=total, description="RAFT examples", transient=True)

