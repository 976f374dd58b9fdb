"""Measure one specialist (or model) on one split of a task: metric with a bootstrap CI, latency, predictions
(what a target can be, and how it is loaded, is `evaluation/targets.py`).

How an answer is obtained depends on the target and the answer form:

- label tasks on a causal model: constrained choice (each label word's summed token log-probability after the
  rendered prompt; the best word wins, no parsing needed) and free generation read by a tolerant parser, reported
  beside it in `extra["generate"]`;
- classification-head specialists (`objective: classify`): the argmax of the head over the specialist's labels;
- encoder-decoders (T5, Marian; seq2seq specialists and prompts over one): the same passes, with the prompt as plain
  text (no chat template) for the encoder and the answer as what the decoder writes;
- text, span, number and code tasks: batched greedy generation, parsed per answer form (code runs its tests in the
  sandbox);
- the `perplexity` metric: the reference answer's token log-likelihood after the prompt.

A RAG specialist answers through retrieval; each row records the documents it was given (`sources`) and those its
answer cites (`cited`), and `extra` the share of answers that cite anything. With `citation_doc` (a format string
over the row's fields naming the document that holds the answer) `extra` also says how often that document was
cited (`citation_accuracy`) and retrieved (`retrieval_hit`).
"""

from __future__ import annotations

import json
import math
import time
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tailorlm.errors import ConfigError, DataError, ModelError
from tailorlm.evaluation.likelihood import (_check_length, _logsumexp, _pad_id, continuation_logprobs, greedy,
                                            option_logprobs)
from tailorlm.evaluation.citations import citation_docs, citation_figures, indexed_docs, rag_answer, record_citations
from tailorlm.evaluation.targets import Loaded, Predictor, load_target
from tailorlm.files import write_atomic
from tailorlm.tasks.task import Task, TaskExample

SCORINGS: tuple[str, ...] = ("auto", "choice", "generate", "head", "perplexity")
DEFAULT_MAX_NEW_TOKENS: dict[str, int] = {"label": 16, "number": 256, "code": 384, "text": 64, "span": 64}
METRICS_FILE, PREDICTIONS_FILE = "metrics.json", "predictions.jsonl"


