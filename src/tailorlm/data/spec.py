"""The `data:` section of a recipe: which files feed which split, how to read them, and how to carve splits.

    data:
      train: data/train.csv            # a path, a glob or a list of them, relative to the recipe's folder
      eval: data/dev.csv               # optional; without it 10% of train is carved out as eval
      format: text_label               # optional; detected from the columns otherwise
      columns: {text: sentence}        # optional; canonical name -> the file's column (or dotted path)
      split: {eval: 0.1, test: 0.1}    # optional; shares of train for splits not given as files
      seed: 0
      csv_quoting: none                # csv_delimiter, csv_header, csv_quoting, csv_columns, text_split

A path to a saved `DatasetDict` may end in `#split` (`data/hf#validation`) to take one of its splits.
"""

from __future__ import annotations

import difflib
import glob
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from tailorlm.data.examples import Example
from tailorlm.data.formats import FORMATS, LoadedData, load_examples
from tailorlm.data.loaders import CSV_QUOTING, TEXT_SPLITS
from tailorlm.data.splits import check_ratios, require_two_classes, split_examples
from tailorlm.errors import ConfigError, DataError

SPLITS: tuple[str, ...] = ("train", "eval", "test")
DEFAULT_EVAL_SHARE = 0.1


@dataclass
class DataSpec:
    """Where a recipe's data comes from and how it is read and split."""

    train: list[str]
    """Training files (paths, resolved against the recipe's folder)."""
    eval: list[str] = field(default_factory=list)
    """Evaluation files; when empty, an eval split is carved from train (see `split`)."""
    test: list[str] = field(default_factory=list)
    """Test files, if any."""
    format: str | None = None
    """Input format name (see `formats.FORMATS`); None to detect it from the columns."""
    columns: dict[str, str] = field(default_factory=dict)
    """Canonical column -> the file's column name or dotted path."""
    split: dict[str, float] | None = None
    """Shares of train for splits not given as files; None means {"eval": 0.1} when there is no eval file."""
    seed: int = 0
    """Seed of the carved splits."""
    stratify: bool = True
    """Keep each class's share in every carved split (classification only)."""
    csv_delimiter: str | None = None
    csv_header: bool | None = None
    csv_quoting: str = "minimal"
    csv_columns: list[str] | None = None
    text_split: str = "file"
    source: str = "data"
    """Where the spec was written (the recipe file), for error messages."""

    def __post_init__(self) -> None:
        for name in SPLITS:
            value = getattr(self, name)
            setattr(self, name, [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value or []])
        if not self.train:
            raise ConfigError("no training data", where=self.source, key="data.train", found="nothing", expected="a path or a list of paths")
        if self.format is not None and self.format not in FORMATS:
            close = difflib.get_close_matches(str(self.format), list(FORMATS), n=1)
            raise ConfigError("unknown data format", where=self.source, key="data.format", found=repr(self.format),
                              expected="one of " + ", ".join(FORMATS), hint=f"Did you mean {close[0]!r}?" if close else None)
        if self.csv_quoting not in CSV_QUOTING:
            raise ConfigError("unknown CSV quoting", where=self.source, key="data.csv_quoting", found=repr(self.csv_quoting),
                              expected="one of " + ", ".join(CSV_QUOTING))
        if self.text_split not in TEXT_SPLITS:
            raise ConfigError("unknown text split", where=self.source, key="data.text_split", found=repr(self.text_split),
                              expected="one of " + ", ".join(TEXT_SPLITS))
        self.ratios()  # validates `split`

    def ratios(self) -> dict[str, float]:
        """The ratios train is cut by, train included; empty when nothing is carved."""
        shares = self.split if self.split is not None else ({} if self.eval else {"eval": DEFAULT_EVAL_SHARE})
        if not shares:
            return {}
        for name in shares:
            if name not in SPLITS:
                raise ConfigError("unknown split name", where=self.source, key=f"data.split.{name}", found=repr(name),
                                  expected="one of " + ", ".join(SPLITS))
            if name != "train" and getattr(self, name):
                raise ConfigError(f"the {name} split is given twice", where=self.source, key=f"data.split.{name}",
                                  found=f"both {name} files and a {name} share", expected="one of the two")
        carved = {name: share for name, share in shares.items() if name != "train"}
        total = sum(v for v in carved.values() if isinstance(v, (int, float)))
        if "train" not in shares and total >= 1:
            shown = " + ".join(f"{name} {share:g}" for name, share in carved.items())
            raise ConfigError("the carved splits leave nothing for train", where=self.source, key="data.split",
                              found=f"{shown} = {total:g}", expected="shares that add up to less than 1")
        ratios = {"train": shares.get("train", 1.0 - total), **carved}
        try:
            check_ratios(ratios)
        except ConfigError as err:
            raise ConfigError(err.what, where=self.source, key=f"data.{err.key}", found=err.found, expected=err.expected,
                              hint="Give the shares of the carved splits, e.g. {eval: 0.1, test: 0.1}; train keeps the rest") from None
        return ratios

    def read_options(self) -> dict[str, Any]:
        """The options passed to `read_records` for every file."""
        return {"csv_delimiter": self.csv_delimiter, "csv_header": self.csv_header, "csv_quoting": self.csv_quoting,
                "csv_columns": self.csv_columns, "text_split": self.text_split}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str, base_dir: Path) -> DataSpec:
        """Build a spec from a recipe's `data:` mapping; relative paths are resolved against `base_dir`."""
        if not isinstance(data, Mapping):
            raise ConfigError("the data section is not a mapping", where=source, key="data", found=type(data).__name__,
                              expected="a mapping with train (and optionally eval, test, format, columns, split, ...)")
        allowed = [f.name for f in fields(cls) if f.name != "source"]
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
                raise ConfigError("unknown key in the data section", where=source, key=f"data.{key}", found=repr(key),
                                  expected="one of " + ", ".join(allowed), hint=f"Did you mean {close[0]!r}?" if close else None)
        if "train" not in data:
            raise ConfigError("no training data", where=source, key="data.train", found="keys " + ", ".join(map(str, data)),
                              expected="a train path or list of paths")
        values: dict[str, Any] = dict(data)
        for name in SPLITS:
            if name in values:
                values[name] = _paths(values[name], base_dir, source, f"data.{name}")
        _check_types(values, source)
        return cls(**values, source=source)

    def check_files(self) -> None:
        """Raise ConfigError (naming the recipe, the key and the path) for the first file or folder that is missing.

        Run when a recipe is read, before anything is loaded or written; a `DatasetDict` folder counts with or
        without its `#split`.
        """
        from tailorlm.config import missing_path

        for name in SPLITS:
            paths = getattr(self, name)
            for index, path in enumerate(paths):
                if not (Path(path).exists() or ("#" in path and Path(path.rpartition("#")[0]).exists())):
                    raise missing_path(path, source=self.source, key=f"data.{name}",
                                       index=index if len(paths) > 1 else None)

    def load(self) -> dict[str, list[Example]]:
        """The examples of every split, keyed train, eval, test (those present); see `load_splits` for formats."""
        return {name: data.examples for name, data in self.load_splits().items()}

    def load_splits(self) -> dict[str, LoadedData]:
        """Read every split with its format, files and kind: the given files, then the splits carved from train."""
        loaded = {name: self._load_files(getattr(self, name)) for name in SPLITS if getattr(self, name)}
        ratios = self.ratios()
        train = loaded["train"]
        if ratios:
            for name, examples in split_examples(train.examples, ratios=ratios, seed=self.seed, stratify=self.stratify).items():
                if not examples and ratios[name] == 0:
                    continue
                if not examples:
                    raise DataError(f"the {name} split is empty", where=train.path, found=f"{len(train.examples)} training rows",
                                    expected=f"enough rows for a {ratios[name]:g} share", hint=f"Add rows or give {name} files")
                loaded[name] = LoadedData(examples, train.format, train.path, train.kind)
        elif train.kind == "classification":
            require_two_classes(train.examples, where=train.path)
        for name, part in loaded.items():
            if part.kind != train.kind:
                raise DataError("splits hold different kinds of example", where=part.path, key=f"data.{name}",
                                found=f"{part.kind} ({part.format})", expected=f"{train.kind}, like the train split ({train.format})")
        return {name: loaded[name] for name in SPLITS if name in loaded}

    def _load_files(self, paths: list[str]) -> LoadedData:
        """Load and concatenate several files of one split; they must hold one kind of example."""
        parts = []
        for path in paths:
            path, _, split = path.rpartition("#") if "#" in path and not Path(path).exists() else (path, "", "")
            parts.append(load_examples(path, format=self.format, columns=self.columns or None,
                                       split=split or None, **self.read_options()))
        first = parts[0]
        for part in parts[1:]:
            if part.kind != first.kind:
                raise DataError("files of one split hold different kinds of example", where=part.path,
                                found=f"{part.kind} ({part.format})", expected=f"{first.kind}, like {first.path}")
        formats = list(dict.fromkeys(p.format for p in parts))
        return LoadedData([e for p in parts for e in p.examples], ", ".join(formats), ", ".join(p.path for p in parts), first.kind)


