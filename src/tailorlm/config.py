"""Recipe files and typed settings: every error names the file, the key and what is allowed."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Iterable

import yaml

from tailorlm.errors import ConfigError


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe: a YAML mapping at the top level."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("recipe not found", where=str(path), expected="a YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError("recipe is not UTF-8 text", where=str(path), found=f"byte {err.start}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark else str(path)
        raise ConfigError("recipe is not valid YAML", where=where, found=str(getattr(err, "problem", err))) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("recipe must be a mapping of keys to values", where=str(path), found=type(data).__name__)
    return data


def suggest(name: str, allowed: Iterable[str]) -> str | None:
    """A 'did you mean' hint for a misspelled name, or None."""
    close = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.6)
    return f"Did you mean {close[0]!r}?" if close else None


def check_keys(data: dict[str, Any], allowed: Iterable[str], *, where: str, section: str = "") -> None:
    """Refuse keys that a section does not know, listing the ones it does."""
    allowed = list(allowed)
    for key in data:
        if key not in allowed:
            raise ConfigError(
                "unknown setting",
                where=where,
                key=f"{section}.{key}" if section else key,
                expected="one of " + ", ".join(allowed),
                hint=suggest(str(key), allowed),
            )


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=value` into (["a", "b"], value), with the value parsed as YAML (so 3e-4, true, [q, v] work)."""
    if "=" not in text:
        raise ConfigError("a --set override needs key=value", found=repr(text), expected="for example train.lr=3e-4")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError("a --set override needs a key", found=repr(text), expected="for example train.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads 3e-4 as text
        except ValueError:
            pass
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `a.b=value` override set (command-line values win over the recipe)."""
    import copy

    result = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError("cannot set a key inside a value", key=".".join(keys), found=repr(child))
            node = child
        node[keys[-1]] = value
    return result


def build_dataclass(cls: type, data: dict[str, Any] | None, *, where: str, section: str) -> Any:
    """Build a settings dataclass from a mapping, checking names and simple types (int, float, bool, str, lists)."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys(data, fields, where=where, section=section)
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        values[name] = _coerce(value, hints[name], where=where, key=f"{section}.{name}" if section else name)
    try:
        return cls(**values)
    except ConfigError as err:
        raise err.located(where) from None
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err), where=where, key=section or None) from None


def _coerce(value: Any, hint: Any, *, where: str, key: str) -> Any:
    """Check a value against a type hint, converting the harmless cases (int to float, '3e-4' to float)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where=where, key=key)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(
                "value not allowed", where=where, key=key, found=repr(value),
                expected="one of " + ", ".join(map(str, args)), hint=suggest(str(value), map(str, args)),
            )
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError("wrong type", where=where, key=key, found=repr(value), expected="a list")
        return [_coerce(v, args[0], where=where, key=key) for v in value] if args else list(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError("wrong type", where=where, key=key, found=repr(value), expected="a mapping")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError("wrong type", where=where, key=key, found=repr(value), expected="true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError("wrong type", where=where, key=key, found=repr(value), expected="a whole number")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError("wrong type", where=where, key=key, found=repr(value), expected="a number")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError("wrong type", where=where, key=key, found=repr(value), expected="text")
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, where=where, section=key)
    return value