@dataclass
class EvalResult:
    """What `evaluate` measured; `to_dict` is the content of metrics.json."""

    metric: str
    score: float
    ci: tuple[float, float]
    examples: int
    scoring: str
    """How the primary predictions were made: choice, generate, head or perplexity."""
    seconds_per_example: float
    tokens_per_second: float
    """Generated tokens per second (tokens scored per second when nothing was generated)."""
    predictions: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    split: str = "test"
    target: str = ""
    task: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The metrics.json record (everything but the predictions)."""
        return {"metric": self.metric, "score": self.score, "ci_low": self.ci[0], "ci_high": self.ci[1],
                "examples": self.examples, "scoring": self.scoring, "seconds_per_example": self.seconds_per_example,
                "tokens_per_second": self.tokens_per_second, "split": self.split, "target": self.target,
                "task": self.task, "extra": self.extra}


def evaluate(target: str | Path | Predictor, task: Task, *, split: str = "test", limit: int | None = None,
             output: str | Path | None = None, batch_size: int = 8, max_new_tokens: int | None = None,
             scoring: str = "auto", progress: bool = True, examples: Sequence[TaskExample] | None = None,
             citation_doc: str | None = None, citation_field: str = "doc_id",
             metrics: Sequence[str] = ()) -> EvalResult:
    """Score `target` (a model reference, a specialist folder or a Predictor) on `split` of `task` (or on `examples`).

    Writes `output/metrics.json` and `output/predictions.jsonl` when `output` is given. `citation_doc` (RAG
    specialists) names each example's gold document, e.g. "{source}-{qid}"; see `citation_docs`; it is compared with
    each passage's `citation_field`: its document id, or a field its document had (such as `url`). `metrics` are
    scored on the same predictions beside the task's own, in `extra["metrics"]` (e.g. exact_match beside token_f1).
    """
    from tailorlm.tasks.metrics import check_metric

    check_metric(task.metric, task.answer, where=f"{task.source} (task.metric)")
    metrics = [metrics] if isinstance(metrics, str) else list(metrics or [])
    for name in metrics:
        check_metric(name, task.answer, where=f"{task.source} (eval.metrics)")
        if name == "perplexity" or name.startswith("pass_at_"):
            raise ConfigError("this metric cannot be scored beside another", key="eval.metrics", found=repr(name),
                              expected="metrics computed from the predictions, such as exact_match, rouge1, bleu")
    if not isinstance(citation_field, str) or not citation_field:
        raise ConfigError("citation_field names a field of the passages", key="eval.citation_field",
                          found=repr(citation_field), expected="doc_id, or a field of the documents such as url")
    if scoring not in SCORINGS:
        raise ConfigError("unknown scoring", key="scoring", found=repr(scoring), expected="one of " + ", ".join(SCORINGS))
    if batch_size < 1:
        raise ConfigError("the batch size must be at least 1", key="batch_size", found=str(batch_size))
    if limit is not None and limit < 1:
        raise ConfigError("the limit must be at least 1", key="limit", found=str(limit))
    chosen = list(examples) if examples is not None else task.examples(split)
    chosen = chosen[:limit] if limit is not None else chosen
    if not chosen:
        raise DataError(f"no examples to evaluate in the {split} split", where=task.source, key=f"data.{split}")
    gold = citation_docs(citation_doc, chosen) if citation_doc is not None else None  # checked before loading
    from tailorlm.training.matmul import onednn_linear

    loaded = load_target(target, progress=progress)
    try:
        both = scoring == "auto"  # label tasks: constrained choice, and free generation beside it
        scoring = _primary(scoring, task, loaded)
        new_tokens = max_new_tokens or DEFAULT_MAX_NEW_TOKENS[task.answer]
        # fp32 on the CPU: the linear layers multiply through oneDNN while evaluating (training/matmul.py)
        with _bar(progress) as bar, onednn_linear(loaded.model):
            result = _run(loaded, task, chosen, scoring=scoring, batch_size=batch_size, max_new_tokens=new_tokens,
                          bar=bar, both=both, citation_field=citation_field)
        if loaded.kind == "rag":
            indexed = indexed_docs(loaded.rag) if citation_field == "doc_id" else None
            result.extra.update(citation_figures(result.predictions, gold, indexed=indexed))
        if metrics and result.scoring != "perplexity":
            result.extra["metrics"] = _other_metrics(task, metrics, result.predictions, chosen)
    finally:
        if loaded.rag is not None:
            loaded.rag.close()
    result.split = split if examples is None else "given"
    result.target, result.task = loaded.name, task.name
    if output is not None:
        write_result(result, output)
    return result


def _other_metrics(task: Task, names: list[str], rows: list[dict[str, Any]],
                   examples: list[TaskExample]) -> dict[str, dict[str, float]]:
    """Each of `names` scored on the predictions already made, with its 95% bootstrap interval."""
    predictions = [row["prediction"] for row in rows]
    scored = {}
    for name in names:
        score, ci, _ = _scores(dataclasses.replace(task, metric=name), predictions, examples)
        scored[name] = {"score": score, "ci_low": ci[0], "ci_high": ci[1]}
    return scored


def _primary(scoring: str, task: Task, loaded: Loaded) -> str:
    """The scoring that makes the primary predictions; ConfigError when it does not fit the task or the target."""
    if task.metric == "perplexity":
        wanted = "perplexity"
    elif loaded.kind == "head":
        wanted = "head"
        if scoring == "choice":  # a head chooses among the labels: what a recipe's `choice` asks of generative models
            scoring = "head"
    elif scoring != "auto":
        wanted = scoring
    else:
        wanted = "choice" if task.answer == "label" and loaded.kind in ("lm", "seq2seq") else "generate"
    if scoring not in ("auto", wanted):
        raise ConfigError(f"scoring {scoring!r} does not fit this evaluation", key="scoring", found=repr(scoring),
                          expected=f"{wanted!r} (metric {task.metric}, {loaded.kind} target)")
    if wanted == "choice" and task.answer != "label":
        raise ConfigError("constrained choice needs a label task", key="scoring", found=f"answer {task.answer}",
                          expected="answer: label, or scoring generate")
    if wanted in ("choice", "perplexity") and loaded.kind not in ("lm", "seq2seq"):
        raise ConfigError(f"{wanted} scoring needs the model's log-probabilities", key="scoring",
                          found=f"a {loaded.kind} target", expected="a model reference or a trained specialist")
    if wanted == "head" and task.answer != "label":
        raise ConfigError("a classification head can only answer label tasks", where=loaded.name, key="task.answer",
                          found=task.answer, expected="label")
    return wanted


def write_result(result: EvalResult, output: str | Path) -> Path:
    """Write metrics.json and predictions.jsonl into `output`, each atomically (temp file + rename)."""
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(p, ensure_ascii=False, default=str) + "\n" for p in result.predictions)
    write_atomic(folder / PREDICTIONS_FILE, lines)
    write_atomic(folder / METRICS_FILE, json.dumps(result.to_dict(), indent=1, ensure_ascii=False, default=str) + "\n")
    return folder


def _run(loaded: Loaded, task: Task, examples: list[TaskExample], *, scoring: str, batch_size: int,
         max_new_tokens: int, bar: Any, both: bool, citation_field: str = "doc_id") -> EvalResult:
    """Make the primary predictions (and with `both`, after constrained choice, the generated ones beside them)."""
    rows = [_row(example) for example in examples]
    if scoring == "perplexity":
        return _perplexity(loaded, task, examples, rows, batch_size, bar)
    extra: dict[str, Any] = {}
    if scoring == "head":
        predictions, seconds, tokens = _head(loaded, task, examples, batch_size, bar)
    elif scoring == "choice":
        predictions, seconds, tokens, logprobs = _choice(loaded, task, examples, batch_size, bar)
        for row, scores in zip(rows, logprobs):
            row["logprobs"] = scores
    else:
        predictions, seconds, tokens = _generated(loaded, task, examples, rows, batch_size, max_new_tokens, bar,
                                                  citation_field=citation_field)
    if both and scoring == "choice":
        generated, gen_seconds, gen_tokens = _generated(loaded, task, examples, rows, batch_size, max_new_tokens, bar,
                                                        beside=True)
        score, ci, _ = _scores(task, generated, examples)
        extra["generate"] = {"metric": task.metric, "score": score, "ci_low": ci[0], "ci_high": ci[1],
                             "parsed": sum(1 for p in generated if p) / len(generated),
                             "seconds_per_example": gen_seconds / len(examples),
                             "tokens_per_second": gen_tokens / gen_seconds if gen_seconds > 0 else 0.0}
        tokens_per_second = extra["generate"]["tokens_per_second"]
    else:
        tokens_per_second = tokens / seconds if seconds > 0 else 0.0
    if task.answer == "code":
        from tailorlm.tasks.sandbox import score_code

        verdicts = score_code(predictions, [example.tests or "" for example in examples])
        for row, verdict in zip(rows, verdicts):
            row["passed"], row["reason"] = verdict.passed, verdict.reason
        score, ci, per_example = _scores(task, [verdict.flag for verdict in verdicts], examples, code=True)
    else:
        score, ci, per_example = _scores(task, predictions, examples)
    for row, prediction, value in zip(rows, predictions, per_example):
        row["prediction"], row["score"] = prediction, value
    if task.answer == "label":
        extra["per_class"] = _per_class(task, predictions, examples)
    generation = scoring == "generate" or "generate" in extra
    extra["max_new_tokens"] = max_new_tokens if generation else None
    extra["tokens_counted"] = "generated" if generation else "scored"  # what tokens_per_second counts
    return EvalResult(metric=task.metric, score=score, ci=ci, examples=len(examples), scoring=scoring,
                      seconds_per_example=seconds / len(examples), tokens_per_second=tokens_per_second,
                      predictions=rows, extra=extra)


def _row(example: TaskExample) -> dict[str, Any]:
    """The predictions.jsonl record of an example, before its prediction is known."""
    row: dict[str, Any] = {"id": example.id, "input": example.input, "reference": example.references[0] if example.references else None,
                           "references": list(example.references)}
    if example.context:
        row["context"] = example.context
    if example.meta.get("origin"):
        row["origin"] = example.meta["origin"]
    return row


def _scores(task: Task, predictions: list[str], examples: list[TaskExample], *,
            code: bool = False) -> tuple[float, tuple[float, float], list[float]]:
    """(corpus score, bootstrap 95% CI, per-example scores) of the task's metric; code predictions are pass flags."""
    from tailorlm.tasks.metrics import bootstrap_ci, corpus_score, example_scores

    references = [[] if code else list(example.references) for example in examples]
    score = float(corpus_score(task.metric, predictions, references))
    low, high = bootstrap_ci(task.metric, predictions, references)
    return score, (float(low), float(high)), [float(v) for v in example_scores(task.metric, predictions, references)]


