"""The README's two commands are the contract with new users; CI must run the same test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("```bash")
    end = lines.index("```", start + 1)
    return [line for line in lines[start + 1 : end] if line.strip() and not line.startswith("#")]


def test_readme_opens_with_exactly_two_commands():
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("tailor quickstart")
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert readme_commands()[1] in ci.splitlines()


def test_torch_stays_pinned_to_a_range_that_admits_the_cpu_build():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"torch>=2.4,<=2.13.0"' in pyproject


def test_help_lists_every_verb_on_one_line(capsys):
    from tailorlm.cli import VERBS, main

    import contextlib

    with contextlib.suppress(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for verb, (_, help_line) in VERBS.items():
        assert any(line.split() and line.split()[0] == verb and help_line in line for line in out.splitlines()), verb