def load_data(source: str | Path | DataSpec) -> dict[str, LoadedData]:
    """Every split, with its format, of a DataSpec, a recipe (.yaml/.yml: its `data:` section) or one data file.

    One data file is read like a recipe with `train: FILE`, so 10% of it is carved out as eval.
    """
    if isinstance(source, DataSpec):
        return source.load_splits()
    path = Path(source)
    if path.suffix.lower() in (".yaml", ".yml") and path.is_file():
        return _spec_from_recipe(path).load_splits()
    return DataSpec(train=[str(path)], source=str(path)).load_splits()


def _spec_from_recipe(path: Path) -> DataSpec:
    """The DataSpec of a recipe file's `data:` section."""
    import yaml

    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark else str(path)
        raise ConfigError("malformed YAML", where=where, found=str(getattr(err, "problem", err)), expected="a YAML mapping") from None
    if not isinstance(recipe, dict) or "data" not in recipe:
        found = "keys " + ", ".join(map(str, recipe)) if isinstance(recipe, dict) else type(recipe).__name__
        raise ConfigError("the recipe has no data section", where=str(path), key="data", found=found, expected="a data: mapping")
    spec = DataSpec.from_dict(recipe["data"], source=str(path), base_dir=path.parent)
    spec.check_files()
    return spec


