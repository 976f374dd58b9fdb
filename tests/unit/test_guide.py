"""docs/guide.md stays true: every `tailor` command in its bash blocks parses with the real CLI, and every recipe in
its yaml blocks loads with the recipe reader that `tailor compare` uses. No model is loaded."""

from __future__ import annotations

import argparse
import itertools
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guide.md"

# The guide's follow-along files -> files of examples/data with the same layout, so its recipes load in a test.
STAND_INS = {
    "news.csv": "examples/data/sentiment/twitter_financial_news_sentiment/train.csv",
    "faq.jsonl": "examples/data/medical_qa/medquad/medquad_cdc.jsonl",
    "docs/": "examples/data/medical_qa/medquad",
}
# What a new user needs from start to finish; the guide must show each of these verbs at work.
VERBS_SHOWN = {"data", "models", "estimate", "compare", "train", "eval", "chat", "serve", "export", "rag"}
TAILOR_LINE = re.compile(r"^\s*(?:[A-Za-z_][A-Za-z0-9_]*=\S+\s+)*(?:\S*/)?tailor(?:\s|$)")


def fenced_blocks(text: str, language: str) -> list[str]:
    """The bodies of the ```language blocks of a Markdown text, in order."""
    return re.findall(rf"^```{language}[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.MULTILINE | re.DOTALL)


def tailor_commands(text: str) -> list[list[str]]:
    """The argument lists (without `tailor` itself) of the `tailor` command lines in the bash blocks of a Markdown
    text; continued lines are joined, comments and anything from a redirection or pipe on dropped, leading
    VAR=value assignments skipped."""
    commands = []
    for block in fenced_blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if not TAILOR_LINE.match(line):
                continue
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            tokens = list(itertools.takewhile(lambda token: not set(token) <= set(lexer.punctuation_chars), lexer))
            while "=" in tokens[0] and not tokens[0].startswith("-"):
                tokens.pop(0)
            commands.append(tokens[1:])
    return commands


def leaf_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser of the verb (and sub-command, e.g. `data check`) that argv runs; fails on an unknown one."""
    from tailorlm.cli import _parser_for

    parser, path = _parser_for(argv), ["tailor"]
    for token in argv:
        if token.startswith("-"):
            continue
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None:
            break
        assert token in sub.choices, f"`{' '.join(path)}` has no command {token!r}; it has {', '.join(sub.choices)}"
        parser = sub.choices[token]
        path.append(token)
    return parser


def flags_used(argv: list[str]) -> list[str]:
    """The option names an argument list uses (`--set` of `--set=k=v`), not negative numbers given as values."""
    return [token.split("=", 1)[0] for token in argv
            if token.startswith("-") and len(token) > 1 and not re.fullmatch(r"-\d+(\.\d+)?", token)]


GUIDE_TEXT = GUIDE.read_text(encoding="utf-8")
COMMANDS = tailor_commands(GUIDE_TEXT)
RECIPES = fenced_blocks(GUIDE_TEXT, "yaml")


def test_guide_shows_every_step_from_data_to_serving():
    shown = {argv[0] for argv in COMMANDS if argv}
    assert VERBS_SHOWN <= shown, f"the guide shows no `tailor {'`, `tailor '.join(sorted(VERBS_SHOWN - shown))}`"
    assert len(RECIPES) >= 2, "the guide should hold a label recipe and a question-answer recipe"


def test_readme_links_to_the_guide():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/guide.md)" in readme


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(argv)[:60] for argv in COMMANDS])
def test_guide_command_parses(argv, capsys):
    parser = leaf_parser(argv)
    known = {option for action in parser._actions for option in action.option_strings}
    for flag in flags_used(argv):
        # exact names only: argparse would also take an abbreviation such as --max-step
        assert flag in known, f"`{parser.prog}` has no flag {flag}; it has {', '.join(sorted(known))}"
    from tailorlm.cli import _parser_for

    try:
        _parser_for(argv).parse_args(argv)  # positionals, required flags, choices and value types
    except SystemExit:
        pytest.fail(f"`tailor {' '.join(argv)}` does not parse: {capsys.readouterr().err.strip()}")


def _with_stand_ins(recipe: dict, where: Path) -> dict:
    """The recipe with its data and corpus paths pointing at examples/data (absolute, so it loads from anywhere)."""

    def swap(value):
        if isinstance(value, list):
            return [swap(v) for v in value]
        assert value in STAND_INS, f"recipe path {value!r} has no stand-in in examples/data; add one to STAND_INS"
        return str(ROOT / STAND_INS[value])

    recipe = dict(recipe)
    recipe["data"] = {k: swap(v) if k in ("train", "eval", "test") else v for k, v in recipe["data"].items()}
    if "corpus" in recipe:
        recipe["corpus"] = swap(recipe["corpus"])
    recipe["output"] = str(where / "runs")
    return recipe


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
@pytest.mark.parametrize("block", RECIPES, ids=[f"recipe{i}" for i in range(len(RECIPES))])
def test_guide_recipe_loads(block, quick, tmp_path):
    from tailorlm.evaluation.compare import load_plan

    recipe = yaml.safe_load(block)
    assert isinstance(recipe, dict) and "task" in recipe, "every yaml block of the guide is a whole compare recipe"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_with_stand_ins(recipe, tmp_path)), encoding="utf-8")
    plan = load_plan(path, quick=quick)
    assert plan.models == recipe["base_models"]
    assert set(plan.strategies or {}) == set(recipe.get("strategies") or {})
    splits = plan.task.data.load_splits()
    assert set(splits) == {"train", "eval", "test"}, "the recipe should give (or carve) train, eval and test splits"
    assert splits["train"].kind == ("classification" if plan.task.answer == "label" else "chat")


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_guide_links_to_readme_sections_that_exist():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    prose = re.sub(r"^```.*?^```", "", readme, flags=re.MULTILINE | re.DOTALL)  # a '# comment' in code is no heading
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", prose, flags=re.MULTILINE)}
    links = re.findall(r"\]\(\.\./README\.md#([^)]+)\)", GUIDE_TEXT)
    assert links, "the guide links to the README sections with the details"
    assert set(links) <= anchors, f"README has no section for #{', #'.join(sorted(set(links) - anchors))}"
