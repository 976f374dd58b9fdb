"""Task metrics: which fit which answer form, per-example and corpus scores, bootstrap confidence intervals.

Every score is in [0, 1] (BLEU and chrF are sacrebleu's divided by 100), except perplexity, which the evaluator
computes from the model's log-likelihood. `references` is always one list of acceptable answers per example; where
an example has several, the best match counts (max over references), as SQuAD, ROUGE and sacrebleu do.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tailorlm.errors import ConfigError, DataError
from tailorlm.tasks.parsing import normalize_answer, numbers_equal, parse_number


@dataclass(frozen=True)
class Metric:
    """A metric and the answer forms it fits."""

    name: str
    forms: tuple[str, ...]
    """Answer forms (label, text, number, code, span) it can score."""
    higher_is_better: bool = True
    corpus_level: bool = False
    """The corpus score is not the mean of example scores (macro-F1, BLEU, chrF)."""
    from_model: bool = False
    """Computed from the model's likelihood by the evaluator, not from predictions (perplexity)."""
    description: str = ""


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", ("label",), description="share of predictions equal to the reference label"),
        Metric("macro_f1", ("label",), corpus_level=True, description="F1 per class, averaged over classes"),
        Metric("exact_match", ("span", "text"), description="SQuAD exact match after normalisation"),
        Metric("token_f1", ("span", "text"), description="SQuAD token-overlap F1 after normalisation"),
        Metric("rouge1", ("text", "span"), description="ROUGE-1 F-measure (stemmed)"),
        Metric("rouge2", ("text", "span"), description="ROUGE-2 F-measure (stemmed)"),
        Metric("rougeL", ("text", "span"), description="ROUGE-L F-measure (stemmed)"),
        Metric("bleu", ("text",), corpus_level=True, description="sacrebleu corpus BLEU / 100"),
        Metric("chrf", ("text",), corpus_level=True, description="sacrebleu corpus chrF / 100"),
        Metric("numeric_accuracy", ("number",), description="final number equal to the reference's (#### N)"),
        Metric("pass_at_1", ("code",), description="share of programs whose tests pass in the sandbox"),
        Metric("perplexity", ("text",), higher_is_better=False, from_model=True,
               description="exp of the mean token loss on the references (computed by the evaluator)"),
    )
}
_PASS_AT = re.compile(r"pass_at_([1-9]\d*)")


def get_metric(name: str, *, where: str | None = None) -> Metric:
    """The metric called `name`; `pass_at_K` for any K >= 1 is pass@K over several samples per problem."""
    if name in METRICS:
        return METRICS[name]
    if m := _PASS_AT.fullmatch(name):
        return Metric(name, ("code",), description=f"unbiased pass@{m.group(1)} over several samples per problem")
    raise ConfigError(
        "unknown metric", where=where, key="task.metric", found=repr(name),
        expected="one of " + ", ".join(METRICS) + " (or pass_at_K)",
    )


def check_metric(metric: str, answer: str, *, where: str) -> None:
    """Raise ConfigError, listing the metrics that fit, when `metric` cannot score answers of form `answer`."""
    forms = sorted({form for m in METRICS.values() for form in m.forms})
    if answer not in forms:
        raise ConfigError("unknown answer form", where=where, key="task.answer", found=repr(answer),
                          expected="one of " + ", ".join(forms))
    if answer not in get_metric(metric, where=where).forms:
        fitting = [name for name, m in METRICS.items() if answer in m.forms]
        raise ConfigError(
            f"metric {metric!r} does not fit answer form {answer!r}", where=where, key="task.metric",
            found=repr(metric), expected=f"one of {', '.join(fitting)} for answer {answer!r}",
        )


