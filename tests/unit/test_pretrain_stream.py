"""Pre-training streamed from a memory-mapped token cache: the blocks are the corpus's tokens, every block is seen
once per epoch, eval is the held-out tail, and a run resumed from a checkpoint continues bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console
from safetensors.torch import load_file

import tailorlm.training.loop as loop
from _pretrain_fakes import TEXT, token_cache  # noqa: F401 (fixture)
from _train_runs import losses, one_thread
from conftest import build_tiny_tokenizer
from tailorlm.errors import ConfigError, DataError
from tailorlm.training.batches import BatchPlan, StreamPlan
from tailorlm.training.checkpoint import list_checkpoints
from tailorlm.training.config import resolve_config
from tailorlm.training.setup import prepare

SHAPE = {"architecture": "llama", "layers": 2, "heads": 4, "kv_heads": 2, "hidden_size": 32, "context_length": 64,
         "dropout": 0.1}  # dropout: the resumed run must restore the random state too


def recipe(tmp_path: Path, *, steps: int = 12, data: dict | None = None, **top) -> Path:
    if not (tmp_path / "tok").exists():
        build_tiny_tokenizer().save_pretrained(tmp_path / "tok")
        (tmp_path / "corpus.txt").write_text(TEXT * 12, encoding="utf-8")
    content = {
        "model": {**SHAPE, "tokenizer": "tok"}, "objective": "pretrain", "method": "full",
        "output": str(tmp_path / "run"), "data": data or {"train": "corpus.txt", "split": {"eval": 0.25}},
        "train": {"max_steps": steps, "batch_size": 2, "max_length": 16, "lr": 1e-2, "warmup_steps": 2,
                  "eval_every": 4, "save_every": 3, "tensorboard": False},
        **top,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(content), encoding="utf-8")
    return path


def prepared(path: Path, **overrides):
    config = resolve_config(path, overrides=[f"{k}={v}" for k, v in overrides.items()])
    return prepare(config, resume=False, overwrite=True, console=Console(quiet=True))


def test_the_blocks_are_the_corpus_tokens_in_order_and_eval_is_the_held_out_tail(tmp_path, token_cache):
    run = prepared(recipe(tmp_path))
    plan, eval_plan = run.plan, run.eval_plan
    assert isinstance(plan, StreamPlan) and isinstance(eval_plan, StreamPlan)
    tokenizer = build_tiny_tokenizer()
    expected = tokenizer(TEXT * 12)["input_ids"] + [tokenizer.eos_token_id]  # one document: the whole file
    length = 15  # max_length 16: 15 targets per block
    total = (len(expected) - 1) // length
    assert (plan.first, plan.last, eval_plan.first, eval_plan.last) == (0, total - (total + 3) // 4, plan.last, total)
    # the rows are consecutive windows of the tokenized text, sharing one token; eval continues where train stops
    joined = np.concatenate([plan.tokens(), eval_plan.tokens()[1:]])
    assert joined.tolist() == expected[:total * length + 1]
    rows = [plan.block(b).tolist() for b in range(total)]
    assert rows == [b.tolist() for b in plan.cache.blocks(length)]  # the token cache's own reading of blocks
    assert all(len(r) == 16 for r in rows)
    # an epoch visits every training block once, in an order fixed by (seed, epoch)
    first = [b for batch in plan.epoch_batches(0) for b in batch]
    assert sorted(first) == list(range(plan.first, plan.last)) and first != sorted(first)
    assert [b for batch in plan.epoch_batches(1) for b in batch] != first
    assert [b for batch in plan.epoch_batches(0) for b in batch] == first
    batch, count = plan.collate([3, 0])
    assert batch["input_ids"].tolist() == [rows[3], rows[0]] and torch.equal(batch["labels"], batch["input_ids"])
    assert "attention_mask" not in batch and count == 32
    assert [b for batch in eval_plan.epoch_batches(0) for b in batch] == list(range(plan.last, total))


def test_streaming_is_chosen_for_whole_text_files_and_can_be_turned_off(tmp_path, token_cache):
    path = recipe(tmp_path)
    assert isinstance(prepared(path).plan, StreamPlan)
    in_memory = prepared(path, **{"data.stream": "false", "data.split": "{}"}).plan  # one example: the whole file
    assert isinstance(in_memory, BatchPlan) and in_memory.packing
    assert isinstance(prepared(path, **{"data.text_split": "line"}).plan, BatchPlan)  # lines are records


def test_a_jsonl_corpus_streams_when_asked(tmp_path, token_cache):
    path = recipe(tmp_path)
    rows = [{"text": line} for line in TEXT.splitlines() * 12]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run = prepared(path, **{"data.train": "docs.jsonl", "data.stream": "true"})
    tokenizer = build_tiny_tokenizer()
    expected = [t for r in rows for t in tokenizer(r["text"])["input_ids"] + [tokenizer.eos_token_id]]
    assert run.plan.cache.num_tokens == len(expected)
    assert np.asarray(run.plan.cache.tokens).tolist() == expected  # one document per row, each ended by EOS


@pytest.mark.parametrize("overrides, error, words", [
    ({"data.stream": "true", "objective": "sft"}, ConfigError, ["streaming from a token cache is for pre-training"]),
    ({"data.stream": "maybe"}, ConfigError, ["data.stream", "true or false"]),
    ({"data.train": "table.csv", "data.stream": "true"}, DataError, ["a streamed corpus is plain text or JSON Lines",
                                                                     "data.stream: false"]),
    ({"data.stream": "true", "data.columns": "{text: answer}"}, ConfigError, ["data.columns", "read as it is"]),
    ({"train.max_length": 64, "model.context_length": 512}, DataError, ["shorter than one block"]),
])
def test_bad_streaming_settings_are_refused(tmp_path, token_cache, overrides, error, words):
    path = recipe(tmp_path)
    (tmp_path / "table.csv").write_text("text\nhello\n", encoding="utf-8")
    (tmp_path / "corpus.txt").write_text(TEXT if "train.max_length" in overrides else TEXT * 12, encoding="utf-8")
    if overrides.get("objective") == "sft":
        content = yaml.safe_load(path.read_text())
        content["model"] = str(tmp_path / "tok")  # a scratch model would be refused first
        path.write_text(yaml.safe_dump(content))
    with pytest.raises(error) as err:
        prepared(path, **overrides)
    for word in words:
        assert word in str(err.value)


class Crash(Exception):
    pass


def crash_at(step: int):
    def callback(done: int, record: dict) -> None:
        if done == step:
            raise Crash(f"crashed after step {step}")
    return callback


def run_train(path: Path, *, resume: bool = False, callbacks=()) -> None:
    with one_thread():
        loop.train(resolve_config(path), resume=resume, callbacks=callbacks, console=Console(quiet=True))


def test_a_streamed_run_resumed_after_a_crash_matches_an_uninterrupted_run_bitwise(tmp_path, token_cache):
    reference_dir, crashed_dir = tmp_path / "reference", tmp_path / "crashed"
    for folder in (reference_dir, crashed_dir):
        folder.mkdir()
        recipe(folder, steps=12)
    run_train(reference_dir / "recipe.yaml")
    with pytest.raises(Crash):
        run_train(crashed_dir / "recipe.yaml", callbacks=(crash_at(7),))
    output = crashed_dir / "run"
    assert [p.name for p in list_checkpoints(output)] == ["step-0000004", "step-0000006"]  # best eval at 4, last at 6
    state = json.loads((output / "checkpoints/step-0000006/state.json").read_text())["train_state"]
    assert state["stream"]["block"] == 15 and state["stream"]["cache"].endswith(".bin")
    assert (state["epoch"], state["batch_index"]) != (0, 0)  # a position inside the stream, not a fresh start

    run_train(crashed_dir / "recipe.yaml", resume=True)
    reference, resumed = losses(reference_dir / "run"), losses(output)
    assert sorted(resumed) == list(range(1, 13))
    assert resumed == reference
    assert resumed[12] < resumed[1]
    a, b = load_file(str(reference_dir / "run/model.safetensors")), load_file(str(output / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_on_a_changed_corpus_is_refused(tmp_path, token_cache):
    path = recipe(tmp_path, steps=4)
    with pytest.raises(Crash):
        run_train(path, callbacks=(crash_at(3),))
    (tmp_path / "corpus.txt").write_text(TEXT * 13, encoding="utf-8")  # same path, other content
    with pytest.raises(ConfigError) as err:
        run_train(path, resume=True)
    assert "another token stream" in str(err.value) and "step-0000003" in str(err.value)
