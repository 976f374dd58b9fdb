"""The parity check every export ends with: the exported model, reloaded from disk, against the in-memory specialist.

On a few fixed prompts (and one chat turn when the tokenizer has a chat template) both models give their next-token
logits at every position of the prompt; the check reports the largest absolute difference and the share of positions
whose most likely next token agrees, and whether the exported tokenizer splits the prompts into the same ids and
renders the same chat template. Tolerances (in `TOLERANCES`, shown in `parity.json`):

| export | max abs diff of logits | top-1 agreement |
|---|---|---|
| hf (same dtype, float32) | ≤ 1e-3 | reported |
| gguf f32 | ≤ 1e-3 | reported |
| gguf f16 | ≤ 0.5% of the largest reference logit magnitude (at least 1) | 100% |
| gguf q8_0 | ≤ 15% of that magnitude | ≥ 90% |

f16 rounds each weight to about 3 decimal digits, so logits move by a small share of their own scale; q8_0 moves
them more, so the choice of next token carries its bound, and the loose magnitude bound only catches a broken file.
Measured on a LoRA specialist of SmolLM2-135M-Instruct (6 prompts, 85 positions, logit scale 37.7): hf 8.4e-5,
f16 0.041 (0.11%), q8_0 1.67 (4.4%) with 100% top-1 agreement.

A GGUF export is also read back by llama.cpp when llama-cpp-python is installed (what `tailor serve FILE.gguf` and
every llama.cpp-based tool run), against the same tolerances: llama.cpp's CPU kernels round the activations too (to
f16 for f16 weights, to 8 bits for q8_0), so its logits move a little more. Measured on SmolLM2-135M-Instruct:
f16 0.089 (0.24%) with 100% top-1 agreement, q8_0 2.55 (6.7%) with 94.1%. Without llama-cpp-python that reading is
recorded as skipped in `parity.json`, with what to install.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tailorlm.files import write_atomic

PROMPTS = (
    "The capital of France is",
    "Patients with diabetes should check their",
    "The court held that the statement was",
    "def add(a, b):\n    return",
    "Shares rose 5% after the earnings report, so the outlook is",
)
CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@dataclass(frozen=True)
class Tolerance:
    """How far an export may be from the specialist and still pass."""

    max_abs: float | None
    """Bound on the largest absolute logit difference; None: reported only."""
    relative: bool = False
    """When true, `max_abs` is a share of the largest reference logit magnitude (at least 1)."""
    top1: float | None = None
    """Least share of positions whose top-1 next token agrees; None: reported only."""


TOLERANCES: dict[str, Tolerance] = {
    "hf": Tolerance(max_abs=1e-3),
    "f32": Tolerance(max_abs=1e-3),
    "f16": Tolerance(max_abs=0.005, relative=True, top1=1.0),
    "q8_0": Tolerance(max_abs=0.15, relative=True, top1=0.9),
}


@dataclass
class ParityInput:
    """One prompt: its text, whether the tokenizer adds its special tokens, and the ids the specialist sees."""

    text: str
    add_special_tokens: bool
    ids: list[int]


@dataclass
class ParityReport:
    """What the check measured, against which tolerance, and whether it passed (with why not)."""

    export: str
    prompts: int
    positions: int
    max_abs_diff: float
    mean_abs_diff: float
    logit_scale: float
    top1_agreement: float
    tokens_match: bool
    chat_template_match: bool | None
    tolerance: dict[str, Any]
    passed: bool
    failures: list[str] = field(default_factory=list)
    reader: str = "transformers"
    """What read the export back: 'transformers', or 'llama.cpp' for a GGUF file."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        """A few lines for the terminal."""
        bound = self.tolerance.get("max_abs")
        if bound is not None and self.tolerance.get("relative"):
            bound = f"{bound * self.logit_scale:.3g} ({bound:.1%} of logit scale {self.logit_scale:.3g})"
        top1 = self.tolerance.get("top1")
        lines = [
            f"parity check ({self.export}, read by {self.reader}): {self.prompts} prompts, {self.positions} positions",
            f"  max |logit diff|   {self.max_abs_diff:.3g}"
            + (f"   (allowed ≤ {bound})" if bound is not None else ""),
            f"  mean |logit diff|  {self.mean_abs_diff:.3g}",
            f"  top-1 agreement    {self.top1_agreement:.1%}"
            + (f"   (needed ≥ {top1:.0%})" if top1 is not None else ""),
            f"  tokenizer ids      {'same' if self.tokens_match else 'DIFFERENT'}",
        ]
        if self.chat_template_match is not None:
            lines.append(f"  chat template      {'same' if self.chat_template_match else 'DIFFERENT'}")
        lines.append("  PASSED" if self.passed else "  FAILED: " + "; ".join(self.failures))
        return "\n".join(lines)


def parity_inputs(tokenizer: Any) -> list[ParityInput]:
    """The fixed prompts as the specialist's tokenizer splits them, plus one chat turn when it has a template."""
    inputs = [ParityInput(text, True, list(tokenizer(text)["input_ids"])) for text in PROMPTS]
    chat = _render_chat(tokenizer)
    if chat is not None:
        inputs.append(ParityInput(chat, False, list(tokenizer(chat, add_special_tokens=False)["input_ids"])))
    return inputs


