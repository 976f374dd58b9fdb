"""tailorlm's compiled CPU kernels (`kernels/cpu_kernels.cpp`): packed attention, the loss's softmax, SwiGLU, RMSNorm.

They are built with the machine's C++ compiler the first time training needs them (about 30 s) into PyTorch's
extension cache (`TORCH_EXTENSIONS_DIR`, by default ~/.cache/torch_extensions), and loaded from there afterwards.
The build uses -march=native, so the cache entry is named after the source, the PyTorch version and this CPU.
Once loaded, they are checked against PyTorch on a tiny problem. Where they cannot be built (no compiler, another
platform) or fail that check, `cpu_kernels()` returns None after one warning and callers keep PyTorch's own
operations; `train.cpu_kernels: false` skips them altogether.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

_SOURCE = Path(__file__).with_name("kernels") / "cpu_kernels.cpp"
_lock = threading.Lock()
_state: dict[str, Any] = {}  # "module" once built, or "error" once a build failed


def cpu_kernels(announce: Callable[[str], None] | None = None) -> Any | None:
    """The compiled kernels' module (built on first call), or None where they cannot be built. `announce` hears
    one line before a compilation (not when the cache has this build)."""
    if "module" not in _state and "error" not in _state:
        with _lock:
            if "module" not in _state and "error" not in _state:
                try:
                    _state["module"] = _build(announce)
                except Exception as error:  # no compiler, no ninja, another platform: training still works
                    _state["error"] = _last_line(error)
                    warnings.warn(f"could not build tailorlm's CPU kernels ({_state['error']}); training uses "
                                  "PyTorch's own operations instead, which are slower (train.cpu_kernels: false "
                                  "skips the build)", RuntimeWarning, stacklevel=2)
    return _state.get("module")


def _build(announce: Callable[[str], None] | None = None) -> Any:
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # the ninja package's binary, when its folder is not on PATH
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass
    source = _SOURCE.read_bytes()
    identity = hashlib.sha256(source + torch.__version__.encode() + _cpu_identity().encode()).hexdigest()[:16]
    name = f"tailorlm_cpu_kernels_{identity}"
    if announce is not None and not _cached(cpp_extension, name):
        announce("compiling tailorlm's CPU kernels for this machine (once; about 30 s)")
    # -fopenmp: ATen's parallel_for is a header template; with OpenMP it runs on PyTorch's own OpenMP threads
    # (with GCC the loader finds the libgomp.so.1 that torch has already loaded; clang's libomp would be a second
    # runtime, correct but with threads of its own).
    module = cpp_extension.load(name=name, sources=[str(_SOURCE)],
                                extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
                                verbose=False)
    _self_check(module)
    return module


def _self_check(module: Any) -> None:
    """Raise where the loaded kernels disagree with PyTorch on a tiny problem (an unusual CPU, compiler or build)."""
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 70, heads, 8, generator=generator) for heads in (4, 2, 2))  # (B, T, heads, D)
    out, _ = module.attention_forward(q, k, v, torch.tensor([[0, 0, 70]]), 0.35)
    expected = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2).repeat_interleave(2, 1),
                                              v.transpose(1, 2).repeat_interleave(2, 1), is_causal=True, scale=0.35)
    logits, targets = torch.randn(3, 50, generator=generator), torch.tensor([0, 7, 49])
    losses = module.softmax_cross_entropy_(logits.clone(), targets)
    if not (torch.allclose(out, expected.transpose(1, 2), rtol=1e-4, atol=1e-5)
            and torch.allclose(losses, F.cross_entropy(logits, targets, reduction="none"), rtol=1e-4, atol=1e-5)):
        raise RuntimeError("the compiled kernels disagree with PyTorch on a check problem")


def _cached(cpp_extension: Any, name: str) -> bool:
    """Whether PyTorch's extension cache already holds this build (its folder logic is private: unsure is True)."""
    try:
        folder = Path(cpp_extension._get_build_directory(name, verbose=False))
    except Exception:
        return True
    return (folder / f"{name}.so").exists()


def _cpu_identity() -> str:
    """This CPU's model and instruction-set flags (Linux), or what the platform module knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            lines = [line for line in info if line.startswith(("model name", "flags", "Features"))]
        return platform.machine() + "".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


def _last_line(error: Exception) -> str:
    """An exception as one line (a failed build's message ends with the compiler's verdict)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1]}" if lines else type(error).__name__