def example_scores(metric: str, predictions: list[str], references: list[list[str]]) -> list[float]:
    """One score in [0, 1] per example.

    For the corpus-level metrics this is the sentence-level cousin shown per prediction: correctness for
    macro_f1, sentence BLEU (effective order) and sentence chrF. For `pass_at_1` / `pass_at_K` each prediction is the
    sandbox verdicts of that problem's samples as a string of "1"/"0" (sandbox.score_code gives them: "1" for one
    passing sample, "10110" for five samples of which three passed); the score is the unbiased pass@K estimate.
    """
    spec = get_metric(metric)
    _check_lengths(predictions, references)
    predictions, references = [_text(p) for p in predictions], [_as_list(refs) for refs in references]
    if spec.from_model:
        raise ConfigError(
            f"metric {metric!r} is computed from the model's likelihood, not from predictions",
            hint="the evaluator scores it with scoring='perplexity'; example_scores cannot",
        )
    if m := _PASS_AT.fullmatch(metric):
        k = int(m.group(1))
        return [_pass_flags_score(flags, k) for flags in predictions]
    if metric == "macro_f1":
        metric = "accuracy"
    if metric in ("bleu", "chrf"):
        scorer = _sacrebleu_metric(metric, sentence=True)
        return [scorer.sentence_score(p, refs).score / 100 if refs else 0.0 for p, refs in zip(predictions, references)]
    score_one = _EXAMPLE_SCORERS[metric]
    return [max((score_one(p, r) for r in refs), default=0.0) for p, refs in zip(predictions, references)]


def corpus_score(metric: str, predictions: list[str], references: list[list[str]]) -> float:
    """The score of the whole set: the mean of example scores, or the corpus statistic (macro-F1, BLEU, chrF)."""
    spec = get_metric(metric)
    _check_lengths(predictions, references)
    if not predictions:
        raise DataError(f"no examples to score with {metric!r}", hint="check the split and --limit")
    if not spec.corpus_level:
        return float(np.mean(example_scores(metric, predictions, references)))
    predictions, references = [_text(p) for p in predictions], [_as_list(refs) for refs in references]
    if metric == "macro_f1":
        return macro_f1(predictions, [refs[0] if refs else "" for refs in references])
    stats = _sacrebleu_stats(metric, predictions, references)
    return _score_from_stats(_sacrebleu_metric(metric), stats.sum(axis=0))


def macro_f1(predictions: Sequence[str | None], gold: Sequence[str]) -> float:
    """F1 per class averaged over the classes that occur as gold or prediction ("" or None, no answer, is no class).

    A class that is predicted but never gold has F1 0, as in scikit-learn with zero_division=0.
    """
    pred_ids, gold_ids = _class_ids(predictions, gold)
    return _macro_f1_ids(pred_ids, gold_ids, np.arange(len(pred_ids)))


def _class_ids(predictions: Sequence[str | None], gold: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and gold labels as class numbers, -1 for no answer."""
    predictions, gold = [_text(p).strip() for p in predictions], [_text(g).strip() for g in gold]
    classes = {c: i for i, c in enumerate(sorted((set(gold) | set(predictions)) - {""}))}
    return (np.array([classes.get(p, -1) for p in predictions], dtype=int),
            np.array([classes.get(g, -1) for g in gold], dtype=int))


def _macro_f1_ids(pred_ids: np.ndarray, gold_ids: np.ndarray, idx: np.ndarray) -> float:
    """Macro-F1 of the examples `idx` (a bootstrap draw, or all of them), from class numbers."""
    p, g = pred_ids[idx], gold_ids[idx]
    width = max(int(pred_ids.max(initial=-1)), int(gold_ids.max(initial=-1))) + 1
    if width == 0:
        return 0.0
    tp = np.bincount(g[(p == g) & (g >= 0)], minlength=width)
    counts = np.bincount(p[p >= 0], minlength=width) + np.bincount(g[g >= 0], minlength=width)
    present = counts > 0
    return float(np.mean(2 * tp[present] / counts[present])) if present.any() else 0.0


def bootstrap_ci(
    metric: str,
    predictions: list[str],
    references: list[list[str]],
    *,
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval: resample examples with replacement, recompute the corpus score each time.

    Recomputing the corpus score (not averaging example scores) keeps the interval right for macro-F1, BLEU and
    chrF; BLEU and chrF resample sacrebleu's per-sentence statistics, as sacrebleu's own significance test does.
    """
    spec = get_metric(metric)
    _check_lengths(predictions, references)
    n = len(predictions)
    if n == 0:
        raise DataError(f"no examples to score with {metric!r}", hint="check the split and --limit")
    if not 0 < level < 1:
        raise ConfigError("confidence level out of range", key="level", found=str(level), expected="0 < level < 1")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(samples, n))  # (samples, n) example indices
    predictions, references = [_text(p) for p in predictions], [_as_list(refs) for refs in references]
    if not spec.corpus_level:
        scores = np.asarray(example_scores(metric, predictions, references), dtype=float)
        values = scores[draws].mean(axis=1)
    elif metric == "macro_f1":
        gold = [refs[0] if refs else "" for refs in references]
        pred_ids, gold_ids = _class_ids(predictions, gold)
        values = np.array([_macro_f1_ids(pred_ids, gold_ids, idx) for idx in draws])
    else:
        stats, scorer = _sacrebleu_stats(metric, predictions, references), _sacrebleu_metric(metric)
        values = np.array([_score_from_stats(scorer, stats[idx].sum(axis=0)) for idx in draws])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimate from n samples of which c passed: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ConfigError(f"pass@{k} needs at least {k} samples per problem", found=f"{n} samples",
                          hint=f"generate n >= {k} samples, or use pass_at_{n}")
    if n - c < k:
        return 1.0
    # The product form of the ratio of binomials: stable for large n.
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def _pass_flags_score(flags: str, k: int) -> float:
    """pass@k of one problem from its samples' verdicts written as "1"/"0" characters."""
    text = str(flags).strip()
    if not text or set(text) - {"0", "1"}:
        raise DataError(
            "a code prediction must be its samples' sandbox verdicts as '1'/'0' characters", found=repr(flags)[:60],
            hint="run the programs through tasks.sandbox.score_code and pass its flags to the metric",
        )
    return pass_at_k(len(text), text.count("1"), k)


