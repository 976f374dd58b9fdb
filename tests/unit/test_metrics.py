"""Task metrics against hand-computed values and against sacrebleu / rouge-score / scikit-learn outputs."""

from __future__ import annotations

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from tailorlm.errors import ConfigError, DataError
from tailorlm.tasks.metrics import (
    METRICS,
    bootstrap_ci,
    check_metric,
    corpus_score,
    example_scores,
    get_metric,
    macro_f1,
    pass_at_k,
)


def test_accuracy_is_the_share_of_exact_labels() -> None:
    preds, refs = ["1", "0", "2", " 1 "], [["1"], ["1"], ["2"], ["1"]]
    assert example_scores("accuracy", preds, refs) == [1.0, 0.0, 1.0, 1.0]
    assert corpus_score("accuracy", preds, refs) == 0.75


def test_macro_f1_by_hand_and_against_scikit_learn() -> None:
    preds, gold = ["a", "a", "b", "c"], ["a", "b", "b", "c"]
    # a: tp 1, 2 predicted, 1 gold -> 2/3; b: tp 1, 1 predicted, 2 gold -> 2/3; c: 1.
    expected = (2 / 3 + 2 / 3 + 1) / 3
    assert corpus_score("macro_f1", preds, [[g] for g in gold]) == pytest.approx(expected)
    from sklearn.metrics import f1_score

    assert expected == pytest.approx(f1_score(gold, preds, average="macro"))
    # Per example, macro_f1 shows correctness.
    assert example_scores("macro_f1", preds, [[g] for g in gold]) == [1.0, 0.0, 1.0, 1.0]


def test_macro_f1_no_answer_is_not_a_class_and_a_wrong_class_scores_zero() -> None:
    # "" (unparsed) only costs recall of "a"; "c" was never gold, so it is a class with F1 0.
    assert macro_f1(["a", "", "c"], ["a", "a", "b"]) == pytest.approx((2 * 1 / (1 + 2) + 0 + 0) / 3)


def test_exact_match_and_token_f1_use_squad_normalisation_and_the_best_reference() -> None:
    refs = [["Eiffel Tower", "the tower"]]
    assert example_scores("exact_match", ["The Eiffel tower!"], refs) == [1.0]
    assert example_scores("exact_match", ["Eiffel Tower in Paris"], refs) == [0.0]
    # Normalised prediction: in eiffel tower in paris (5 tokens); against "eiffel tower": 2 common,
    # precision 2/5, recall 1 -> F1 = 2 * 0.4 / 1.4; against "tower": 1 common -> 2 * 0.2 / 1.2. Best wins.
    assert example_scores("token_f1", ["in the Eiffel tower in Paris"], refs) == [pytest.approx(0.8 / 1.4)]
    assert example_scores("token_f1", ["Louvre"], refs) == [0.0]
    assert example_scores("token_f1", [""], [[""]]) == [1.0]
    assert example_scores("exact_match", ["x"], [[]]) == [0.0]


def test_rouge_by_hand() -> None:
    preds, refs = ["the cat sat"], [["the cat sat down"]]
    # ROUGE-1: precision 3/3, recall 3/4 -> F = 2 * 0.75 / 1.75; ROUGE-L: LCS 3, the same.
    assert example_scores("rouge1", preds, refs) == [pytest.approx(1.5 / 1.75)]
    assert example_scores("rougeL", preds, refs) == [pytest.approx(1.5 / 1.75)]
    # ROUGE-2: bigrams 2 of 2 predicted, 2 of 3 reference -> F = 2 * (2/3) / (5/3) = 0.8.
    assert example_scores("rouge2", preds, refs) == [pytest.approx(0.8)]
    # Porter stemming: cats -> cat, running / runs -> run.
    assert example_scores("rouge1", ["cats running"], [["cat runs"]]) == [pytest.approx(1.0)]


