"""Recipe files and typed settings: every error names the file, the key and what is allowed."""

from __future__ import annotations

import dataclasses
import difflib
import os
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


def missing_path(path: str | Path, *, source: str, key: str, expected: str = "an existing data file or folder",
                 index: int | None = None) -> ConfigError:
    """A recipe setting that names a path where nothing is: the recipe, the key, the path and the likeliest fix.

    The hint, first that applies: a close name in the same folder; the command in the recipe's comments that makes
    the file (`... --output PATH`); for the full data sets of ../shared/data, the shipped slice in examples/data;
    for a shipped slice, the script that cuts them; else where relative paths start and how to give another one.
    """
    path = Path(path)
    shown = _shown(path)
    recipe = Path(source)
    base_dir = recipe.resolve().parent if recipe.is_file() else Path.cwd()
    key_text = key if index is None else f"{key}[{index}]"
    hint = None
    if path.parent.is_dir():
        close = difflib.get_close_matches(path.name, [p.name for p in path.parent.iterdir()], n=1, cutoff=0.6)
        hint = f"Did you mean {_shown(path.parent / close[0])!r}?" if close else None
    if hint is None and recipe.is_file():
        steps = _commands_making(recipe, path.name)
        hint = ("The recipe's comments make it, from the repository root: " + "; then ".join(f"`{c}`" for c in steps)
                if steps else None)
    parts = path.as_posix().split("/")
    if hint is None and "shared" in parts and parts[parts.index("shared") + 1:][:1] == ["data"]:
        rest = Path(*parts[parts.index("shared") + 2:])
        slice_ = next((d / "examples" / "data" / rest for d in (Path.cwd(), base_dir, *base_dir.parents)
                       if (d / "examples" / "data" / rest).exists()), None)
        hint = ("The full data sets of ../shared/data are not on this machine; a slice of this one ships in "
                f"examples/data: give it with `--set {key}={_relative(slice_, base_dir)}`" if slice_ else
                "The full data sets of ../shared/data are not on this machine (see ../shared/data/README.md where "
                f"they are); give another file with `--set {key}=PATH`")
    if hint is None and "examples" in parts and parts[parts.index("examples") + 1:][:1] == ["data"]:
        hint = ("The shipped slices in examples/data are cut from ../shared/data by `python scripts/make_examples.py`"
                f"; run it, or give another file with `--set {key}=PATH`")
    if hint is None:
        hint = (f"Relative paths start at the recipe's folder ({base_dir}); correct {key_text} in {source}, "
                f"or give another path with `--set {key}=PATH`")
    return ConfigError("the path does not exist", where=source, key=key_text, found=f"nothing at {shown}",
                       expected=expected, hint=hint)


def _shown(path: Path) -> str:
    """A path relative to the working folder when it lies below it, else absolute."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def _relative(path: Path, base_dir: Path) -> str:
    return os.path.relpath(os.path.abspath(path), base_dir)


def _commands_making(recipe: Path, name: str) -> list[str]:
    """The `tailor ...` commands in a recipe's comments up to the one whose --output is `name` (none: no such one)."""
    commands: list[str] = []
    current: str | None = None  # a command continued on the next comment line (ending in a backslash)
    for line in recipe.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text.startswith("#"):
            continue
        text = text.lstrip("#").strip()
        if current is None and not text.startswith("tailor "):
            continue
        part = text.removesuffix("\\").strip()
        current = part if current is None else f"{current} {part}"
        if not text.endswith("\\"):
            commands.append(current)
            current = None
    for n, command in enumerate(commands):
        words = command.split()
        if any(w == "--output" and i + 1 < len(words) and Path(words[i + 1]).name == name for i, w in enumerate(words)):
            # the commands before it that are not a run of this recipe (the first line, `tailor data check ...`)
            return [c for c in commands[:n] if recipe.name not in c] + [command]
    return []


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
