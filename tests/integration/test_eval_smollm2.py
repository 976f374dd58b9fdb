"""`tailor eval` for real: smollm2-135m-instruct zero-shot on 20 finance tweets (3 sentiment classes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from tailorlm.cli import main
from tailorlm.tasks.metrics import corpus_score

pytestmark = pytest.mark.integration
FINANCE = Path(__file__).resolve().parents[2] / "examples" / "data" / "sentiment" / "twitter_financial_news_sentiment"


def test_eval_zero_shot_on_finance_tweets(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "finance.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": {"name": "finance-news-sentiment", "instruction": "Classify the sentiment of this financial news tweet "
                 "for investors.", "answer": "label", "labels": {"0": "bearish", "1": "bullish", "2": "neutral"},
                 "metric": "macro_f1"},
        "data": {"train": str(FINANCE / "train.csv"), "test": str(FINANCE / "valid.csv"), "split": {}},
    }), encoding="utf-8")
    out = tmp_path / "eval"

    code = main(["eval", "smollm2-135m-instruct", "--task", str(recipe), "--limit", "20", "--output", str(out),
                 "--no-progress"])
    printed = capsys.readouterr().out

    assert code == 0, printed
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert metrics["examples"] == len(rows) == 20 and metrics["scoring"] == "choice"
    values = [metrics["score"], metrics["ci_low"], metrics["ci_high"], metrics["seconds_per_example"],
              metrics["tokens_per_second"], metrics["extra"]["generate"]["score"]]
    assert all(math.isfinite(v) for v in values), metrics
    assert 0.0 <= metrics["ci_low"] <= metrics["score"] <= metrics["ci_high"] <= 1.0
    assert metrics["score"] == pytest.approx(corpus_score("macro_f1", [r["prediction"] for r in rows],
                                                          [r["references"] for r in rows]))
    assert metrics["seconds_per_example"] > 0 and metrics["tokens_per_second"] > 0
    # Constrained choice always names a label; every log-probability is a real number below zero.
    assert all(r["prediction"] in ("0", "1", "2") for r in rows)
    assert all(math.isfinite(lp) and lp < 0 for r in rows for lp in r["logprobs"].values())
    # Free generation is reported beside it: the raw answer and the label it was parsed as ("" when none).
    assert all(isinstance(r["output"], str) and r["generated"] in ("", "0", "1", "2") for r in rows)
    assert metrics["extra"]["generate"]["parsed"] == sum(1 for r in rows if r["generated"]) / 20
    assert f"macro_f1 {metrics['score']:.4f}" in printed
