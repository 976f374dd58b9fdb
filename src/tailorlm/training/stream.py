"""Pre-training on plain text streamed from a memory-mapped token cache instead of examples held in memory.

The corpus is tokenized once into one token file (data/token_cache.py, reused while the files and tokenizer stay
the same) and read in blocks of max_length tokens: documents separated by EOS, no padding, no packing. A text file
is one document; a JSON Lines file holds one document per row, in its `text` field. Without
eval files, the eval (and test) share is carved from the end of the token stream, like nanoGPT's split, so the
held-out text is contiguous and never trained on.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tailorlm.data.loaders import TEXT_SUFFIXES
from tailorlm.errors import ConfigError, DataError
from tailorlm.training.batches import StreamPlan
from tailorlm.training.config import RunConfig
from tailorlm.training.distributed import World, barrier


def streams(config: RunConfig, spec: Any, stream: Any) -> bool:
    """Whether a run streams its data: `data.stream` when given, else pre-training on whole plain-text files.

    Text split by line or paragraph (`data.text_split`) is a set of records, tokenized in memory and packed.
    """
    if stream is not None and not isinstance(stream, bool):
        raise ConfigError("wrong type", where=config.source, key="data.stream", found=repr(stream),
                          expected="true or false")
    if stream and config.objective != "pretrain":
        raise ConfigError("streaming from a token cache is for pre-training on plain text", where=config.source,
                          key="data.stream", found=f"objective {config.objective}",
                          expected="objective: pretrain, or data.stream: false")
    if stream and (spec.columns or spec.format not in (None, "text")):
        raise ConfigError("a streamed corpus is read as it is: text files, or the text field of JSON Lines rows",
                          where=config.source, key="data.columns" if spec.columns else "data.format",
                          found=repr(spec.columns or spec.format), expected="no data.columns or data.format",
                          hint="Rename the field to text, or set data.stream: false to read the data as examples")
    if stream is not None:
        return stream
    plain = spec.text_split == "file" and spec.format in (None, "text") and spec.csv_delimiter is None
    paths = [*spec.train, *spec.eval]
    return config.objective == "pretrain" and plain and all(_is_text(Path(p)) for p in paths)


def stream_plans(config: RunConfig, spec: Any, tokenizer: Any,
                 world: World = World()) -> tuple[StreamPlan, StreamPlan | None]:
    """Token caches of the train (and eval) files, and the block ranges that train and evaluate."""
    settings = config.train
    train_cache = _cache(text_files(spec.train, config, "data.train"), tokenizer, world)
    length = settings.max_length - 1  # a block of L + 1 tokens has L targets
    total = train_cache.num_blocks(length)
    ratios = spec.ratios()
    carved = {name: math.ceil(share * total) for name, share in ratios.items() if name != "train" and share > 0}
    end = total - sum(carved.values())
    if end < 1:
        raise DataError("the training text is shorter than one block of max_length tokens after the held-out "
                        "share", where=config.source, key="data.train",
                        found=f"{train_cache.num_tokens:,} tokens: {total} blocks of {settings.max_length}",
                        expected="more text, a smaller train.max_length, or data.split: {} with eval files")
    options = dict(max_length=settings.max_length, batch_size=settings.batch_size, seed=settings.seed)
    plan = StreamPlan(train_cache, shuffle=True, first=0, last=end, **options)
    eval_plan = None
    if spec.eval:
        eval_cache = _cache(text_files(spec.eval, config, "data.eval"), tokenizer, world)
        if eval_cache.num_blocks(length) < 1:
            raise DataError("the eval text is shorter than one block of max_length tokens", where=config.source,
                            key="data.eval", found=f"{eval_cache.num_tokens:,} tokens",
                            expected=f"at least {settings.max_length + 1} tokens")
        eval_plan = StreamPlan(eval_cache, shuffle=False, **options)
    elif "eval" in carved:
        eval_plan = StreamPlan(train_cache, shuffle=False, first=end, last=end + carved["eval"], **options)
    return plan, eval_plan


def text_files(paths: list[str], config: RunConfig, key: str) -> list[Path]:
    """The corpus files of a split: files as given, folders as every .txt/.md file below them in path order."""
    files: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found = sorted((p for p in item.rglob("*") if p.is_file() and _is_text(p)
                            and not any(part.startswith(".") for part in p.relative_to(item).parts)),
                           key=lambda p: p.relative_to(item).as_posix())
            if not found:
                raise DataError("no text files in the folder", where=str(item), key=key,
                                expected="files ending in " + ", ".join(TEXT_SUFFIXES))
            files.extend(found)
        elif not item.is_file():
            raise DataError("no such file", where=str(item), key=key, expected="a text file or a folder of them")
        elif item.suffix.lower() in (".json", ".csv", ".tsv", ".parquet", ".gz"):
            raise DataError("a streamed corpus is plain text or JSON Lines", where=str(item), key=key,
                            found=f"a {item.suffix} file",
                            expected="text files (one document each) or .jsonl files with a text field",
                            hint="Set data.stream: false to read it as examples in memory")
        else:
            files.append(item)
    return files


def _cache(files: list[Path], tokenizer: Any, world: World) -> Any:
    """Build (or find) the token cache; the first process builds it while the others wait, then they reuse it."""
    from tailorlm.data.token_cache import build_token_cache

    cache = build_token_cache(files, tokenizer, progress=world.main) if world.main else None
    barrier(world)
    return cache if cache is not None else build_token_cache(files, tokenizer, progress=False)


def _is_text(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() in TEXT_SUFFIXES
