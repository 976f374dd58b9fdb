"""Bad input to `tailor train`: a clear error (exit code 2) before any training, and no existing run is harmed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from _train_runs import one_thread, train_args, write_chat
from tailorlm.cli import main


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if any optimizer step runs; also fail if a model loads, unless the test allows it."""
    import tailorlm.models.load as load
    import tailorlm.training.loop as loop

    def stepped(*args, **kwargs):
        raise AssertionError("training compute started despite bad input")

    monkeypatch.setattr(loop, "_optimizer_step", stepped)
    real_load = load.load_model
    allowed = {"model": False}

    def loading(*args, **kwargs):
        assert allowed["model"], "the model was loaded although the input could be refused without it"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(load, "load_model", loading)
    return allowed


def _fails(args: list[str], capsys) -> str:
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err
    return err.splitlines()[-1]


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.fixture
def data(tmp_path) -> Path:
    return write_chat(tmp_path / "chat.jsonl", count=8)


@pytest.mark.parametrize("flags, words", [
    (["--method", "lorra"],
     ["unknown method", "'method'", "lorra", "lora, dora, ia3", "prefix_tuning", "Did you mean 'lora'"]),
    (["--objective", "chat"], ["unknown objective", "'objective'", "pretrain, sft, classify, seq2seq"]),
    (["--objective", "pretrain", "--method", "prompt_tuning"],
     ["'prompt_tuning' does not fit objective 'pretrain'", "for pretrain: full, freeze, lora, dora, ia3",
      "sft: full, freeze, lora, dora, ia3, prompt_tuning"]),
    (["--set", "train.lr=0"], ["learning rate must be positive", "train.lr", "found 0.0"]),
    (["--set", "train.lr=-1e-4"], ["learning rate must be positive", "train.lr", "found -0.0001"]),
], ids=["method", "objective", "method-for-objective", "zero-lr", "negative-lr"])
def test_bad_settings_are_refused_before_the_model_loads(tiny_llama_dir, data, tmp_path, capsys, no_training, flags,
                                                         words):
    output = tmp_path / "run"
    args = train_args(tiny_llama_dir, data, output)
    # Later flags win with argparse, so the bad value replaces the good one.
    message = _fails([*args, *flags], capsys)
    for word in words:
        assert word in message
    assert not output.exists()


def test_max_length_above_the_context_names_the_limit(tiny_llama_dir, data, tmp_path, capsys, no_training):
    no_training["model"] = True  # the context length is a fact of the model
    output = tmp_path / "run"
    message = _fails([*train_args(tiny_llama_dir, data, output), "--set", "train.max_length=4096"], capsys)
    assert "max_length is longer than the model's context" in message
    assert "train.max_length" in message and "found 4096" in message and "at most 256 tokens" in message
    assert not output.exists()


def test_an_objective_the_model_cannot_do_is_refused(tiny_llama_dir, data, tmp_path, capsys, no_training):
    no_training["model"] = True
    output = tmp_path / "run"
    message = _fails([*train_args(tiny_llama_dir, data, output), "--objective", "seq2seq"], capsys)
    assert "no 'seq2seq' form" in message and "llama" in message and "encoder-decoder" in message
    assert not output.exists()


def test_empty_training_data_names_the_file(tiny_llama_dir, tmp_path, capsys, no_training):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    message = _fails(train_args(tiny_llama_dir, empty, tmp_path / "run"), capsys)
    assert str(empty) in message and "empty" in message and "at least one row" in message


def test_sft_data_without_assistant_turns_names_the_file(tiny_llama_dir, tmp_path, capsys, no_training):
    no_training["model"] = True  # found while tokenizing, which needs the model's tokenizer
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}?"}]}) + "\n"
                                 for i in range(4)), encoding="utf-8")
    message = _fails(train_args(tiny_llama_dir, questions, tmp_path / "run"), capsys)
    assert str(questions) in message and "no assistant turns" in message and "assistant answers" in message