def test_rouge_against_rouge_score_with_several_references() -> None:
    preds = ["the police killed the gunman", "a fast brown fox leaps over dogs"]
    refs = [["police kill the gunman", "the gunman was shot down by police"], ["the quick brown fox jumps over the lazy dog"]]
    for kind in ("rouge1", "rouge2", "rougeL"):
        scorer = rouge_scorer.RougeScorer([kind], use_stemmer=True)
        expected = [max(scorer.score(r, p)[kind].fmeasure for r in rs) for p, rs in zip(preds, refs)]
        assert example_scores(kind, preds, refs) == pytest.approx(expected)
        assert corpus_score(kind, preds, refs) == pytest.approx(sum(expected) / 2)


PREDS = ["the cat sat on the mat", "a quick brown fox jumps", "hello world"]
REFS = [["the cat is on the mat", "there is a cat on the mat"], ["the quick brown fox jumps over"], ["hello there world"]]


def test_bleu_and_chrf_are_sacrebleu_corpus_scores_over_100() -> None:
    streams = [[r[0] for r in REFS], [r[1] if len(r) > 1 else None for r in REFS]]
    bleu = sacrebleu.corpus_bleu(PREDS, streams).score / 100
    chrf = sacrebleu.corpus_chrf(PREDS, streams).score / 100
    assert corpus_score("bleu", PREDS, REFS) == pytest.approx(bleu)
    assert corpus_score("chrf", PREDS, REFS) == pytest.approx(chrf)
    assert corpus_score("bleu", PREDS, REFS) == pytest.approx(0.3916056, abs=1e-6)
    assert corpus_score("bleu", ["the cat is on the mat"], [["the cat is on the mat"]]) == pytest.approx(1.0)
    assert corpus_score("chrf", ["the cat is on the mat"], [["the cat is on the mat"]]) == pytest.approx(1.0)


def test_bleu_and_chrf_per_example_are_sacrebleu_sentence_scores() -> None:
    sentence_bleu = sacrebleu.metrics.BLEU(effective_order=True)
    expected = [sentence_bleu.sentence_score(p, r).score / 100 for p, r in zip(PREDS, REFS)]
    assert example_scores("bleu", PREDS, REFS) == pytest.approx(expected)
    expected = [sacrebleu.sentence_chrf(p, r).score / 100 for p, r in zip(PREDS, REFS)]
    assert example_scores("chrf", PREDS, REFS) == pytest.approx(expected)


def test_numeric_accuracy_compares_numbers_in_gsm8k_answers() -> None:
    refs = [["He has 3 + 997 = 1000 coins.\n#### 1000"], ["#### 42"], ["#### 5"], ["#### 7"]]
    preds = ["So the total is 1,000.0", "The answer is 42.", "#### 6", "I do not know"]
    assert example_scores("numeric_accuracy", preds, refs) == [1.0, 1.0, 0.0, 0.0]
    assert corpus_score("numeric_accuracy", preds, refs) == 0.5


def test_pass_at_k_hand_values() -> None:
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 4, 2) == 1.0  # only one failing sample: any 2 include a pass
    with pytest.raises(ConfigError, match="at least 6 samples"):
        pass_at_k(5, 2, 6)


def test_pass_at_metrics_take_sandbox_flags() -> None:
    assert example_scores("pass_at_1", ["1", "0", "1"], [[], [], []]) == [1.0, 0.0, 1.0]
    assert corpus_score("pass_at_1", ["1", "0", "1", "1"], [[]] * 4) == 0.75
    # Five samples per problem: "11000" has c = 2 -> pass@1 0.4, pass@2 0.7.
    assert example_scores("pass_at_1", ["11000"], [[]]) == [pytest.approx(0.4)]
    assert example_scores("pass_at_2", ["11000"], [[]]) == [pytest.approx(0.7)]
    with pytest.raises(DataError, match="sandbox verdicts"):
        example_scores("pass_at_1", ["def f(): pass"], [[]])