def _paths(value: Any, base_dir: Path, source: str, key: str) -> list[str]:
    """A path, glob or list of them, as resolved path strings; relative ones are taken from `base_dir`."""
    if value is None:
        return []
    items = [value] if isinstance(value, (str, Path)) else value
    if not isinstance(items, list) or not all(isinstance(v, (str, Path)) and str(v) for v in items):
        raise ConfigError("bad data path", where=source, key=key, found=repr(value), expected="a path or a list of paths")
    paths: list[str] = []
    for item in items:
        full = Path(item).expanduser()
        full = full if full.is_absolute() else base_dir / full
        if any(ch in str(item) for ch in "*?["):
            matches = sorted(glob.glob(str(full), recursive=True))
            if not matches:
                raise ConfigError("no file matches the pattern", where=source, key=key, found=repr(str(item)),
                                  expected=f"at least one file under {str(base_dir)!r}")
            paths.extend(_tidy(m) for m in matches)
        else:
            paths.append(_tidy(str(full)))
    return paths


def _tidy(path: str) -> str:
    """`recipes/x/../../data/a.csv` as `data/a.csv`: relative to the working folder when below it, else absolute."""
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute)
    return absolute if relative.startswith("..") else relative


def _check_types(values: dict[str, Any], source: str) -> None:
    """The scalar and mapping settings have the right types."""
    def bad(key: str, expected: str) -> ConfigError:
        return ConfigError("wrong type", where=source, key=f"data.{key}", found=repr(values[key]), expected=expected)

    checks = {
        "format": (lambda v: v is None or isinstance(v, str), "a format name"),
        "columns": (lambda v: isinstance(v, Mapping) and all(isinstance(c, str) and isinstance(n, str) for c, n in v.items()),
                    "a mapping from canonical column to your column, e.g. {text: sentence}"),
        "split": (lambda v: v is None or isinstance(v, Mapping), "a mapping of split name to share, e.g. {eval: 0.1}"),
        "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
        "stratify": (lambda v: isinstance(v, bool), "true or false"),
        "csv_delimiter": (lambda v: v is None or (isinstance(v, str) and len(v) == 1), "one character, e.g. ',' or '\\t'"),
        "csv_header": (lambda v: v is None or isinstance(v, bool), "true, false or null (detect)"),
        "csv_quoting": (lambda v: isinstance(v, str), "one of " + ", ".join(CSV_QUOTING)),
        "csv_columns": (lambda v: v is None or (isinstance(v, list) and all(isinstance(c, str) for c in v)), "a list of column names"),
        "text_split": (lambda v: isinstance(v, str), "one of " + ", ".join(TEXT_SPLITS)),
    }
    for key, (ok, expected) in checks.items():
        if key in values and not ok(values[key]):
            raise bad(key, expected)
    if isinstance(values.get("columns"), Mapping):
        values["columns"] = dict(values["columns"])
    if isinstance(values.get("split"), Mapping):
        values["split"] = dict(values["split"])