def _per_class(task: Task, predictions: list[str], examples: list[TaskExample]) -> dict[str, dict[str, Any]]:
    """For each label value: its word, how many examples have it, how many of them were right, how often it was said."""
    table: dict[str, dict[str, Any]] = {}
    for value, word in task.label_map().items():
        truth = [p for p, e in zip(predictions, examples) if e.references[0] == value]
        correct = sum(1 for p in truth if p == value)
        table[value] = {"word": word, "support": len(truth), "correct": correct,
                        "recall": correct / len(truth) if truth else None, "predicted": predictions.count(value)}
    return table


# -- the passes -------------------------------------------------------------------------------------------------------

def _batches(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _prompts(loaded: Loaded, task: Task, examples: list[TaskExample]) -> list[str]:
    """The exact prompt text of each example: its messages through the chat template, with the generation prompt,
    or for an encoder-decoder as plain text (as fitting.write_training_data writes its training sources)."""
    from tailorlm.models.generate import plain_prompt, render_prompt

    if loaded.kind == "seq2seq":
        return [plain_prompt(loaded.messages(task, example)) for example in examples]
    return [render_prompt(loaded.tokenizer, loaded.messages(task, example)) for example in examples]


def _prompt_ids(loaded: Loaded, task: Task, examples: list[TaskExample]) -> list[list[int]]:
    """The prompts' token ids: a chat template already wrote its special tokens; an encoder's input gets its own."""
    return loaded.tokenizer(_prompts(loaded, task, examples), add_special_tokens=loaded.kind == "seq2seq")["input_ids"]


def _choice(loaded: Loaded, task: Task, examples: list[TaskExample], batch_size: int,
            bar: Any) -> tuple[list[str], float, int, list[dict[str, float]]]:
    """Constrained choice: the log-probability that the answer is each label word; the likeliest word's value wins.

    A word's log-probability is its tokens' summed log-probabilities after the prompt; the word as written and
    capitalised ("bearish", "Bearish") are two ways of saying it, so their probabilities add up.
    """
    import math

    values, words = list(task.label_map()), task.label_words()
    spellings = [list(dict.fromkeys((word, word[:1].upper() + word[1:]))) for word in words]
    options = [loaded.tokenizer(s, add_special_tokens=False)["input_ids"] for group in spellings for s in group]
    owner = [i for i, group in enumerate(spellings) for _ in group]
    predictions, logprobs, tokens = [], [], 0
    step = bar.add_task("constrained choice", total=len(examples))
    start = time.perf_counter()
    for batch in _batches(examples, batch_size):
        prompt_ids = _prompt_ids(loaded, task, batch)
        for ids, example in zip(prompt_ids, batch):
            _check_length(loaded.model, len(ids) + max(map(len, options)), example)
        table = option_logprobs(loaded.model, prompt_ids, options, pad_id=_pad_id(loaded.tokenizer))
        tokens += sum(len(p) for p in prompt_ids) + len(batch) * sum(map(len, options))
        for scores in table:
            combined = [_logsumexp([v for v, o in zip(scores, owner) if o == i]) for i in range(len(words))]
            best = max(range(len(words)), key=lambda j: combined[j])
            predictions.append(values[best])
            logprobs.append({word: value if math.isfinite(value) else -1e30 for word, value in zip(words, combined)})
        bar.advance(step, len(batch))
    return predictions, time.perf_counter() - start, tokens, logprobs


def _generated(loaded: Loaded, task: Task, examples: list[TaskExample], rows: list[dict[str, Any]], batch_size: int,
               max_new_tokens: int, bar: Any, *, beside: bool = False,
               citation_field: str = "doc_id") -> tuple[list[str], float, int]:
    """Greedy answers parsed for the answer form, with the time taken and the tokens generated.

    Each row gets the raw text as `output`, and when `beside` (generation next to constrained choice) the parsed
    answer as `generated`; a RAG specialist's rows also get the passages given and cited (citations.record_citations).
    """
    texts: list[tuple[str, int]] = []
    answers = []  # a RAG specialist's RagAnswers
    step = bar.add_task("generation", total=len(examples))
    start = time.perf_counter()
    for batch in _batches(examples, 1 if loaded.kind == "rag" else batch_size):
        if loaded.kind == "rag":
            answers.append(rag_answer(loaded.rag, loaded.messages(task, batch[0]), max_new_tokens))
            text = answers[-1].text
            texts.append((text, len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])))
        else:
            texts += greedy(loaded.model, loaded.tokenizer, _prompts(loaded, task, batch), max_new_tokens, batch)
        bar.advance(step, len(batch))
    seconds = time.perf_counter() - start
    predictions = [_parse(task, example, text) for example, (text, _) in zip(examples, texts)]
    for row, (text, _), prediction in zip(rows, texts, predictions):
        row["output"] = text
        if beside:
            row["generated"] = prediction
    for row, answer in zip(rows, answers):
        record_citations(row, answer, citation_field)
    return predictions, seconds, sum(n for _, n in texts)


