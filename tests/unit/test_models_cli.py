"""`tailor models ...` through `tailorlm.cli.main`: output on stdout, one-paragraph errors on stderr, exit codes."""

from __future__ import annotations

import json

import pytest

from tailorlm.cli import main


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILORLM_HOME", str(tmp_path / "home"))


def test_info_prints_the_facts(tiny_llama_dir, capsys):
    from tailorlm.models.info import model_info

    assert main(["models", "info", str(tiny_llama_dir)]) == 0
    out = capsys.readouterr().out
    count = model_info(str(tiny_llama_dir)).parameters
    assert "LlamaForCausalLM (llama)" in out and f"({count:,})" in out
    assert "chat template    no" in out


def test_info_json(tiny_llama_dir, capsys):
    assert main(["models", "info", str(tiny_llama_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["architecture"] == "LlamaForCausalLM" and data["context_length"] == 256
    assert data["chat_template"] is False and data["parameters"] > 0


def test_unknown_name_is_a_one_paragraph_error(capsys):
    assert main(["models", "info", "smolm2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: unknown model reference 'smolm2'")
    assert "smollm2-135m-instruct" in captured.err and "minilm-l6" in captured.err
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1


def test_pull_of_a_missing_file_fails_cleanly(tmp_path, capsys):
    assert main(["models", "pull", str(tmp_path / "nope.gguf")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_list_shows_the_packs(capsys):
    assert main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["smollm2-135m-instruct"]["pulled"] is False and rows["minilm-l6"]["kind"] == "pack"
    assert main(["models", "list"]) == 0
    assert "smollm2-135m-instruct" in capsys.readouterr().out