def _accuracy(prediction: str, reference: str) -> float:
    return float(str(prediction).strip() == str(reference).strip())


def _exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def _token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1: overlap of normalised tokens; two empty answers agree, one empty answer scores 0."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum(min(pred.count(t), ref.count(t)) for t in set(pred) & set(ref))
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _numeric(prediction: str, reference: str) -> float:
    return float(numbers_equal(parse_number(str(prediction)), parse_number(str(reference))))


def _rouge(kind: str) -> Callable[[str, str], float]:
    def score(prediction: str, reference: str) -> float:
        return _rouge_scorer(kind).score(reference, prediction)[kind].fmeasure

    return score


@lru_cache(maxsize=None)
def _rouge_scorer(kind: str):
    """A rouge-score scorer for one ROUGE kind, with Porter stemming."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=True)


_EXAMPLE_SCORERS: dict[str, Callable[[str, str], float]] = {
    "accuracy": _accuracy,
    "exact_match": _exact_match,
    "token_f1": _token_f1,
    "numeric_accuracy": _numeric,
    "rouge1": _rouge("rouge1"),
    "rouge2": _rouge("rouge2"),
    "rougeL": _rouge("rougeL"),
}


def _sacrebleu_metric(metric: str, *, sentence: bool = False):
    """sacrebleu's BLEU (effective order for single sentences, as sacrebleu advises) or chrF, default settings."""
    from sacrebleu.metrics import BLEU, CHRF

    return BLEU(effective_order=sentence) if metric == "bleu" else CHRF()


def _sacrebleu_stats(metric: str, predictions: list[str], references: list[list[str]]) -> np.ndarray:
    """sacrebleu's per-sentence sufficient statistics, (n, d); variable reference counts padded with None."""
    width = max((len(refs) for refs in references), default=0)
    if width == 0:
        raise DataError(f"{metric} needs at least one reference per example", found="no references")
    streams = [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]
    scorer = _sacrebleu_metric(metric)
    return np.asarray(scorer._extract_corpus_statistics([str(p) for p in predictions], streams), dtype=float)


def _score_from_stats(scorer, summed: np.ndarray) -> float:
    """The corpus score / 100 from summed sentence statistics."""
    stats = [int(round(x)) for x in summed]
    return float(scorer._compute_score_from_stats(stats).score) / 100


def _as_list(references: Sequence[str] | str) -> list[str]:
    return [references] if isinstance(references, str) else [str(r) for r in references]


def _text(value: str | None) -> str:
    """A prediction as text; None (no answer parsed) is the empty answer."""
    return "" if value is None else str(value)


def _check_lengths(predictions: Sequence[str], references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")