def test_perplexity_is_computed_elsewhere() -> None:
    assert METRICS["perplexity"].from_model and not METRICS["perplexity"].higher_is_better
    with pytest.raises(ConfigError, match="likelihood"):
        example_scores("perplexity", ["x"], [["x"]])
    with pytest.raises(ConfigError, match="likelihood"):
        corpus_score("perplexity", ["x"], [["x"]])


def test_check_metric_lists_the_metrics_that_fit() -> None:
    check_metric("macro_f1", "label", where="r.yaml")
    check_metric("pass_at_5", "code", where="r.yaml")
    with pytest.raises(ConfigError) as error:
        check_metric("bleu", "label", where="recipe.yaml")
    message = str(error.value)
    assert message.startswith("recipe.yaml: metric 'bleu' does not fit answer form 'label' (key 'task.metric')")
    assert "accuracy, macro_f1" in message
    with pytest.raises(ConfigError, match="exact_match, token_f1"):
        check_metric("accuracy", "span", where="r.yaml")
    with pytest.raises(ConfigError, match="unknown metric.*found 'acuracy'.*accuracy, macro_f1"):
        check_metric("acuracy", "label", where="r.yaml")
    with pytest.raises(ConfigError, match="unknown answer form.*found 'labels'"):
        check_metric("accuracy", "labels", where="r.yaml")


def test_every_metric_has_a_known_form() -> None:
    forms = {"label", "text", "number", "code", "span"}
    assert all(set(m.forms) <= forms and m.forms for m in METRICS.values())
    assert get_metric("pass_at_10").forms == ("code",)


def test_mismatched_lengths_and_empty_sets_are_refused() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1"):
        corpus_score("accuracy", ["a", "b"], [["a"]])
    with pytest.raises(DataError, match="no examples"):
        corpus_score("accuracy", [], [])


def _accuracy_data(n: int) -> tuple[list[str], list[list[str]]]:
    """n examples of which 70% are right."""
    preds = ["a" if i % 10 < 7 else "b" for i in range(n)]
    return preds, [["a"]] * n


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_more_examples() -> None:
    small, large = _accuracy_data(20), _accuracy_data(500)
    low_s, high_s = bootstrap_ci("accuracy", *small)
    low_l, high_l = bootstrap_ci("accuracy", *large)
    assert low_s <= 0.7 <= high_s and low_l <= 0.7 <= high_l
    assert high_l - low_l < (high_s - low_s) / 2
    # sqrt(0.7 * 0.3 / 500) = 0.0205: a 95% interval about +-0.04.
    assert high_l - low_l == pytest.approx(2 * 1.96 * 0.0205, rel=0.15)
    assert bootstrap_ci("accuracy", *small, seed=3) == bootstrap_ci("accuracy", *small, seed=3)


def test_bootstrap_ci_recomputes_corpus_metrics() -> None:
    preds = ["a", "a", "b", "c", "b", "a", "c", "c"] * 5
    gold = [["a"], ["b"], ["b"], ["c"], ["b"], ["a"], ["a"], ["c"]] * 5
    point = corpus_score("macro_f1", preds, gold)
    low, high = bootstrap_ci("macro_f1", preds, gold, samples=300)
    assert low <= point <= high and low < high <= 1.0
    # The mean of per-example correctness (accuracy) differs from macro-F1; the interval is macro-F1's.
    assert point != pytest.approx(corpus_score("accuracy", preds, gold))
    low_b, high_b = bootstrap_ci("bleu", PREDS * 4, REFS * 4, samples=200)
    assert low_b <= corpus_score("bleu", PREDS * 4, REFS * 4) <= high_b and low_b < high_b
    same = ["the cat is on the mat"] * 5
    assert bootstrap_ci("bleu", same, [[s] for s in same], samples=50) == pytest.approx((1.0, 1.0))
