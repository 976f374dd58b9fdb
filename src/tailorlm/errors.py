"""Errors that reach users: each says what was wrong, where, what was found and what is expected."""

from __future__ import annotations


class TailorError(Exception):
    """An error caused by the user's input; the CLI prints it as one paragraph, without a traceback.

    >>> str(TailorError("unknown column", where="data.csv:3", key="label", found="'lable'", expected="one of text, label"))
    "data.csv:3: unknown column (key 'label'): found 'lable'; expected one of text, label."
    """

    def __init__(
        self,
        what: str,
        *,
        where: str | None = None,
        key: str | None = None,
        found: str | None = None,
        expected: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.what, self.where, self.key = what, where, key
        self.found, self.expected, self.hint = found, expected, hint
        super().__init__(self._message())

    def located(self, where: str) -> "TailorError":
        """The same error, pointing at `where` when it did not say where it happened."""
        if self.where is None:
            self.where = where
            self.args = (self._message(),)
        return self

    def _message(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        if self.key is not None:
            text += f" (key {self.key!r})"
        details = []
        if self.found is not None:
            details.append(f"found {self.found}")
        if self.expected is not None:
            details.append(f"expected {self.expected}")
        if details:
            text += ": " + "; ".join(details)
        text = _sentence(text)
        if self.hint:
            text += " " + _sentence(self.hint)
        return text


def _sentence(text: str) -> str:
    """End a sentence with exactly one full stop unless it already ends with ? or !."""
    text = text.rstrip()
    return text if text.endswith(("?", "!", ".")) else text + "."


class DataError(TailorError):
    """Bad data: a file, a row, a column or a value."""


class ModelError(TailorError):
    """A model reference that cannot be resolved or loaded."""


class ConfigError(TailorError):
    """A recipe or command-line setting that is not allowed."""