def _parse(task: Task, example: TaskExample, text: str) -> str:
    """The answer in the generated text: a label value, a number, a program, or the text itself."""
    if task.answer == "label":
        from tailorlm.tasks.parsing import parse_label

        return parse_label(text, task.label_map()) or ""
    if task.answer == "number":
        from tailorlm.tasks.parsing import parse_number

        return parse_number(text) or ""
    if task.answer == "code":
        from tailorlm.tasks.parsing import extract_code

        return extract_code(text, example.input, entry=example.meta.get("entry_point") or None)
    return text.strip()


def _head(loaded: Loaded, task: Task, examples: list[TaskExample], batch_size: int, bar: Any) -> tuple[list[str], float, int]:
    """A classification head's argmax over the specialist's labels, for each example's input text."""
    import torch

    labels = loaded.labels or []
    unknown = sorted(set(task.label_map()) - set(labels))
    if unknown:
        raise ModelError("the classifier was trained on other labels than the task's", where=loaded.name, key="labels",
                         found="labels " + ", ".join(labels), expected="every task label, missing " + ", ".join(unknown))
    limit = getattr(loaded.model.config, "max_position_embeddings", None) or 512
    predictions, tokens = [], 0
    step = bar.add_task("classification head", total=len(examples))
    start = time.perf_counter()
    for batch in _batches(examples, batch_size):
        texts = [f"{e.context}\n\n{e.input}" if e.context else e.input for e in batch]
        inputs = loaded.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=limit)
        with torch.inference_mode():
            logits = loaded.model(**{k: v.to(loaded.model.device) for k, v in inputs.items()}).logits
        predictions += [labels[i] for i in logits.argmax(-1).tolist()]
        tokens += int(inputs["attention_mask"].sum())
        bar.advance(step, len(batch))
    return predictions, time.perf_counter() - start, tokens