@pytest.fixture(scope="module")
def finished_run(tiny_llama_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(data file, output folder) of a finished 2-step LoRA run, to copy into each test."""
    root = tmp_path_factory.mktemp("finished")
    data = write_chat(root / "chat.jsonl", count=8)
    output = root / "run"
    with one_thread():
        assert main(["train", *train_args(tiny_llama_dir, data, output, steps=2)]) == 0
    return data, output


@pytest.fixture
def existing(finished_run, tmp_path) -> tuple[Path, Path]:
    data, output = finished_run
    shutil.copytree(output, tmp_path / "run")
    return data, tmp_path / "run"


def test_a_folder_holding_a_run_is_refused_without_resume_or_overwrite(tiny_llama_dir, existing, capsys, no_training):
    data, output = existing
    before = _snapshot(output)
    message = _fails(train_args(tiny_llama_dir, data, output, steps=2), capsys)
    assert "already holds files" in message and "--resume" in message and "--overwrite" in message
    assert _snapshot(output) == before


def test_resume_with_different_settings_is_refused_naming_the_setting(tiny_llama_dir, existing, capsys, no_training):
    data, output = existing
    before = _snapshot(output)
    message = _fails([*train_args(tiny_llama_dir, data, output, steps=4, extra=("lora.r=4",)), "--resume"], capsys)
    assert "--resume needs the settings of the run" in message and "lora.r was 16, now 4" in message
    assert _snapshot(output) == before


def test_resume_and_overwrite_together_are_refused(tiny_llama_dir, existing, capsys, no_training):
    data, output = existing
    before = _snapshot(output)
    message = _fails([*train_args(tiny_llama_dir, data, output), "--resume", "--overwrite"], capsys)
    assert "--resume and --overwrite contradict each other" in message
    assert _snapshot(output) == before


def test_resume_without_a_checkpoint_is_refused(tiny_llama_dir, data, tmp_path, capsys, no_training):
    message = _fails([*train_args(tiny_llama_dir, data, tmp_path / "new"), "--resume"], capsys)
    assert "nothing to resume" in message


def test_a_run_that_fails_at_data_loading_leaves_the_folder_byte_identical(tiny_llama_dir, existing, tmp_path, capsys,
                                                                         no_training):
    no_training["model"] = True
    _, output = existing
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"messages": [{"role": "user", "content": "question?"}]}) + "\n", encoding="utf-8")
    before = _snapshot(output)
    message = _fails([*train_args(tiny_llama_dir, questions, output), "--overwrite"], capsys)
    assert "no assistant turns" in message
    assert _snapshot(output) == before
    assert not output.with_name("run.previous").exists()


def test_overwrite_moves_the_old_run_aside_intact(tiny_llama_dir, existing, capsys):
    data, output = existing
    before = _snapshot(output)
    with one_thread():
        assert main(["train", *train_args(tiny_llama_dir, data, output, steps=1), "--overwrite"]) == 0
    assert _snapshot(output.with_name("run.previous")) == before
    assert json.loads((output / "specialist.json").read_text())["steps"] == 1


def test_resume_accepts_other_cpu_paths_and_a_run_file_of_an_older_version(tiny_llama_dir, existing):
    # How the CPU multiplies (train.cpu_matmul) and whether it uses the compiled kernels (train.cpu_kernels) change
    # only the last bits of the results, so they may change between the run and its resume; train.frozen_weights is a setting older
    # versions recorded.
    data, output = existing
    run_file = output / "run.json"
    saved = json.loads(run_file.read_text(encoding="utf-8"))
    saved["train"]["frozen_weights"] = "fp16"
    run_file.write_text(json.dumps(saved), encoding="utf-8")
    with one_thread():
        assert main(["train", *train_args(tiny_llama_dir, data, output, steps=4, extra=("train.cpu_matmul=default",
                                                                                "train.cpu_kernels=false")),
                     "--resume"]) == 0
    assert json.loads((output / "specialist.json").read_text(encoding="utf-8"))["steps"] == 4
