"""Run model-written programs and their tests in a locked-down subprocess; say why a sample failed.

Each program runs under `python -I` in a throw-away temporary folder (its cwd, HOME and TMPDIR; removed afterwards)
with an emptied environment, in its own process group that is killed on timeout, and under resource limits:
address space (memory), CPU seconds, size of files written, no core files, and the number of processes (the kernel
ignores that one for root; the audit hook below stops process creation for everyone). A small bootstrap installs a
`sys.addaudithook` hook before the program runs that refuses: every socket operation and name lookup (no network);
opening files for writing, and removing, renaming, creating or changing anything, outside the folder; reading or
listing files outside the folder, Python's own installation and system folders (no access to the user's files);
starting processes (subprocess, os.system, exec, spawn, fork, kill); and calling C functions through ctypes.

This guards against careless or confused model output, which is what evaluation meets. It is not a boundary
against code written to escape: audit hooks can be subverted from inside Python (PEP 578 says as much). For
untrusted code at scale, run the evaluation itself in a container or VM without network.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

FILE_SIZE_LIMIT_MB = 64
_OUTPUT_TAIL = 2000


@dataclass
class SandboxResult:
    """The verdict on one program: passed or not, and why, in a few words."""

    passed: bool
    reason: str
    """E.g. "passed", "timeout after 10 s", "AssertionError", "network is blocked: socket.connect"."""
    seconds: float = 0.0
    output: str = ""
    """The end of what the program printed (stdout then stderr), for reading a failure."""

    @property
    def flag(self) -> str:
        """"1" when passed, else "0": what the pass_at_k metrics take, one character per sample."""
        return "1" if self.passed else "0"


# Runs in the child before the user's program: limits, audit hook, then the program; the verdict goes to a pipe.
_BOOTSTRAP = r'''
import errno, json, os, resource, sys, traceback
program_path, verdict_fd, memory_mb, cpu_s, fsize_mb = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
home = os.path.realpath(os.path.dirname(program_path))
verdict = os.fdopen(verdict_fd, "w")
sys.dont_write_bytecode = True

def limit(which, value):
    try:
        resource.setrlimit(which, (value, value))
    except (ValueError, OSError):
        pass

limit(resource.RLIMIT_AS, memory_mb * 1024 * 1024)
limit(resource.RLIMIT_CPU, cpu_s)
limit(resource.RLIMIT_FSIZE, fsize_mb * 1024 * 1024)
limit(resource.RLIMIT_CORE, 0)
if os.geteuid() != 0:  # root is exempt from RLIMIT_NPROC; it counts threads too, so leave room for those
    limit(resource.RLIMIT_NPROC, sum(name.isdigit() for name in os.listdir("/proc")) + 64)

with open(program_path, encoding="utf-8") as f:
    source = f.read()
readable = {home, sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *filter(None, sys.path),
            "/usr", "/lib", "/lib64", "/etc", "/proc/self", "/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"}
readable = tuple(sorted({os.path.realpath(p) for p in readable}))
BLOCKED = {"socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
           "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo", "subprocess.Popen", "os.system",
           "os.posix_spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg", "pty.spawn",
           "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function"}
CHANGES = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.rename": 2, "os.link": 2, "os.symlink": 2,
           "os.truncate": 1, "os.chmod": 1, "os.chown": 1, "os.utime": 1, "os.chflags": 1, "os.setxattr": 1,
           "os.removexattr": 1, "shutil.rmtree": 1, "shutil.copyfile": 2, "shutil.copymode": 2,
           "shutil.copystat": 2, "shutil.move": 2, "shutil.chown": 1, "shutil.make_archive": 1,
           "shutil.unpack_archive": 2}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
violations = []

def inside(path, roots):
    try:
        path = os.path.realpath(os.fsdecode(path))
    except Exception:
        return False
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)

def refuse(reason):
    violations.append(reason)
    raise PermissionError(reason)

def hook(event, args):
    if event in BLOCKED or event.startswith(("os.exec", "os.spawn")):
        kind = event.split(".")[0]
        what = {"socket": "network", "ctypes": "calling C through ctypes"}.get(kind, "starting processes")
        refuse(f"{what} is blocked: {event}")
    if event == "open":
        path, mode, flags = args
        if path is None or isinstance(path, int):
            return
        writes = any(c in mode for c in "wax+") if mode is not None else bool(flags & WRITE_FLAGS)
        if writes and not inside(path, (home, "/dev/null")):
            refuse(f"writing outside the sandbox is blocked: {os.fsdecode(path)}")
        if not writes and not inside(path, readable):
            refuse(f"reading outside the sandbox is blocked: {os.fsdecode(path)}")
    elif event in ("os.listdir", "os.scandir"):
        if args and isinstance(args[0], (str, bytes, os.PathLike)) and not inside(args[0], readable):
            refuse(f"reading outside the sandbox is blocked: {os.fsdecode(args[0])}")
    elif event in CHANGES:
        for path in args[: CHANGES[event]]:
            if isinstance(path, (str, bytes, os.PathLike)) and not inside(path, (home,)):
                refuse(f"changing files outside the sandbox is blocked: {event} {os.fsdecode(path)}")

def report(passed, reason):
    verdict.write(json.dumps({"passed": passed, "reason": reason}) + "\n")
    verdict.flush()

try:
    code = compile(source, "program.py", "exec")
except SyntaxError as error:
    report(False, f"SyntaxError: {error.msg} (line {error.lineno})")
    sys.exit(1)
sys.addaudithook(hook)
try:
    exec(code, {"__name__": "__main__", "__file__": program_path, "__builtins__": __builtins__})
except SystemExit as error:
    if violations:
        report(False, violations[0])
    elif error.code in (None, 0):
        report(False, "exited before the tests finished (sys.exit)")
    else:
        report(False, f"SystemExit: {error.code}")
    raise
except MemoryError:
    report(False, f"memory limit ({memory_mb} MB)")
    raise
except BaseException as error:
    traceback.print_exc()
    message = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    if violations:
        reason = violations[0]
    elif isinstance(error, OSError) and error.errno == errno.EFBIG:
        reason = f"file size limit ({fsize_mb} MB)"
    else:
        reason = f"{type(error).__name__}: {message}" if message else type(error).__name__
    report(False, reason)
    sys.exit(1)
report(not violations, violations[0] if violations else "passed")
'''


def run_tests(program: str, *, timeout_s: float = 10, memory_mb: int = 512) -> SandboxResult:
    """Run `program` (a solution followed by the code that tests it) in the sandbox; passed when it ends cleanly.

    A program passes when it runs to its end without an exception and without touching anything the sandbox
    refuses (a refusal counts even when the program catches the error).

    >>> run_tests("def f(x):\\n    return x + 1\\nassert f(1) == 2\\n").reason
    'passed'
    """
    folder = tempfile.mkdtemp(prefix="tailorlm-sandbox-")
    try:
        return _run_in(folder, program, timeout_s=timeout_s, memory_mb=memory_mb)
    finally:
        _remove(folder)


def score_code(
    predictions: list[str],
    tests: list[str],
    *,
    timeout_s: float = 10,
    memory_mb: int = 512,
    workers: int = 1,
) -> list[SandboxResult]:
    """Run each program (prediction + "\\n\\n" + its tests) in the sandbox; `workers` programs at a time.

    Feed `[r.flag for r in results]` to the pass_at_1 metric (one sample per problem), or join the flags of one
    problem's n samples ("10110") for pass_at_K. Timeouts are wall-clock, so keep `workers` at or below the free
    cores or slow machines will time out good programs.
    """
    if len(predictions) != len(tests):
        raise ValueError(f"{len(predictions)} programs but {len(tests)} test programs")
    programs = [f"{code}\n\n{test}\n" for code, test in zip(predictions, tests)]

    def run(program: str) -> SandboxResult:
        return run_tests(program, timeout_s=timeout_s, memory_mb=memory_mb)

    if workers <= 1:
        return [run(p) for p in programs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, programs))


def _run_in(folder: str, program: str, *, timeout_s: float, memory_mb: int) -> SandboxResult:
    """Run `program` with `folder` as its whole world, and read its verdict."""
    program_path = os.path.join(folder, "program.py")
    with open(program_path, "w", encoding="utf-8") as f:
        f.write(program)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": folder, "TMPDIR": folder, "LC_ALL": "C.UTF-8",
        # BLAS thread pools reserve address space per thread; one thread keeps the memory limit about the program.
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    }
    cpu_s = max(1, int(timeout_s + 0.999)) + 1
    read_end, write_end = os.pipe()
    command = [sys.executable, "-I", "-c", _BOOTSTRAP, program_path, str(write_end), str(int(memory_mb)), str(cpu_s),
               str(FILE_SIZE_LIMIT_MB)]
    out_path, err_path = os.path.join(folder, ".stdout"), os.path.join(folder, ".stderr")
    start = time.monotonic()
    timed_out = False
    try:
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            process = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                       pass_fds=(write_end,), start_new_session=True)
            os.close(write_end)
            write_end = -1
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(process.pid)
            process.wait()
        with os.fdopen(read_end, "r", encoding="utf-8", errors="replace") as pipe:
            read_end = -1
            lines = [line for line in pipe.read().splitlines() if line.strip()]
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    seconds = time.monotonic() - start
    output = (_tail(out_path) + _tail(err_path)).strip()[-_OUTPUT_TAIL:]
    verdict = _last_verdict(lines)
    code = process.returncode
    if timed_out:
        reason, passed = f"timeout after {timeout_s:g} s", False
    elif verdict is not None:
        passed = bool(verdict["passed"]) and code == 0
        reason = verdict["reason"] if passed or not verdict["passed"] else f"exited with code {code}"
    elif code is not None and code < 0:
        reason, passed = _signal_reason(-code, timeout_s, memory_mb), False
    else:
        reason, passed = f"exited before the tests finished (code {code})", False
    return SandboxResult(passed=passed, reason=reason, seconds=seconds, output=output)


def _last_verdict(lines: list[str]) -> dict | None:
    """The bootstrap's verdict: it writes it after the program has ended, so it is the last well-formed line."""
    for line in reversed(lines):
        try:
            verdict = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(verdict, dict) and {"passed", "reason"} <= verdict.keys():
            return verdict
    return None


def _signal_reason(number: int, timeout_s: float, memory_mb: int) -> str:
    """Why a process that died of signal `number` died, in words."""
    name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else f"signal {number}"
    if number == signal.SIGXCPU:
        return f"timeout after {timeout_s:g} s (CPU time)"
    if number in (signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT):
        return f"crashed ({name}), likely the memory limit ({memory_mb} MB)"
    return f"killed by {name}"


def _kill_group(pid: int) -> None:
    """Kill the program's process group: it and anything it started."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: str) -> str:
    """The last few thousand characters of a file the program wrote to."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - _OUTPUT_TAIL))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _remove(folder: str) -> None:
    """Delete the sandbox folder, whatever permissions the program left on its contents."""

    def make_writable_and_retry(function, path, _error):
        try:
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            function(path)
        except OSError:
            pass

    if sys.version_info >= (3, 12):  # onerror is deprecated there in favour of onexc
        shutil.rmtree(folder, onexc=make_writable_and_retry)
    else:
        shutil.rmtree(folder, onerror=make_writable_and_retry)
