"""What a comparison reads, checked before anything is loaded or its output folder is touched."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def check_inputs(plan: Any, *, console: Any) -> None:
    """What a comparison reads, checked before anything is loaded or its output folder is touched: each base model
    (a built-in pack not pulled yet is pulled now, with its progress) and the rag corpus. Errors name the recipe and
    the key, and say what fixes them."""
    from tailorlm.config import missing_path
    from tailorlm.errors import ModelError
    from tailorlm.models.hub import check_reference, is_pulled, pull
    from tailorlm.models.packs import PACKS

    def key(index: int) -> str:
        return "base_models" if len(plan.models) == 1 else f"base_models[{index}]"

    for index, ref in enumerate(plan.models):  # names and paths first (instant), so a typo is not found after a pull
        try:
            check_reference(ref)
        except ModelError as err:
            raise _in_recipe(err, plan.source, key(index), ref) from None
    for index, path in enumerate(plan.corpus):
        if not Path(path).exists():
            raise missing_path(path, source=plan.source, key="corpus", index=index if len(plan.corpus) > 1 else None,
                               expected="an existing document file or folder for the rag strategy")
    for index, ref in enumerate(plan.models):
        if ref in PACKS and not is_pulled(ref):
            console.print(f"pulling the built-in pack {ref} (once; later runs reuse it)")
            try:
                pull(ref)
            except ModelError as err:
                raise _in_recipe(err, plan.source, key(index), ref) from None


def _in_recipe(err: Any, source: str, key: str, ref: str) -> Any:
    """A model reference's error, pointing at the recipe and its key (the reference kept in the message)."""
    from tailorlm.errors import ModelError
    from tailorlm.models.packs import PACKS

    hint = err.hint
    if ref in PACKS:
        hint = " ".join(filter(None, [hint and hint.rstrip(".") + ".", "Then pull it with "
                                      f"`tailor models pull {ref}`, or run the comparison again"]))
    found = ", ".join(part for part in (err.where if err.where != ref else None, err.found) if part)
    return ModelError(err.what if ref in err.what else f"{err.what}: {ref}", where=source, key=key,
                      found=found or None, expected=err.expected, hint=hint)
