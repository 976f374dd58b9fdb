"""The code sandbox: good programs pass; network, outside writes, endless loops and memory hogs fail safely."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tailorlm.tasks.metrics import corpus_score
from tailorlm.tasks.parsing import extract_code
from tailorlm.tasks.sandbox import SandboxResult, run_tests, score_code

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox uses POSIX resource limits")


def test_a_passing_program_passes_and_its_folder_is_removed() -> None:
    result = run_tests("import os\nprint('cwd', os.getcwd())\ndef f(x):\n    return x + 1\nassert f(1) == 2\n")
    assert result == SandboxResult(True, "passed", result.seconds, result.output)
    folder = re.search(r"cwd (\S+)", result.output).group(1)
    assert "tailorlm-sandbox-" in folder
    assert not os.path.exists(folder)


def test_a_failing_assertion_fails_with_its_message() -> None:
    assert run_tests("assert 1 + 1 == 3\n").reason == "AssertionError"
    result = run_tests("def f():\n    return 2\nassert f() == 3, 'f() should be 3'\n")
    assert (result.passed, result.reason) == (False, "AssertionError: f() should be 3")
    assert "Traceback" in result.output
    assert run_tests("def f(:\n").reason == "SyntaxError: invalid syntax (line 1)"
    assert run_tests("x = undefined_name\n").reason == "NameError: name 'undefined_name' is not defined"


def test_opening_a_socket_fails_even_when_the_program_catches_the_error() -> None:
    connect = "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))\n"
    result = run_tests(connect)
    assert (result.passed, result.reason) == (False, "network is blocked: socket.__new__")
    hidden = (
        "import urllib.request\ntry:\n    urllib.request.urlopen('http://example.com', timeout=1)\n"
        "except Exception:\n    pass\n"
    )
    result = run_tests(hidden)
    assert not result.passed
    assert result.reason.startswith("network is blocked: socket.")


def test_writing_outside_the_folder_fails_and_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "stolen.txt"
    result = run_tests(f"open({str(target)!r}, 'w').write('x')\n")
    assert (result.passed, result.reason) == (False, f"writing outside the sandbox is blocked: {target}")
    assert not target.exists()
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    for program in (f"import os\nos.remove({str(victim)!r})\n", f"import shutil\nshutil.rmtree({str(tmp_path)!r})\n",
                    f"import os\nos.rename({str(victim)!r}, 'mine.txt')\n"):
        result = run_tests(program)
        assert not result.passed
        assert result.reason.startswith("changing files outside the sandbox is blocked")
    assert victim.read_text() == "precious"
    # Inside its own folder a program may write and read back.
    assert run_tests("open('out.txt', 'w').write('x')\nassert open('out.txt').read() == 'x'\n").passed


def test_reading_the_users_files_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    result = run_tests(f"print(open({str(secret)!r}).read())\n")
    assert result.reason == f"reading outside the sandbox is blocked: {secret}"
    assert "password" not in result.output
    assert run_tests(f"import os\nos.listdir({str(tmp_path)!r})\n").reason.startswith("reading outside the sandbox")


def test_an_endless_loop_times_out() -> None:
    start = time.monotonic()
    result = run_tests("while True:\n    pass\n", timeout_s=1)
    assert (result.passed, result.reason) == (False, "timeout after 1 s")
    assert time.monotonic() - start < 10
    assert run_tests("import time\ntime.sleep(60)\n", timeout_s=1).reason == "timeout after 1 s"


def test_allocating_too_much_memory_fails() -> None:
    result = run_tests("x = bytearray(2 * 1024 ** 3)\n", memory_mb=256)
    assert (result.passed, result.reason) == (False, "memory limit (256 MB)")
    assert run_tests("x = [0] * 10 ** 9\n", memory_mb=256).reason == "memory limit (256 MB)"


def test_starting_processes_is_refused() -> None:
    assert run_tests("import subprocess\nsubprocess.run(['true'])\n").reason == (
        "starting processes is blocked: subprocess.Popen"
    )
    assert run_tests("import os\nos.system('true')\n").reason == "starting processes is blocked: os.system"
    assert run_tests("import os\nos.fork()\n").reason == "starting processes is blocked: os.fork"
    result = run_tests("import ctypes\nctypes.CDLL(None).system(b'true')\n")
    assert result.reason.startswith("calling C through ctypes is blocked")


def test_the_environment_is_emptied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILORLM_TEST_SECRET", "hunter2")
    program = (
        "import os\nassert 'TAILORLM_TEST_SECRET' not in os.environ\n"
        "assert os.environ['HOME'] == os.getcwd(), (os.environ['HOME'], os.getcwd())\n"
    )
    assert run_tests(program).passed


def test_exiting_early_is_not_a_pass() -> None:
    assert run_tests("import sys\nsys.exit(0)\nassert False\n").reason == "exited before the tests finished (sys.exit)"
    assert run_tests("import os\nos._exit(0)\n").reason == "exited before the tests finished (code 0)"
    assert run_tests("raise SystemExit(3)\n").reason == "SystemExit: 3"


HUMANEVAL_PROMPT = '''def add(a: int, b: int) -> int:
    """Add two numbers.
    >>> add(2, 3)
    5
    """
'''
HUMANEVAL_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n\ncheck(add)\n"


def test_score_code_runs_humaneval_style_samples_into_pass_at_1() -> None:
    completions = ["    return a + b\n", "```python\ndef add(a, b):\n    return a - b\n```", "    while True: pass\n"]
    programs = [extract_code(c, HUMANEVAL_PROMPT) for c in completions]
    results = score_code(programs, [HUMANEVAL_TEST] * 3, timeout_s=2, workers=2)
    assert [r.reason for r in results] == ["passed", "AssertionError", "timeout after 2 s"]
    flags = [r.flag for r in results]
    assert flags == ["1", "0", "0"]
    assert corpus_score("pass_at_1", flags, [[]] * 3) == pytest.approx(1 / 3)
