"""`tailor compare` on a small real slice (finance tweet sentiment, 3 classes) with the built-in smollm2 model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[2] / "examples/data/sentiment/twitter_financial_news_sentiment"
GENERAL = Path(__file__).resolve().parents[2] / "examples/data/pretraining_text/tiny_shakespeare/input.txt"
STRATEGIES = ("zero_shot", "few_shot", "p_tuning", "lora")
# Two short steps, and the training loop's dev-split loss on one batch only: this test checks the plumbing.
TRAIN = {"max_steps": 2, "batch_size": 4, "eval_max_batches": 1}


def _slice(source: Path, target: Path, rows: int) -> None:
    lines = source.read_text(encoding="utf-8").splitlines()
    target.write_text("\n".join(lines[:rows + 1]) + "\n", encoding="utf-8")


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    _slice(DATA / "train.csv", tmp_path / "train.csv", 120)
    _slice(DATA / "valid.csv", tmp_path / "valid.csv", 24)
    recipe = {
        "task": {"name": "finance-news-sentiment", "instruction": "Classify the sentiment of this financial news tweet.",
                 "answer": "label", "labels": {"0": "bearish", "1": "bullish", "2": "neutral"}, "metric": "macro_f1"},
        "data": {"train": "train.csv", "eval": "valid.csv", "split": {"test": 0.2}},
        "base_models": ["smollm2-135m-instruct"],
        "strategies": {"zero_shot": {}, "few_shot": {"k": 2, "selection": "balanced"},
                       "p_tuning": {"train": {**TRAIN, "lr": 3.0e-3}, "prompt": {"virtual_tokens": 8}},
                       "lora": {"train": TRAIN, "lora": {"r": 4, "alpha": 8}}},
        "eval": {"limit": 12, "batch_size": 6, "max_new_tokens": 4},
        "retention": {"text": str(GENERAL), "max_tokens": 256, "margin": 0.1},
        "seed": 0,
    }
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def test_compare_smollm2_prompting_and_training(recipe, tmp_path):
    from tailorlm.cli import main

    out = tmp_path / "out"
    assert main(["compare", str(recipe), "--output", str(out), "--set", "strategies.lora.train.lr=1e-3"]) == 0
    board = json.loads((out / "leaderboard.json").read_text(encoding="utf-8"))
    entries = {e["strategy"]: e for e in board["entries"]}
    assert set(entries) == set(STRATEGIES)
    for name in STRATEGIES:
        e = entries[name]
        assert e["status"] == "ok", (name, e.get("error"))
        assert math.isfinite(e["score"]) and 0.0 <= e["ci"][0] <= e["score"] <= e["ci"][1] <= 1.0, name
        assert e["examples"] == 12 and e["seconds_per_example"] > 0 and e["peak_memory_mb"] > 0, name
    for name in ("p_tuning", "lora"):
        e = entries[name]
        assert e["steps"] == 2 and e["trainable_parameters"] > 0 and len(e["loss_curve"]) == 2
        assert e["retention"]["before"] > 1 and math.isfinite(e["retention"]["after"])
        assert e["retention"]["flagged"] == (e["retention"]["after"] > e["retention"]["before"] * 1.1)
    assert entries["lora"]["trainable_parameters"] < entries["lora"]["total_parameters"]
    assert json.loads((out / "smollm2-135m-instruct" / "lora" / "train_config.json").read_text())["train"]["lr"] == 1e-3
    assert entries["zero_shot"]["trainable_parameters"] == 0 and entries["zero_shot"]["disk_mb"] < 1
    best = board["best"]
    assert best["strategy"] in STRATEGIES and (out / "best" / "specialist.json").is_file()
    assert entries[best["strategy"]]["score"] == max(e["score"] for e in entries.values())
    manifest = json.loads((out / "best" / "specialist.json").read_text(encoding="utf-8"))
    assert manifest["strategy"] == best["strategy"]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="plot-loss"' in page and page.count("<polyline") == 2

    # a second run reuses every finished strategy: nothing is trained or evaluated again
    before = {name: (out / "smollm2-135m-instruct" / name / "result.json").stat().st_mtime_ns for name in STRATEGIES}
    assert main(["compare", str(recipe), "--output", str(out), "--set", "strategies.lora.train.lr=1e-3"]) == 0
    after = {name: (out / "smollm2-135m-instruct" / name / "result.json").stat().st_mtime_ns for name in STRATEGIES}
    assert before == after