def _perplexity(loaded: Loaded, task: Task, examples: list[TaskExample], rows: list[dict[str, Any]], batch_size: int,
                bar: Any) -> EvalResult:
    """The reference answers' perplexity after each prompt: exp of the mean negative log-likelihood per token."""
    import numpy as np

    nll, counts = [], []
    step = bar.add_task("perplexity", total=len(examples))
    start = time.perf_counter()
    for batch in _batches(examples, batch_size):
        prompt_ids = _prompt_ids(loaded, task, batch)
        answers = [loaded.tokenizer(task.answer_text(e), add_special_tokens=False)["input_ids"] for e in batch]
        for example, ids, answer in zip(batch, prompt_ids, answers):
            if not answer:
                raise DataError("an example has an empty answer, so it has no perplexity", where=example.meta.get("origin"))
            _check_length(loaded.model, len(ids) + len(answer), example)
        nll += [-v for v in continuation_logprobs(loaded.model, prompt_ids, answers, pad_id=_pad_id(loaded.tokenizer))]
        counts += [len(a) for a in answers]
        bar.advance(step, len(batch))
    seconds = time.perf_counter() - start
    nll_array, count_array = np.asarray(nll), np.asarray(counts, dtype=np.float64)
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(nll), size=(1000, len(nll)))
    samples = np.exp(nll_array[picks].sum(1) / count_array[picks].sum(1))
    for row, value, count in zip(rows, nll, counts):
        row.update(prediction=None, score=math.exp(value / count), nll=value, tokens=count)
    return EvalResult(metric=task.metric, score=float(math.exp(nll_array.sum() / count_array.sum())),
                      ci=(float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))), examples=len(examples),
                      scoring="perplexity", seconds_per_example=seconds / len(examples),
                      tokens_per_second=float(count_array.sum() + 0) / seconds if seconds > 0 else 0.0,
                      predictions=rows, extra={"tokens": int(count_array.sum())})


# -- small pieces -----------------------------------------------------------------------------------------------------

class _NoBar:
    """A progress bar that shows nothing."""

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, *args: Any) -> None:
        pass

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _bar(progress: bool) -> Any:
    """A rich progress bar on stderr, or one that shows nothing."""
    if not progress:
        return _NoBar()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True)