def _render_chat(tokenizer: Any) -> str | None:
    if not getattr(tokenizer, "chat_template", None):
        return None
    return tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)


def logits_of(model: Any, inputs: list[ParityInput]) -> list[Any]:
    """The model's logits, one (positions, vocabulary) float32 CPU tensor per prompt, each prompt run alone."""
    import torch

    device = next(model.parameters()).device
    results = []
    with torch.no_grad():
        for item in inputs:
            ids = torch.tensor([item.ids], device=device)  # (1, T)
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().cpu()[0]
            results.append(logits if logits.dim() == 2 else logits.unsqueeze(0))  # (T, V), or (1, labels)
    return results


def llama_cpp_logits(path: Path, inputs: list[ParityInput]) -> tuple[list[Any], Any]:
    """llama.cpp's logits for each prompt from the GGUF file (llama-cpp-python must be installed), and its tokenizer
    (the GGUF's own, as `tailor serve`'s llama.cpp engine uses it)."""
    import numpy as np
    import torch
    from llama_cpp import Llama

    from tailorlm.serving.gguf_engine import GgufTokens, _threads

    context = max(len(item.ids) for item in inputs) + 8
    llm = Llama(model_path=str(path), n_ctx=context, n_batch=context, logits_all=True, n_threads=_threads(),
                n_threads_batch=_threads(), verbose=False)
    results = []
    try:
        for item in inputs:
            llm.reset()
            llm.eval(item.ids)
            results.append(torch.from_numpy(np.array(llm.scores[: len(item.ids)], dtype=np.float32)))  # (T, V)
    except BaseException:
        llm.close()
        raise
    return results, GgufTokens(llm)  # close its .llm when done


def compare(reference: list[Any], exported: list[Any], *, export: str, inputs: list[ParityInput],
            exported_tokenizer: Any, reference_tokenizer: Any, reader: str = "transformers") -> ParityReport:
    """Compare logits and tokenizers against the tolerance of `export` ('hf', 'f32', 'f16' or 'q8_0')."""
    import torch

    tolerance = TOLERANCES[export]
    failures = []
    ref = torch.cat(reference)  # (positions, V)
    out = torch.cat(exported)
    if ref.shape != out.shape:
        raise ValueError(f"parity logits differ in shape: {tuple(ref.shape)} against {tuple(out.shape)}")
    diff = (ref - out).abs()
    max_abs, mean_abs = float(diff.max()), float(diff.mean())
    scale = max(1.0, float(ref.abs().max()))
    top1 = float((ref.argmax(-1) == out.argmax(-1)).float().mean())
    if tolerance.max_abs is not None:
        bound = tolerance.max_abs * (scale if tolerance.relative else 1.0)
        if not max_abs <= bound:
            failures.append(f"max |logit diff| {max_abs:.3g} is above {bound:.3g}")
    if tolerance.top1 is not None and top1 < tolerance.top1:
        failures.append(f"top-1 agreement {top1:.1%} is below {tolerance.top1:.0%}")

    mismatched = [item.text for item in inputs
                  if list(exported_tokenizer(item.text, add_special_tokens=item.add_special_tokens)["input_ids"])
                  != item.ids]
    if mismatched:
        failures.append(f"the exported tokenizer splits {len(mismatched)} prompt(s) differently, "
                        f"first {mismatched[0][:40]!r}")
    chat_match = None
    if getattr(reference_tokenizer, "chat_template", None):
        try:
            chat_match = _render_chat(exported_tokenizer) == _render_chat(reference_tokenizer)
        except Exception:  # noqa: BLE001 - a template that does not render is a mismatch, reported below
            chat_match = False
        if not chat_match:
            failures.append("the exported chat template renders a conversation differently (or is missing)")
    return ParityReport(
        export=export, prompts=len(inputs), positions=int(ref.shape[0]), max_abs_diff=max_abs,
        mean_abs_diff=mean_abs, logit_scale=scale, top1_agreement=top1, tokens_match=not mismatched,
        chat_template_match=chat_match, tolerance=asdict(tolerance), passed=not failures, failures=failures,
        reader=reader,
    )


def unreadable(export: str, inputs: list[ParityInput], reader: str, error: BaseException) -> ParityReport:
    """A failed check for an export that `reader` could not load or run at all."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    return ParityReport(export=export, prompts=len(inputs), positions=0, max_abs_diff=float("nan"),
                        mean_abs_diff=float("nan"), logit_scale=float("nan"), top1_agreement=0.0, tokens_match=False,
                        chat_template_match=None, tolerance=asdict(TOLERANCES[export]), passed=False,
                        failures=[f"{reader} could not read the file: {type(error).__name__}: {message}"],
                        reader=reader)


def write_report(report: ParityReport, folder: Path, **extra: Any) -> Path:
    """Write `parity.json` into `folder` (temporary file, then rename)."""
    return write_atomic(Path(folder) / "parity.json", json.dumps({**report.to_dict(), **extra}, indent=1))
