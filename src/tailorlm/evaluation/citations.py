"""Citations of RAG answers in evaluation: the gold document of each test row, the passages each answer was given
and cited, and the shares that the leaderboard shows (citation rate, citation correctness, retrieval hit)."""

from __future__ import annotations

from typing import Any, Sequence

from tailorlm.errors import ConfigError
from tailorlm.tasks.task import TaskExample


def citation_docs(template: str, examples: Sequence[TaskExample]) -> list[str]:
    """The id of the document holding each example's answer: `template` formatted with the example's row fields.

    >>> citation_docs("{source}-{qid}", [TaskExample("test-0", "q", ["a"], meta={"source": "CDC", "qid": "7-1"})])
    ['CDC-7-1']
    """
    if not isinstance(template, str) or "{" not in template:
        raise ConfigError("citation_doc must name the gold document through the row's fields", key="eval.citation_doc",
                          found=repr(template), expected='a format string such as "{source}-{qid}"')
    docs = []
    for example in examples:
        fields = {k: v for k, v in example.meta.items() if k != "origin"}
        try:
            docs.append(template.format_map(fields))
        except KeyError as err:
            has = ", ".join(map(str, fields)) or "none besides its input and answer"
            raise ConfigError("citation_doc names a field the row does not have", where=example.meta.get("origin"),
                              key="eval.citation_doc", found=f"no field {err.args[0]!r} in {template!r}",
                              expected=f"fields of the row: {has}") from None
        except (ValueError, IndexError, AttributeError, TypeError) as err:
            raise ConfigError("citation_doc is not a format string over the row's fields", key="eval.citation_doc",
                              found=f"{template!r} ({err})",
                              expected='field names in braces, e.g. "{source}-{qid}"') from None
    return docs


def record_citations(row: dict[str, Any], answer: Any, field: str = "doc_id") -> None:
    """Write into an evaluation row the passages a RagAnswer was given (`sources`, in [n] order) and those it cites
    (`cited`; [n] cites the n-th passage, a document of several passages is cited once), each as its `field`: the
    document id, or a field of its document such as `url` (the doc ids then go in `source_docs` and `cited_docs`)."""
    def key(hit: Any) -> str:
        if field == "doc_id":
            return hit.chunk.doc_id
        if field not in hit.chunk.metadata:
            raise ConfigError("the passages have no such field", where=f"document {hit.chunk.doc_id}",
                              key="eval.citation_field", found=repr(field),
                              expected="doc_id or one of " + (", ".join(map(str, hit.chunk.metadata)) or "none"))
        return str(hit.chunk.metadata[field])

    cited = [answer.sources[n - 1] for n in answer.cited]
    row["sources"] = [key(hit) for hit in answer.sources]
    row["cited"] = list(dict.fromkeys(key(hit) for hit in cited))
    if field != "doc_id":
        row["source_docs"] = [hit.chunk.doc_id for hit in answer.sources]
        row["cited_docs"] = list(dict.fromkeys(hit.chunk.doc_id for hit in cited))


def citation_figures(rows: list[dict[str, Any]], gold: list[str] | None = None, *,
                     indexed: set[str] | None = None) -> dict[str, Any]:
    """Shares of the rows (each with `sources` and `cited` doc ids) whose answer cites a source, and with the gold
    document ids: cites the gold document (citing nothing counts as wrong) and was given it (`retrieval_hit`).

    With the `indexed` doc ids, also how many gold ids the index does not hold (a citation_doc that does not spell
    the corpus's ids caps both shares), and the first few of them.
    """
    figures: dict[str, Any] = {"citation_rate": sum(1 for row in rows if row["cited"]) / len(rows)}
    if gold is not None:
        for row, doc in zip(rows, gold):
            row["gold_doc"] = doc
        figures["citation_accuracy"] = sum(1 for row, doc in zip(rows, gold) if doc in row["cited"]) / len(rows)
        figures["retrieval_hit"] = sum(1 for row, doc in zip(rows, gold) if doc in row["sources"]) / len(rows)
        if indexed is not None:
            missing = [doc for doc in gold if doc not in indexed]
            figures["gold_not_indexed"] = len(missing)
            figures["gold_not_indexed_examples"] = list(dict.fromkeys(missing))[:3]
    return figures


def indexed_docs(rag: Any) -> set[str] | None:
    """The doc ids a RAG specialist's index holds (from its manifest), or None when it does not say."""
    files = getattr(getattr(rag, "index", None), "manifest", {}).get("files")
    if not isinstance(files, dict):
        return None
    return {doc_id for entry in files.values() for doc_id in entry.get("docs", {})}


def rag_answer(rag: Any, messages: list[dict[str, str]], max_new_tokens: int) -> Any:
    """A RAG specialist's RagAnswer (text, sources, citations) to the last user message, at most max_new_tokens long."""
    from tailorlm.strategies.rag import _last_question

    saved = rag.settings
    rag.settings = saved.updated({"max_new_tokens": max_new_tokens})
    try:
        return rag.ask(_last_question(messages))
    finally:
        rag.settings = saved
