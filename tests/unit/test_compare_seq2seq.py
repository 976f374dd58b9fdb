"""Encoder-decoder base models (T5, Marian) in `tailor compare` and `tailor eval`: trained as seq2seq on plain-text
sources, prompted with plain text, answered by the decoder; rag and the retention check are left out with notes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
import yaml

from conftest import build_tiny_t5_tokenizer, build_tiny_tokenizer
from tailorlm.evaluation import compare as cmp
from tailorlm.evaluation.evaluator import evaluate
from tailorlm.models.generate import generate, plain_prompt
from tailorlm.tasks.task import load_task

PAIRS = [("the quick brown fox", "fox"), ("the lazy dog", "dog"), ("capital of France", "Paris"),
         ("blood sugar", "diabetes"), ("the court held", "law"), ("shares rose", "finance")] * 2
SYSTEM = "Answer in one word."
NEW_TOKENS = 6


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory) -> Path:
    """A tiny random T5 folder (pad 0 is the decoder start, </s> 1 the end), weights wide enough to write varied text."""
    torch.manual_seed(0)
    tokenizer = build_tiny_t5_tokenizer()
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
        dropout_rate=0.0, initializer_factor=3.0, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id))
    folder = tmp_path_factory.mktemp("tiny-t5")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_recipe(folder: Path, model: Path, **extra) -> Path:
    (folder / "pairs.jsonl").write_text("".join(json.dumps({"en": s, "de": t}) + "\n" for s, t in PAIRS))
    recipe = {"task": {"name": "toy-translation", "instruction": "Translate.", "system": SYSTEM, "answer": "text",
                       "metric": "chrf"},
              "data": {"train": "pairs.jsonl", "format": "source_target", "columns": {"source": "en", "target": "de"},
                       "split": {"test": 0.25, "eval": 0.25}},
              "base_models": [str(model)], "eval": {"batch_size": 2, "max_new_tokens": NEW_TOKENS}, "seed": 0, **extra}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def greedy_by_hand(model, tokenizer, prompt: str, new_tokens: int = NEW_TOKENS) -> str:
    """One unpadded model.generate call; only the tokens the decoder wrote after its start token."""
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                max_new_tokens=new_tokens, do_sample=False)
    return tokenizer.decode(output[0, 1:], skip_special_tokens=True)


def test_is_seq2seq_detects_an_encoder_decoder_and_not_a_decoder_or_an_encoder(t5_dir, tiny_llama_dir, tmp_path):
    tokenizer = build_tiny_tokenizer()
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=64))
    bert.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    assert cmp.is_seq2seq(str(t5_dir)) and not cmp.is_encoder(str(t5_dir))
    assert not cmp.is_seq2seq(str(tiny_llama_dir))
    assert not cmp.is_seq2seq(str(tmp_path / "bert")) and cmp.is_encoder(str(tmp_path / "bert"))


def test_training_rows_of_an_encoder_decoder_are_the_plain_prompt_and_the_answer(t5_dir, tmp_path):
    plan = cmp.load_plan(write_recipe(tmp_path, t5_dir), output=tmp_path / "out")
    files = cmp.write_training_data(plan.task, tmp_path / "data", classify=False, seq2seq=True)
    rows = [json.loads(line) for line in files["train"].read_text().splitlines()]
    first = plan.task.examples("train")[0]
    assert rows[0] == {"source": f"{SYSTEM}\n\nTranslate.\n\n{first.input}", "target": first.references[0]}
    assert len(rows) == len(plan.task.examples("train")) and set(files) == {"train", "eval"}


def test_default_strategies_of_an_encoder_decoder_leave_out_rag_and_the_retention_check(t5_dir, tmp_path):
    (tmp_path / "general.txt").write_text("Some general text.\n")
    plan = cmp.load_plan(write_recipe(tmp_path, t5_dir, corpus="docs", retention={"text": "general.txt"}),
                         output=tmp_path / "out")
    names, notes = cmp.strategies_for(str(t5_dir), plan)
    assert list(names) == ["zero_shot", "few_shot", "prompt_search", "prompt_tuning", "p_tuning", "lora", "full"]
    assert [note.split(":")[0] for note in notes] == [f"rag left out for {t5_dir}",
                                                      f"retention check left out for {t5_dir}"]


def test_compare_trains_an_encoder_decoder_as_seq2seq_and_prompts_it_with_plain_text(t5_dir, tmp_path):
    from tailorlm.strategies.base import load_specialist
    from tailorlm.strategies.prompting import PromptSpecialist

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Paris is the capital of France.")
    (tmp_path / "general.txt").write_text("Some general text to measure forgetting on.\n" * 5)
    recipe = write_recipe(tmp_path, t5_dir, corpus="docs", retention={"text": "general.txt"}, strategies={
        "zero_shot": {}, "few_shot": {"k": 2, "selection": "random"}, "prompt_search": {"k": [0, 1], "paraphrases": 1},
        "rag": {}, "lora": {"train": {"max_steps": 3, "lr": 1e-2}}})
    board = cmp.compare(recipe, output=tmp_path / "out")
    model = str(t5_dir)
    assert [(e["strategy"], e["status"]) for e in board.entries] == [
        ("zero_shot", "ok"), ("few_shot", "ok"), ("prompt_search", "ok"), ("lora", "ok")]
    assert board.data["notes"] == [
        f"rag left out for {model}: an encoder-decoder is trained and prompted with plain text, and rag answers "
        "through a chat model",
        f"retention check left out for {model}: it measures a causal language model's perplexity on general text, "
        "and this is an encoder-decoder"]
    lora = board.entry(model, "lora")
    assert "retention" not in lora and lora["steps"] == 3 and lora["scoring"] == "generate"
    folder = tmp_path / "out" / cmp.slug(model)
    manifest = json.loads((folder / "lora" / "specialist" / "specialist.json").read_text())
    assert manifest["objective"] == "seq2seq" and manifest["weights"] == "adapter"
    assert json.loads((folder / "lora" / "train_config.json").read_text())["objective"] == "seq2seq"
    task = cmp.load_plan(recipe, output=tmp_path / "out").task
    test = task.examples("test")

    def predictions(entry: str) -> list[dict]:
        return [json.loads(line) for line in (folder / entry / "eval" / "predictions.jsonl").read_text().splitlines()]

    # each entry's answers are what its model's decoder writes for the plain-text prompt, one example at a time
    trained, tokenizer, _ = load_specialist(folder / "lora" / "specialist")
    rows = predictions("lora")
    assert len(rows) == len(test)
    for example, row in zip(test, rows):
        assert row["output"] == greedy_by_hand(trained, tokenizer, f"{SYSTEM}\n\nTranslate.\n\n{example.input}")
        assert row["prediction"] == row["output"].strip()
    base = transformers.T5ForConditionalGeneration.from_pretrained(t5_dir).eval()
    zero = predictions("zero_shot")
    assert zero[0]["output"] == greedy_by_hand(base, tokenizer, plain_prompt(task.messages(test[0])))
    assert any(row["output"] for row in zero) and [r["output"] for r in zero] != [r["output"] for r in rows]
    shots = PromptSpecialist.load(folder / "few_shot" / "specialist")
    prompt = plain_prompt(shots.messages(task, test[0]))
    assert prompt == "\n\n".join([SYSTEM, *(f"{task.user_text(s)}\n{task.answer_text(s)}" for s in shots.shots),
                                   task.user_text(test[0])]) and len(shots.shots) == 2
    assert predictions("few_shot")[0]["output"] == greedy_by_hand(base, tokenizer, prompt)
    search = PromptSpecialist.load(folder / "prompt_search" / "specialist").search  # scored through the T5 on eval
    assert {trial["k"] for trial in search} == {0, 1} and all(0.0 <= trial["score"] <= 1.0 for trial in search)


def test_evaluating_an_encoder_decoder_matches_greedy_generation_and_scores_label_words(t5_dir, tmp_path):
    base = transformers.T5ForConditionalGeneration.from_pretrained(t5_dir).eval()
    tokenizer = build_tiny_t5_tokenizer()
    task = load_task(write_recipe(tmp_path, t5_dir))
    result = evaluate(str(t5_dir), task, split="train", batch_size=3, max_new_tokens=NEW_TOKENS, progress=False)
    assert result.scoring == "generate" and result.examples == len(task.examples("train"))
    for example, row in zip(task.examples("train"), result.predictions):
        assert row["output"] == greedy_by_hand(base, tokenizer, plain_prompt(task.messages(example)))
    assert generate(base, tokenizer, "the lazy dog", max_new_tokens=NEW_TOKENS) == greedy_by_hand(
        base, tokenizer, "the lazy dog") != ""  # the decoder's text only: an encoder-decoder's output has no prompt
    # a label task: each label word's log-probability as the first words the decoder writes
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps({"text": s, "label": t}) + "\n" for s, t in PAIRS))
    words = sorted({t for _, t in PAIRS})
    recipe = tmp_path / "labels.yaml"
    recipe.write_text(yaml.safe_dump({"task": {"answer": "label", "labels": words}, "data": {"train": "labels.jsonl"}}))
    labels = load_task(recipe)
    result = evaluate(str(t5_dir), labels, split="train", batch_size=4, limit=4, progress=False)
    assert result.scoring == "choice" and "generate" in result.extra
    for example, row in zip(labels.examples("train"), result.predictions):
        source = tokenizer(plain_prompt(labels.messages(example)), return_tensors="pt")
        by_hand = {}
        for word in words:
            spellings = []
            for spelling in dict.fromkeys((word, word[:1].upper() + word[1:])):
                ids = tokenizer(spelling, add_special_tokens=False)["input_ids"]
                with torch.no_grad():
                    logits = base(**source, decoder_input_ids=torch.tensor([[0, *ids[:-1]]])).logits[0]
                spellings.append(sum(float(logits.log_softmax(-1)[j, t]) for j, t in enumerate(ids)))
            by_hand[word] = float(torch.tensor(spellings).logsumexp(0))
        assert row["logprobs"] == pytest.approx(by_hand, rel=1e-5, abs=1e-4)  # padded batches differ in float noise
        assert row["prediction"] == max(by_hand, key=by_hand.get)
