"""The `strategies:` section of a comparison recipe: the strategies, named variants of them (`strategy:`), rag entries
answering over a trained one (`over:`) and entries kept to some base models (`models:`), checked and put in running
order."""

from __future__ import annotations

import re
from typing import Any

from tailorlm.config import suggest
from tailorlm.errors import ConfigError

STRATEGIES = ("zero_shot", "few_shot", "prompt_search", "rag", "prompt_tuning", "p_tuning", "prefix_tuning", "lora",
              "dora", "ia3", "full")
TRAINED = ("prompt_tuning", "p_tuning", "prefix_tuning", "lora", "dora", "ia3", "full")
# Settings of a strategies: entry that say what it is rather than how to fit it; the fitters never see them.
ENTRY_KEYS = ("strategy", "over", "models")
ENTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def method_of(name: str, settings: dict[str, Any]) -> str:
    """The strategy an entry runs: its `strategy` setting, else its name."""
    return settings.get("strategy", name)


def strategy_settings(value: Any, source: str, base_models: list[str]) -> dict[str, dict[str, Any]] | None:
    """The recipe's entries, checked, in running order (each `over` target before its user, else as listed)."""
    if value is None:
        return None
    if isinstance(value, list):
        value = {name: {} for name in value}
    if not isinstance(value, dict) or not value:
        raise ConfigError("strategies must name at least one strategy", where=source, key="strategies",
                          found=repr(value), expected="a mapping of strategy name to settings, or a list of names")
    entries = {}
    for name, settings in value.items():
        variant = isinstance(settings, dict) and "strategy" in settings
        if name not in STRATEGIES and not variant:
            raise ConfigError("unknown strategy", where=source, key=f"strategies.{name}",
                              expected="one of " + ", ".join(STRATEGIES) + ", or a name of your own with "
                              "strategy: one of them", hint=suggest(str(name), STRATEGIES))
        if settings is not None and not isinstance(settings, dict):
            raise ConfigError("strategy settings must be a mapping", where=source, key=f"strategies.{name}",
                              found=repr(settings), expected="a mapping such as {k: 4}, or {}")
        if not isinstance(name, str) or not ENTRY_NAME.fullmatch(name):
            raise ConfigError("an entry's name is also its folder name", where=source, key=f"strategies.{name}",
                              found=repr(name), expected="letters, digits, '.', '_' and '-', e.g. code_prompt")
        method = (settings or {}).get("strategy", name)
        if method not in STRATEGIES:
            raise ConfigError("unknown strategy", where=source, key=f"strategies.{name}.strategy", found=repr(method),
                              expected="one of " + ", ".join(STRATEGIES), hint=suggest(str(method), STRATEGIES))
        if name in STRATEGIES and method != name:
            raise ConfigError("an entry named after a strategy runs that strategy", where=source,
                              key=f"strategies.{name}.strategy", found=repr(method),
                              expected=f"{name!r}, or another name for the entry (its folder and leaderboard name)")
        entries[name] = dict(settings or {})
        models = entries[name].get("models")
        if models is not None and (not isinstance(models, list) or not models
                                   or not all(isinstance(m, str) and m in base_models for m in models)):
            raise ConfigError("models: must list some of the recipe's base_models", where=source,
                              key=f"strategies.{name}.models", found=repr(models),
                              expected="a list drawn from " + ", ".join(map(str, base_models)))
    for name, settings in entries.items():
        if "over" in settings:
            _check_over(entries, name, settings["over"], source)
    ordered: dict[str, dict[str, Any]] = {}
    for name, settings in entries.items():
        if "over" in settings:
            ordered.setdefault(settings["over"], entries[settings["over"]])
        ordered.setdefault(name, settings)
    return ordered


def _check_over(entries: dict[str, dict[str, Any]], name: str, over: Any, source: str) -> None:
    """`over` is allowed on a rag entry, naming another entry of the recipe that trains."""
    key = f"strategies.{name}.over"
    trained = [n for n, s in entries.items() if method_of(n, s) in TRAINED]
    expected = "the name of a trained entry of this recipe (" + (", ".join(trained) or "none here") + ")"
    if method_of(name, entries[name]) != "rag":
        raise ConfigError("only a rag entry answers over another entry", where=source, key=key,
                          found=f"{name}, a {method_of(name, entries[name])} entry", expected="over: on a rag entry")
    if over == name:
        raise ConfigError("an entry cannot answer over itself", where=source, key=key, found=repr(over),
                          expected=expected)
    if not isinstance(over, str) or over not in entries:
        raise ConfigError("over names no entry of this recipe", where=source, key=key, found=repr(over),
                          expected=expected, hint=suggest(str(over), trained))
    if method_of(over, entries[over]) not in TRAINED:
        raise ConfigError("rag can only answer over a trained entry", where=source, key=key,
                          found=f"{over}, a {method_of(over, entries[over])} entry", expected=expected)
