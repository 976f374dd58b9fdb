"""Every shipped recipe opens with the command that runs it, reads without errors (full and --quick), and names
data that ships with the project; nothing here loads a model."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tailorlm.config import load_yaml

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
COMPARE = [r for r in RECIPES if "task" in load_yaml(r)]
TRAIN = [r for r in RECIPES if r not in COMPARE]


def first_command(recipe: Path) -> list[str]:
    line = recipe.read_text(encoding="utf-8").splitlines()[0]
    assert line.startswith("# tailor "), f"{recipe}: the first line must be the command that runs it"
    return shlex.split(line[2:].split("   (")[0])


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_there_is_a_recipe_for_every_use_case_and_application():
    names = {_name(r) for r in RECIPES}
    for expected in ("recipes/healthcare/medquad_assistant_compare.yaml", "recipes/healthcare/pubmedqa_compare.yaml",
                     "recipes/legal/hearsay_compare.yaml", "recipes/legal/abercrombie_compare.yaml",
                     "recipes/finance/news_sentiment_encoder_vs_instruct.yaml",
                     "recipes/education/gsm8k_tutor_compare.yaml",
                     "recipes/applications/chatbot_self_instruct_compare.yaml",
                     "recipes/applications/xquad_extractive_qa_compare.yaml",
                     "recipes/applications/scitldr_summarization_compare.yaml",
                     "recipes/applications/translation_en_de_compare.yaml",
                     "recipes/applications/review_sentiment_compare.yaml",
                     "recipes/applications/humaneval_codegen_compare.yaml",
                     "recipes/pretraining/shakespeare_llama_tiny.yaml"):
        assert expected in names


@pytest.mark.parametrize("recipe", RECIPES, ids=_name)
def test_the_first_line_runs_this_recipe_with_a_known_verb_and_flags(recipe):
    from tailorlm.cli import VERBS, _parser_for

    words = first_command(recipe)
    assert words[0] == "tailor" and words[1] in VERBS
    assert _name(recipe) in words or words[1] == "quickstart"  # the quickstart's recipe is `tailor quickstart`'s
    parser = _parser_for(words[1:])
    try:
        parser.parse_args(words[1:])
    except SystemExit as err:  # argparse refuses an unknown flag by exiting
        pytest.fail(f"{recipe}: {' '.join(words)} does not parse ({err})")
    if words[1] == "compare":
        assert "--quick" in words, "compare recipes open with their --quick command (minutes on a 2-core CPU)"


@pytest.mark.parametrize("recipe", COMPARE, ids=_name)
@pytest.mark.parametrize("quick", [False, True])
def test_a_comparison_recipe_reads_and_every_split_has_examples(recipe, quick):
    from tailorlm.evaluation.compare import load_plan

    plan = load_plan(recipe, quick=quick)
    sizes = {split: len(plan.task.examples(split)) for split in ("train", "eval", "test")}
    assert all(sizes.values()), sizes
    assert plan.output.name and plan.models
    if quick:  # a quick run stays minutes on a 2-core CPU: at most 100 test examples and 60 steps per strategy
        assert plan.quick is not None
        assert min(plan.eval.get("limit") or sizes["test"], sizes["test"]) <= 100
        assert (plan.quick.get("train") or {}).get("max_steps", 0) <= 60
    for folder in plan.corpus:
        assert Path(folder).exists(), f"{recipe}: corpus {folder} does not exist"


@pytest.mark.parametrize("recipe", TRAIN, ids=_name)
def test_a_training_recipe_resolves_full_and_quick(recipe):
    from tailorlm.training.config import resolve_config

    config = resolve_config(recipe)
    # Every training recipe opens with its --quick command: a bounded run, minutes on a 2-core CPU.
    assert "--quick" in first_command(recipe) and "quick" in load_yaml(recipe)
    quick = resolve_config(recipe, quick=True)
    assert quick.train.max_steps is not None and quick.train.max_steps <= 60
    assert config.train.max_steps is None or quick.train.max_steps <= config.train.max_steps
    assert quick.output != config.output  # a quick run does not land in the full run's folder
    train = config.data["train"]
    for path in [train] if isinstance(train, str) else train:
        full = (Path(config.base_dir) / path).resolve()
        if "runs" not in full.parts:  # data made by an earlier command (documented in the recipe) lives under runs/
            assert full.exists(), f"{recipe}: data.train {full} does not exist"
