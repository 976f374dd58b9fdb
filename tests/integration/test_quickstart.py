"""`tailor quickstart --smoke` end to end: packs, data check, the four-way comparison, and commands that work."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

STRATEGIES = ("zero_shot", "few_shot", "p_tuning", "lora")
TAILOR = str(Path(sys.executable).parent / "tailor")
MODEL = "smollm2-135m-instruct"


def _tailor(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    # A wide terminal, so that the leaderboard's cells are not wrapped and can be read back.
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([TAILOR, *args], input=stdin, capture_output=True, text=True, env=env, timeout=1500)


def _command(stdout: str, verb: str) -> list[str]:
    """The printed `tailor <verb> <best>` line, split as a shell would."""
    lines = [line.strip() for line in stdout.splitlines() if f" {verb} " in line and "tailor" in line]
    assert len(lines) == 1, stdout
    return shlex.split(lines[0])


def test_quickstart_smoke_compares_four_strategies_and_prints_working_commands(tmp_path):
    out = tmp_path / "quickstart"
    run = _tailor("quickstart", "--smoke", "--output", str(out))
    assert run.returncode == 0, run.stderr[-4000:]

    board = json.loads((out / "leaderboard.json").read_text(encoding="utf-8"))
    entries = {e["strategy"]: e for e in board["entries"]}
    assert set(entries) == set(STRATEGIES)
    for name in STRATEGIES:
        e = entries[name]
        assert e["status"] == "ok", (name, e.get("error"))
        assert math.isfinite(e["score"]) and 0.0 <= e["score"] <= 1.0, name
        assert e["examples"] == 12 and e["scoring"] == "choice", name
        assert name in run.stdout  # a row of the printed leaderboard
    for name in ("p_tuning", "lora"):
        assert entries[name]["steps"] == 2 and entries[name]["trainable_parameters"] > 0
    assert board["quick"] is True and board["metric"] == "macro_f1"
    assert "macro_f1 on 12 test examples" in run.stdout

    assert (out / "report.html").is_file() and f"report: {out / 'report.html'}" in run.stdout
    best = out / "best"
    manifest = json.loads((best / "specialist.json").read_text(encoding="utf-8"))
    assert manifest["strategy"] == board["best"]["strategy"] in STRATEGIES
    assert entries[board["best"]["strategy"]]["score"] == max(e["score"] for e in entries.values())
    assert f"best specialist: {best} ({board['best']['strategy']} on {MODEL})" in run.stdout

    chat, serve = _command(run.stdout, "chat"), _command(run.stdout, "serve")
    assert chat[1:] == ["chat", str(best)] and serve[1:] == ["serve", str(best)]
    assert chat[0] in ("tailor", TAILOR) and serve[0] == chat[0]
    # the printed chat command opens the best specialist (stdin ends at once, so it loads and exits)
    opened = _tailor(*chat[1:])
    assert opened.returncode == 0, opened.stderr[-2000:]
    assert f"chatting with {best}" in opened.stdout

    # a second run reuses every finished strategy and prints the same best specialist
    results = {name: out / MODEL / name / "result.json" for name in STRATEGIES}
    before = {name: path.stat().st_mtime_ns for name, path in results.items()}
    again = _tailor("quickstart", "--smoke", "--output", str(out))
    assert again.returncode == 0, again.stderr[-4000:]
    assert {name: path.stat().st_mtime_ns for name, path in results.items()} == before
    assert "reusing the result" in again.stderr
    assert _command(again.stdout, "chat") == chat
