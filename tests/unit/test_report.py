"""The comparison report: recommendation, per-class results, disagreements, and the self-contained HTML page."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from tailorlm.evaluation import report

LABELS = {"0": "bearish", "1": "bullish", "2": "neutral"}


def entry(strategy, score, ci, *, train=0.0, latency=0.01, examples=100, model="m", **extra):
    return {"model": model, "strategy": strategy, "status": "ok", "error": None, "score": score, "ci": list(ci),
            "examples": examples, "train_seconds": train, "seconds_per_example": latency, "scoring": "choice",
            "trainable_parameters": 0, "peak_memory_mb": 500.0, "disk_mb": 0.01, **extra}


def sample_board() -> dict:
    entries = [
        entry("zero_shot", 0.40, (0.30, 0.50)),
        entry("few_shot", 0.62, (0.52, 0.71), latency=0.02),
        entry("lora", 0.66, (0.58, 0.74), train=120.0, trainable_parameters=1_843_200,
              loss_curve=[[1, 2.5], [2, 1.9], [3, 1.2]], retention={"before": 20.0, "after": 25.0, "change": 0.25,
                                                                      "margin": 0.1, "flagged": True}),
        entry("p_tuning", 0.55, (0.45, 0.65), train=90.0, loss_curve=[[1, 3.0], [2, 2.7], [3, 2.6]]),
        {"model": "m", "strategy": "full", "status": "failed", "error": "out of memory <boom>"},
    ]
    for e in entries[:4]:
        e["per_class"] = {"bearish": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 10},
                          "bullish": {"precision": 0.7, "recall": 0.6, "f1": 0.646, "support": 12}}
    board = {"task": "news <sentiment> & co", "metric": "macro_f1", "higher_is_better": True, "answer": "label",
             "labels": LABELS, "split": "test", "examples": 100, "seed": 0, "entries": entries,
             "disagreements": [{"id": "test-3", "input": "<script>alert(1)</script> $AAPL up",
                                "reference": "bullish", "predictions": {"zero_shot (m)": "bearish", "lora (m)": "bullish"}}]}
    board["recommendation"] = report.recommend(board)
    return board


def test_recommend_names_best_and_the_cheaper_strategy_inside_its_ci():
    verdict = report.recommend(sample_board())
    assert verdict["best"] == {"model": "m", "strategy": "lora"}
    # few_shot (0.62) lies inside lora's CI [0.58, 0.74] and costs 2 s against 121 s; p_tuning (0.55) does not
    assert verdict["cheaper"] == {"model": "m", "strategy": "few_shot"}
    assert "lora" in verdict["text"] and "few_shot scores 0.620" in verdict["text"]
    assert "Forgetting: lora (m)" in verdict["text"]


def test_recommend_without_a_cheaper_one_inside_the_ci_says_so():
    board = {"metric": "accuracy", "entries": [entry("lora", 0.9, (0.85, 0.95), train=10),
                                               entry("zero_shot", 0.5, (0.4, 0.6))]}
    verdict = report.recommend(board)
    assert verdict["best"]["strategy"] == "lora" and verdict["cheaper"] is None
    assert "No cheaper strategy" in verdict["text"] and "Also within" not in verdict["text"]
    board["entries"].append(entry("full", 0.88, (0.8, 0.95), train=500))
    assert report.recommend(board)["text"].endswith("but costlier: full.")


def test_recommend_lower_is_better_and_no_finished_entry():
    board = {"metric": "perplexity", "higher_is_better": False,
             "entries": [entry("lora", 8.0, (7.5, 8.6), train=50), entry("zero_shot", 8.4, (8.0, 9.0)),
                         entry("few_shot", 12.0, (11.0, 13.0))]}
    verdict = report.recommend(board)
    assert verdict["best"]["strategy"] == "lora" and verdict["cheaper"]["strategy"] == "zero_shot"
    none = report.recommend({"entries": [{"model": "m", "strategy": "lora", "status": "failed", "error": "x"}]})
    assert none["best"] is None and "No strategy finished" in none["text"]


def test_best_ties_go_to_the_cheaper_entry():
    entries = [entry("lora", 0.7, (0.6, 0.8), train=100), entry("few_shot", 0.7, (0.6, 0.8))]
    assert report.pick_best(entries)["strategy"] == "few_shot"


def test_per_class_results_match_hand_computed_values():
    rows = [{"reference": "0", "prediction": "bearish"}, {"reference": "0", "prediction": "bullish"},
            {"references": ["1"], "prediction": "1"}, {"reference": "2", "prediction": None}]
    stats = report.per_class_results(rows, LABELS)
    assert stats["bearish"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert stats["bullish"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert stats["neutral"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_per_slice_results_for_text_tasks_split_by_input_length():
    rows = [{"input": "x" * n, "score": s} for n, s in [(1, 1.0), (2, 1.0), (10, 0.5), (11, 0.0), (50, 0.0), (60, 0.0)]]
    stats = report.per_class_results(rows, None)
    assert stats == {"short inputs": {"score": 1.0, "support": 2}, "medium inputs": {"score": 0.25, "support": 2},
                     "long inputs": {"score": 0.0, "support": 2}}


def test_disagreements_keep_only_examples_with_different_answers():
    a = [{"id": "t-0", "input": "x", "reference": "0", "prediction": "bearish"},
         {"id": "t-1", "input": "y", "reference": "1", "prediction": "bullish"}]
    b = [{"id": "t-0", "input": "x", "reference": "0", "prediction": "0"},
         {"id": "t-1", "input": "y", "reference": "1", "prediction": "neutral"}]
    found = report.find_disagreements({"zero_shot": a, "lora": b}, LABELS)
    assert found == [{"id": "t-1", "input": "y", "reference": "bullish",
                      "predictions": {"zero_shot": "bullish", "lora": "neutral"}}]


def _svgs(page: str) -> dict[str, ET.Element]:
    """Every inline SVG of the page, parsed as XML (which also checks that it is well formed)."""
    found = {}
    for match in re.finditer(r"<svg id=\"([^\"]+)\".*?</svg>", page, flags=re.S):
        found[match.group(1)] = ET.fromstring(match.group(0))
    return found


def test_report_has_every_section_and_well_formed_plots():
    page = report.render_report(sample_board())
    for ident in ("leaderboard", "plot-quality-cost", "plot-loss", "per-class", "plot-per-class", "disagreements",
                  "recommendation"):
        assert f'id="{ident}"' in page, ident
    svgs = _svgs(page)
    ns = "{http://www.w3.org/2000/svg}"
    assert len(svgs["plot-quality-cost"].findall(f"{ns}circle")) == 4  # the four finished entries
    assert len(svgs["plot-loss"].findall(f"{ns}polyline")) == 2  # lora and p_tuning trained
    assert len(svgs["plot-per-class"].findall(f"{ns}rect")) == 2 * 4 + 4  # 2 classes x 4 entries, 4 legend swatches
    leaderboard = page[page.index('id="leaderboard"'):page.index("</table>", page.index('id="leaderboard"'))]
    assert leaderboard.count("<tr") == 1 + 5
    assert re.search(r"<tr class=\"best\"><td>lora</td>", leaderboard)
    assert "0.660 (0.580–0.740)" in leaderboard and "1.84M" in leaderboard and "2.0 min" in leaderboard


def test_report_is_self_contained_and_escapes_user_text():
    page = report.render_report(sample_board())
    assert "<script" not in page and "src=" not in page and "href=" not in page and "@import" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "news &lt;sentiment&gt; &amp; co" in page
    assert "out of memory &lt;boom&gt;" in page


def test_ci_bars_span_the_interval_around_the_point():
    svg = _svgs(report.quality_cost_plot({"metric": "accuracy", "entries": [entry("a", 0.5, (0.4, 0.6)),
                                                                           entry("b", 0.8, (0.7, 0.9), train=5)]}))
    ns = "{http://www.w3.org/2000/svg}"
    root = svg["plot-quality-cost"]
    circles = root.findall(f"{ns}circle")
    lines = [l for l in root.findall(f"{ns}line") if l.get("x1") == l.get("x2") and l.get("stroke") != "#555"]
    for circle in circles:
        bar = next(l for l in lines if l.get("x1") == circle.get("cx"))
        low_y, high_y = float(bar.get("y1")), float(bar.get("y2"))
        assert high_y < float(circle.get("cy")) < low_y  # SVG y grows downwards
    assert float(circles[1].get("cy")) < float(circles[0].get("cy"))  # the better score is drawn higher
    assert float(circles[1].get("cx")) > float(circles[0].get("cx"))  # and the costlier one further right


def test_empty_plots_still_render_with_a_message():
    page = report.render_report({"task": "t", "metric": "accuracy", "entries": [
        {"model": "m", "strategy": "lora", "status": "failed", "error": "boom"}]})
    svgs = _svgs(page)
    assert set(svgs) == {"plot-quality-cost", "plot-loss", "plot-per-class"}
    assert "no finished strategy" in page and "No strategy finished" in page
