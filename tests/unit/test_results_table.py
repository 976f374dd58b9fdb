"""scripts/results_table.py: the recipes' results table, from synthetic run folders with the real field names."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "results_table.py"


@pytest.fixture(scope="module")
def results_table():
    spec = importlib.util.spec_from_file_location("results_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["results_table"] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("results_table", None)


def entry(strategy, score, ci, fit_seconds, seconds_per_example, *, model="smollm2-135m-instruct", examples=60):
    """A leaderboard entry as build_leaderboard writes it (the fields the table reads, and a few others)."""
    return {"model": model, "strategy": strategy, "status": "ok", "error": None, "settings": {},
            "fit_seconds": fit_seconds, "trainable_parameters": 0, "train_seconds": fit_seconds, "metric": "macro_f1",
            "score": score, "ci": ci, "examples": examples, "scoring": "choice",
            "seconds_per_example": seconds_per_example, "tokens_per_second": 38.0, "extra": {},
            "peak_memory_mb": 1369.0, "specialist": f"{model}/{strategy}/specialist", "disk_mb": 0.001}


def board(entries, best, *, notes=(), quick=True, task="finance-news-sentiment", metric="macro_f1"):
    return {"task": task, "metric": metric, "higher_is_better": True, "answer": "label",
            "labels": {"0": "bearish", "1": "bullish", "2": "neutral"}, "split": "test", "examples": 60, "seed": 0,
            "quick": quick, "recipe": "recipes/finance/compare.yaml", "models": sorted({e["model"] for e in entries}),
            "notes": list(notes), "entries": entries, "disagreements": [],
            "recommendation": {"best": best, "cheaper": None, "text": "..."},
            "best": None if best is None else {**best, "folder": "best",
                                               "specialist": f"{best['model']}/{best['strategy']}/specialist"}}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def compare_recipe(root: Path, name: str, output: str, task: str = "finance-news-sentiment") -> None:
    write(root / "recipes" / name, f"# tailor compare recipes/{name} --quick\n#\n# what it does\n"
                                   f"task: {{name: {task}, answer: label, metric: macro_f1}}\n"
                                   f"base_models: [smollm2-135m-instruct]\noutput: {output}\n")


README = "# Recipes\n\nIntro kept.\n\n<!-- results:start -->\nold table\n<!-- results:end -->\n\n## Finance\n\n" \
         "<!-- recipe list -->\n"


@pytest.fixture
def root(tmp_path):
    write(tmp_path / "recipes" / "README.md", README)
    # A finished comparison: zero-shot, the winner and a failed strategy (no fit_seconds: it failed while fitting).
    compare_recipe(tmp_path, "finance/compare.yaml", "runs/finance-compare")
    failed = {"model": "smollm2-135m-instruct", "strategy": "lora", "status": "failed", "error": "boom",
              "settings": {}}
    write(tmp_path / "runs/finance-compare/leaderboard.json", json.dumps(board(
        [entry("zero_shot", 0.19607843137254902, [0.15384615384615385, 0.23200093501636268], 0.5, 0.25),
         entry("p_tuning", 0.4063319217584191, [0.2782452795933188, 0.5290050774070959], 100.25, 1.0), failed],
        {"model": "smollm2-135m-instruct", "strategy": "p_tuning"})))
    # An encoder-only comparison: no zero-shot entry, and the note compare writes for an encoder.
    compare_recipe(tmp_path, "finance/encoder.yaml", "runs/encoder")
    write(tmp_path / "runs/encoder/leaderboard.json", json.dumps(board(
        [entry("lora", 0.5, [0.25, 0.75], 30.0, 0.05, model="minilm-l6")],
        {"model": "minilm-l6", "strategy": "lora"},
        notes=["minilm-l6 is an encoder: prompting and RAG need a generative model, so only trained "
               "classification heads are compared"])))
    # A comparison that was never run (no leaderboard.json in its output folder).
    compare_recipe(tmp_path, "legal/hearsay.yaml", "runs/hearsay", task="legalbench-hearsay")
    # A finished --quick pre-training run, in the folder its quick: section names: manifest, metrics.jsonl with a
    # resumed step, and the final checkpoint.
    write(tmp_path / "recipes/pretraining/tiny.yaml",
          "# tailor pretrain recipes/pretraining/tiny.yaml --quick   (without --quick: the full run)\n"
          "model: {architecture: llama, layers: 2, hidden_size: 64}\nobjective: pretrain\nmethod: full\n"
          "output: runs/tiny\nquick: {output: runs/tiny-quick, train: {max_steps: 20}}\n")
    run = tmp_path / "runs/tiny-quick"
    write(run / "specialist.json", json.dumps({"base_model": "new llama (2 layers, hidden 64)", "strategy": "full",
                                               "objective": "pretrain", "steps": 20, "metrics": {}}))
    metrics = [{"time": 1.0, "step": 1, "loss": 9.0}, {"time": 2.0, "step": 5, "eval_loss": 8.5},
               {"time": 3.0, "step": 10, "eval_loss": 7.9}, {"time": 4.0, "step": 10, "eval_loss": 7.25},
               {"time": 5.0, "step": 20, "eval_loss": 6.123456}]
    write(run / "metrics.jsonl", "\n".join(json.dumps(m) for m in metrics) + "\n")
    write(run / "checkpoints/step-0000010/state.json",
          json.dumps({"train_state": {"step": 10, "elapsed_seconds": 5.0}}))
    write(run / "checkpoints/step-0000020/state.json",
          json.dumps({"train_state": {"step": 20, "elapsed_seconds": 12.4}}))
    # A pre-training recipe with no run yet, and a recipe that is not a compare or train command.
    write(tmp_path / "recipes/pretraining/gpt2.yaml",
          "# tailor pretrain recipes/pretraining/gpt2.yaml\nmodel: {architecture: gpt2, layers: 4, hidden_size: 256}\n"
          "objective: pretrain\nmethod: full\noutput: runs/gpt2\n")
    write(tmp_path / "recipes/misc/chat.yaml", "# tailor chat something\noutput: runs/chat\n")
    # scripts/run_recipes.py's record: the encoder comparison's measured wall time and hardware; a failed command's
    # record is not used.
    write(tmp_path / "runs/recipe_times.json", json.dumps({
        "recipes/finance/encoder.yaml": {"command": "tailor compare recipes/finance/encoder.yaml --quick",
                                         "returncode": 0, "wall_seconds": 95.2,
                                         "hardware": "NVIDIA H100, 16 CPU cores"},
        "recipes/legal/hearsay.yaml": {"command": "tailor compare recipes/legal/hearsay.yaml --quick",
                                       "returncode": 1, "wall_seconds": 3.0, "hardware": "NVIDIA H100, 16 CPU cores"}}))
    return tmp_path


def rows(text: str, start: str) -> dict[str, list[str]]:
    """Table rows whose first cell starts with `start`, keyed by that cell, as lists of cells."""
    found = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| [") and cells[0].startswith(start):
            found[cells[0]] = cells
    return found


def test_comparison_rows(results_table, root):
    assert results_table.main(["--root", str(root)]) == 0
    text = (root / "recipes/README.md").read_text(encoding="utf-8")
    table = rows(text, "[")
    assert table["[finance/compare.yaml](finance/compare.yaml)"][1:] == [
        "finance-news-sentiment (macro_f1)", "0.196", "0.406 (0.278–0.529)", "p_tuning (smollm2-135m-instruct)",
        "176 s (2.9 min) [1]", "60", "2-core CPU, no GPU"]  # 0.5 + 0.25 x 60 + 100.25 + 1.0 x 60 = 175.75 s
    assert "- [1] Not measured by scripts/run_recipes.py: the sum over the strategies of fitting" in text
    # Measured by run_recipes.py: the command's wall time and hardware from runs/recipe_times.json.
    encoder = table["[finance/encoder.yaml](finance/encoder.yaml)"]
    assert encoder[2:] == ["— [2]", "0.500 (0.250–0.750)", "lora (minilm-l6)", "95 s (1.6 min)", "60",
                           "NVIDIA H100, 16 CPU cores"]
    assert "- [2] An encoder-only comparison" in text


def test_not_run_rows_name_the_command(results_table, root):
    results_table.main(["--root", str(root)])
    table = rows((root / "recipes/README.md").read_text(encoding="utf-8"), "[")
    assert table["[legal/hearsay.yaml](legal/hearsay.yaml)"][1:] == [
        "legalbench-hearsay (macro_f1)", "not run: `tailor compare recipes/legal/hearsay.yaml --quick`",
        "—", "—", "—", "—", "—"]
    assert table["[pretraining/gpt2.yaml](pretraining/gpt2.yaml)"][1:3] == [
        "pretrain, full (new gpt2 (4 layers, hidden 256))", "not run: `tailor pretrain recipes/pretraining/gpt2.yaml`"]


def test_pretrain_row(results_table, root):
    results_table.main(["--root", str(root)])
    text = (root / "recipes/README.md").read_text(encoding="utf-8")
    # The latest record of a step wins (step 10 was evaluated twice, as after a resume); time from the final checkpoint.
    assert rows(text, "[pretraining/tiny")["[pretraining/tiny.yaml](pretraining/tiny.yaml)"][1:] == [
        "pretrain, full (new llama (2 layers, hidden 64))", "8.500 (step 5) → 6.123 (step 20)", "20", "12 s [1]",
        "2-core CPU, no GPU"]
    assert "- [1] Not measured by scripts/run_recipes.py: the optimizer steps only" in text
    assert "[misc/chat.yaml](misc/chat.yaml)" in text.split("Not in the tables")[1]


def test_text_outside_the_markers_is_kept(results_table, root):
    results_table.main(["--root", str(root)])
    text = (root / "recipes/README.md").read_text(encoding="utf-8")
    before, rest = text.split("<!-- results:start -->\n")
    table, after = rest.split("<!-- results:end -->")
    assert before == "# Recipes\n\nIntro kept.\n\n"
    assert after == "\n\n## Finance\n\n<!-- recipe list -->\n"
    assert "old table" not in table and table.endswith("\n")
    results_table.main(["--root", str(root)])  # a second run changes nothing
    assert (root / "recipes/README.md").read_text(encoding="utf-8") == text


def test_check_fails_until_the_table_is_written(results_table, root, capsys):
    assert results_table.main(["--root", str(root), "--check"]) == 1
    assert "not up to date" in capsys.readouterr().err
    assert "old table" in (root / "recipes/README.md").read_text(encoding="utf-8")  # --check writes nothing
    results_table.main(["--root", str(root)])
    assert results_table.main(["--root", str(root), "--check"]) == 0
    write(root / "runs/hearsay/leaderboard.json", json.dumps(board(
        [entry("zero_shot", 0.7, [0.6, 0.8], 0.1, 0.1)], {"model": "smollm2-135m-instruct", "strategy": "zero_shot"},
        task="legalbench-hearsay", metric="accuracy")))
    assert results_table.main(["--root", str(root), "--check"]) == 1  # a new run makes the table stale


def test_missing_markers_is_a_clear_error(results_table, root):
    write(root / "recipes/README.md", "# Recipes\n")
    with pytest.raises(SystemExit, match="results:start"):
        results_table.main(["--root", str(root)])


def test_a_row_whose_run_folder_is_gone_is_kept_as_the_earlier_run_wrote_it(results_table, root):
    import shutil

    results_table.main(["--root", str(root)])
    before = rows((root / "recipes/README.md").read_text(encoding="utf-8"), "[")
    shutil.rmtree(root / "runs/finance-compare")  # as in a fresh clone: run folders are not in git
    results_table.main(["--root", str(root)])
    text = (root / "recipes/README.md").read_text(encoding="utf-8")
    after = rows(text, "[")
    kept = after["[finance/compare.yaml](finance/compare.yaml) [1]"]
    old = before["[finance/compare.yaml](finance/compare.yaml)"]
    # Same numbers; its wall-time footnote keeps its text under its new number; the link cell says where it is from.
    assert kept[1:5] == old[1:5] and kept[6:] == old[6:] and kept[5] == "176 s (2.9 min) [2]"
    assert "- [1] From an earlier run whose folder is not in this checkout" in text
    assert "- [2] Not measured by scripts/run_recipes.py: the sum over the strategies of fitting" in text
    encoder = "[finance/encoder.yaml](finance/encoder.yaml)"
    assert after[encoder] == [*before[encoder][:2], "— [3]", *before[encoder][3:]]  # rebuilt from its run
    assert after["[legal/hearsay.yaml](legal/hearsay.yaml)"][2].startswith("not run:")  # never run: still not run
    results_table.main(["--root", str(root)])  # kept rows are stable: no second marker, no new notes
    assert (root / "recipes/README.md").read_text(encoding="utf-8") == text
    assert results_table.main(["--root", str(root), "--check"]) == 0
