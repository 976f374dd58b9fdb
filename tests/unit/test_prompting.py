"""Prompt strategies: zero-shot, few-shot shot selection (random, balanced, kNN), prompt search, save and load."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tailorlm.data.spec import DataSpec
from tailorlm.errors import ConfigError
from tailorlm.strategies.prompting import (
    POOL_FILE, VECTORS_FILE, PromptSpecialist, fit_few_shot, fit_prompt_search, fit_prompting, fit_zero_shot,
    is_prompt_specialist, nearest, parse_paraphrases, propose_paraphrases,
)
from tailorlm.tasks.task import Task

TRAIN = [
    ("stocks fall sharply today", 0), ("shares drop on weak earnings", 0), ("market crash fears grow", 0),
    ("stocks rise on strong earnings", 1), ("shares surge after upbeat guidance", 1), ("market rally continues", 1),
    ("company holds annual meeting", 2), ("board announces new director", 2), ("firm files quarterly report", 2),
]
EVAL = [("profits slump at bank", 0), ("profits jump at bank", 1), ("bank names new chair", 2)]
TEST = [("shares rise on strong earnings", 1), ("stocks rise on strong earnings", 1), ("bank opens branch", 2)]
LABELS = {"0": "bearish", "1": "bullish", "2": "neutral"}
INSTRUCTION = "Classify the sentiment of this financial news tweet."
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class BagOfWords:
    """A deterministic embedder: word counts over a fixed vocabulary (every word of the data), unit length."""

    def __init__(self) -> None:
        words = sorted({w for text, _ in TRAIN + EVAL + TEST for w in text.split()})
        self.index = {w: i for i, w in enumerate(words)}
        self.embedded: list[str] = []
        self.queries: list[str] = []

    def _vectors(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(self.index) + 1), dtype=np.float32)  # the last column: unknown words
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, self.index.get(word, len(self.index))] += 1
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def embed(self, texts, *, progress=False):
        self.embedded += list(texts)
        return self._vectors(list(texts))

    def embed_queries(self, texts, *, progress=False):
        self.queries += list(texts)
        return self._vectors(list(texts))


def _csv(path: Path, rows) -> str:
    path.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows), encoding="utf-8")
    return str(path)


def label_task(tmp_path: Path, cls: type = Task) -> Task:
    spec = DataSpec(train=_csv(tmp_path / "train.csv", TRAIN), eval=_csv(tmp_path / "eval.csv", EVAL),
                    test=_csv(tmp_path / "test.csv", TEST), format="text_label")
    return cls(name="news", instruction=INSTRUCTION, system=None, answer="label", labels=dict(LABELS),
               metric="accuracy", data=spec, source="recipe.yaml")


def text_task(tmp_path: Path) -> Task:
    lines = "question,answer\n" + "".join(f"what is {i} plus {i},{2 * i}\n" for i in range(6))
    (tmp_path / "qa.csv").write_text(lines, encoding="utf-8")
    (tmp_path / "qa_eval.csv").write_text("question,answer\nwhat is 9 plus 9,18\n", encoding="utf-8")
    spec = DataSpec(train=str(tmp_path / "qa.csv"), eval=str(tmp_path / "qa_eval.csv"), format="qa")
    return Task(name="sums", instruction="Answer the question.", system=None, answer="text", labels=None,
                metric="exact_match", data=spec, source="recipe.yaml")


class SpyTask(Task):
    """A task that records which splits were read."""

    read: list[str] = []

    def examples(self, split):
        SpyTask.read.append(split)
        return super().examples(split)


@pytest.fixture
def task(tmp_path):
    return label_task(tmp_path)


@pytest.fixture
def base(tiny_llama_dir):
    return str(tiny_llama_dir)


def _labels(shots) -> list[str]:
    return [s.references[0] for s in shots]


def test_zero_shot_uses_the_instruction_and_system(task, base):
    example = task.examples("test")[0]
    spec = fit_zero_shot(task, base, {})
    assert spec.shots == [] and spec.k == 0 and spec.selection is None
    assert spec.messages(task, example) == [{"role": "user", "content": f"{INSTRUCTION}\n\nshares rise on strong earnings"
                                             "\n\nAnswer with one of: bearish, bullish, neutral."}]
    spec = fit_zero_shot(task, base, {"instruction": "Is this good news?", "system": "You are an analyst."})
    messages = spec.messages(task, example)
    assert messages[0] == {"role": "system", "content": "You are an analyst."}
    assert messages[1]["content"].startswith("Is this good news?\n\nshares rise")
    assert task.instruction == INSTRUCTION and task.system is None  # the task itself is left alone


def test_balanced_shots_cover_every_label(task, base):
    spec = fit_few_shot(task, base, {"k": 3, "selection": "balanced", "seed": 0})
    assert sorted(_labels(spec.shots)) == ["0", "1", "2"]
    six = fit_few_shot(task, base, {"k": 6, "selection": "balanced", "seed": 3})
    assert sorted(_labels(six.shots)) == ["0", "0", "1", "1", "2", "2"]
    assert len({s.id for s in six.shots}) == 6
    again = fit_few_shot(task, base, {"k": 6, "selection": "balanced", "seed": 3})
    assert [s.id for s in again.shots] == [s.id for s in six.shots]
    messages = six.messages(task, task.examples("test")[2])
    assert [m["role"] for m in messages] == ["user", "assistant"] * 6 + ["user"]
    assert [m["content"] for m in messages[1:12:2]] == [LABELS[label] for label in _labels(six.shots)]


def test_random_shots_are_reproducible_with_the_seed(task, base):
    first = fit_few_shot(task, base, {"k": 4, "selection": "random", "seed": 0})
    second = fit_few_shot(task, base, {"k": 4, "selection": "random", "seed": 0})
    other = fit_few_shot(task, base, {"k": 4, "selection": "random", "seed": 1})
    assert [s.id for s in first.shots] == [s.id for s in second.shots]
    assert [s.id for s in first.shots] != [s.id for s in other.shots]
    assert len({s.id for s in first.shots}) == 4 and all(s.id.startswith("train-") for s in first.shots)


def test_balanced_on_a_text_task_falls_back_to_random_and_says_so(tmp_path, base):
    task = text_task(tmp_path)
    spec = fit_few_shot(task, base, {"k": 2, "selection": "balanced", "seed": 0})
    assert spec.selection == "random" and "balanced selection needs a label task" in spec.settings["note"]
    random_spec = fit_few_shot(task, base, {"k": 2, "selection": "random", "seed": 0})
    assert [s.id for s in spec.shots] == [s.id for s in random_spec.shots]
    messages = spec.messages(task, task.examples("eval")[0])
    assert messages[1]["content"] == str(2 * int(spec.shots[0].input.split()[2]))


def test_knn_picks_the_nearest_examples_and_never_the_test_input_itself(task, base):
    embedder = BagOfWords()
    spec = fit_few_shot(task, base, {"k": 2, "selection": "knn"}, embedder=embedder)
    assert spec.shots == [] and len(spec.pool) == 9 and embedder.embedded == [t for t, _ in TRAIN]
    near = task.examples("test")[0]  # "shares rise on strong earnings": 4 words shared, then 3
    assert [s.input for s in spec.shots_for(near)] == ["shares drop on weak earnings", "stocks rise on strong earnings"]
    duplicate = task.examples("test")[1]  # the same text as a train row: that row must not be a shot
    assert [s.input for s in spec.shots_for(duplicate)] == ["stocks fall sharply today", "shares drop on weak earnings"]
    messages = spec.messages(task, near)
    assert messages[2]["content"].endswith("stocks rise on strong earnings\n\nAnswer with one of: bearish, bullish, neutral.")
    assert messages[3] == {"role": "assistant", "content": "bullish"}


def test_nearest_orders_least_similar_first_and_skips_excluded():
    vectors = np.eye(4, dtype=np.float32)
    query = np.array([0.8, 0.6, 0.0, 0.0], dtype=np.float32)
    assert nearest(vectors, query, 2) == [1, 0]
    assert nearest(vectors, query, 2, exclude={0}) == [2, 1]


def test_bad_settings_name_the_key(task, base):
    with pytest.raises(ConfigError) as err:
        fit_few_shot(task, base, {"k": 10})
    assert err.value.key == "k" and "k=10" in str(err.value) and "9 example(s)" in str(err.value)
    with pytest.raises(ConfigError) as err:
        fit_few_shot(task, base, {"selection": "clever"})
    assert err.value.key == "selection" and "random, balanced, knn" in str(err.value)
    with pytest.raises(ConfigError) as err:
        fit_few_shot(task, base, {"shots": 3})
    assert err.value.key == "shots" and "selection" in str(err.value)
    with pytest.raises(ConfigError) as err:
        fit_prompt_search(task, base, {"k": [0, 12]}, score=lambda spec, examples: 0.0)
    assert err.value.key == "k" and "k=12" in str(err.value)
    with pytest.raises(ConfigError) as err:
        fit_prompting("chain_of_thought", task, base)
    assert "zero_shot, few_shot, prompt_search" in str(err.value)


def test_saved_and_loaded_specialist_gives_identical_messages(task, base, tmp_path):
    spec = fit_few_shot(task, base, {"k": 3, "selection": "balanced", "system": "Be brief."})
    folder = spec.save(tmp_path / "few", task=task)
    manifest = json.loads((folder / "specialist.json").read_text())
    assert manifest["strategy"] == "few_shot" and manifest["weights"] == "none"
    assert manifest["base_model"] == base and manifest["base_model_path"] == str(Path(base).absolute())
    config = manifest["config"]
    assert config["instruction"] == INSTRUCTION and config["system"] == "Be brief."
    assert config["selection"] == "balanced" and config["k"] == 3 and config["seed"] == 0
    assert [s["input"] for s in config["shots"]] == [s.input for s in spec.shots]
    assert config["shots"][0]["references"] == spec.shots[0].references
    assert list(manifest["data"]["train"].values())[0] and is_prompt_specialist(folder)
    loaded = PromptSpecialist.load(folder)
    for example in task.examples("test"):
        assert loaded.messages(task, example) == spec.messages(task, example)


def test_saved_knn_specialist_keeps_its_pool_vectors(task, base, tmp_path):
    spec = fit_few_shot(task, base, {"k": 2, "selection": "knn"}, embedder=BagOfWords())
    folder = spec.save(tmp_path / "knn")
    assert (folder / POOL_FILE).is_file() and np.load(folder / VECTORS_FILE).shape == spec.pool_vectors.shape
    embedder = BagOfWords()
    loaded = PromptSpecialist.load(folder, embedder=embedder)
    for example in task.examples("test"):
        assert loaded.messages(task, example) == spec.messages(task, example)
    assert embedder.embedded == [] and embedder.queries == [t for t, _ in TEST]  # only the test inputs embedded
    assert sorted(p.name for p in folder.iterdir()) == [POOL_FILE, VECTORS_FILE, "specialist.json"]


def test_a_saved_prompt_specialist_loads_its_base_model(task, base, tmp_path):
    from tailorlm.strategies.base import load_specialist

    folder = fit_zero_shot(task, base, {}).save(tmp_path / "zero")
    model, tokenizer, manifest = load_specialist(folder)
    assert manifest.strategy == "zero_shot" and model.config.hidden_size == 32 and len(tokenizer) > 0


def _fake_score(spec, examples):
    """Prefers instructions that mention investors; one point per example, whatever k."""
    return sum(1.0 for _ in examples) * (1.0 if "investors" in spec.instruction else 0.5)


def test_prompt_search_keeps_the_preferred_instruction_and_never_reads_test(tmp_path, base):
    SpyTask.read = []
    task = label_task(tmp_path, SpyTask)
    seen: list[str] = []
    calls: list[tuple[str, int]] = []

    def score(spec, examples):
        seen.extend(e.id for e in examples)
        for example in examples:
            spec.messages(task, example)
        return _fake_score(spec, examples)

    def propose(instruction, n):
        calls.append((instruction, n))
        return ["Rate this tweet for investors.", "", "rate this tweet for investors", INSTRUCTION][:n + 2]

    settings = {"instructions": ["Label the tweet."], "paraphrases": 2, "k": [2, 0], "selection": "random"}
    spec = fit_prompt_search(task, base, settings, score=score, propose=propose)
    assert spec.instruction == "Rate this tweet for investors." and spec.k == 0 and spec.shots == []
    assert calls == [(INSTRUCTION, 2), ("Label the tweet.", 2)]
    assert set(SpyTask.read) <= {"train", "eval"} and "eval" in SpyTask.read and "test" not in SpyTask.read
    assert set(seen) == {"eval-0", "eval-1", "eval-2"}
    tried = [(t["instruction"], t["k"], t["score"]) for t in spec.search]
    assert len(tried) == 6 and ("Rate this tweet for investors.", 2, 3.0) in tried and (INSTRUCTION, 0, 1.5) in tried
    assert {t["source"] for t in spec.search if t["instruction"] == "Rate this tweet for investors."} == {"paraphrase"}
    folder = spec.save(tmp_path / "search", task=task)
    config = json.loads((folder / "specialist.json").read_text())["config"]
    assert config["search"] == spec.search and config["k"] == 0
    assert "test" not in SpyTask.read


def test_prompt_search_ties_go_to_fewer_shots_then_the_shorter_instruction(task, base):
    spec = fit_prompt_search(task, base, {"instructions": ["Sentiment?"], "k": [3, 1]},
                             score=lambda spec, examples: 0.5)
    assert spec.instruction == "Sentiment?" and spec.k == 1 and len(spec.shots) == 1
    assert spec.settings["note"].startswith("no paraphrases")


def test_prompt_search_with_knn_embeds_the_pool_and_each_eval_input_once(task, base):
    embedder = BagOfWords()

    def score(spec, examples):
        assert all(len(spec.messages(task, e)) == 2 * spec.k + 1 for e in examples)
        return 1.0 if spec.k == 2 else 0.0

    spec = fit_prompt_search(task, base, {"k": [1, 2], "selection": "knn", "instructions": ["Sentiment?"]},
                             score=score, embedder=embedder)
    assert (spec.k, spec.selection, spec.instruction, len(spec.pool)) == (2, "knn", "Sentiment?", 9)
    assert embedder.embedded == [t for t, _ in TRAIN]
    assert sorted(embedder.queries) == sorted(t for t, _ in EVAL)


def test_parse_paraphrases_strips_numbering_and_drops_bad_lines():
    text = ("Here are three rewrites:\n1. Decide if the tweet is good news.\n- \"Say whether investors would like it.\"\n"
            "2) decide if the tweet is good news\n\n3. " + "x" * 300 + "\nClassify the sentiment of this tweet.")
    assert parse_paraphrases(text, "Classify the sentiment of this tweet", known=["Old one."]) == [
        "Old one.", "Decide if the tweet is good news.", "Say whether investors would like it."]


def test_propose_paraphrases_greedy_then_seeded_samples(monkeypatch):
    import sys

    generation = sys.modules["tailorlm.models.generate"]
    calls = []
    answers = iter(["A first rewrite.\nA first rewrite.", "A second rewrite.\n", "A first rewrite.\nA third one."])

    def fake_generate(model, tokenizer, prompt, *, max_new_tokens, temperature=0.0, seed=None):
        calls.append((temperature, seed))
        return next(answers)

    class Tokenizer:
        chat_template = None

        def __call__(self, text):
            return {"input_ids": text.split()}

    monkeypatch.setattr(generation, "generate", fake_generate)
    found = propose_paraphrases(object(), Tokenizer(), "Classify it.", 3, seed=7)
    assert found == ["A first rewrite.", "A second rewrite.", "A third one."]
    assert calls == [(0.0, None), (0.8, 7), (0.8, 8)]


def test_propose_paraphrases_with_a_tiny_model(tiny_llama_dir):
    from tailorlm.models.load import load_model

    model, tokenizer = load_model(str(tiny_llama_dir))
    for tokenizer.chat_template in (None, CHATML):  # a plain prompt, then chat messages with the worked example
        found = propose_paraphrases(model, tokenizer, "Classify the sentiment.", 2)
        assert propose_paraphrases(model, tokenizer, "Classify the sentiment.", 2) == found  # seeded: repeatable
        assert len(found) <= 2 and len(set(found)) == len(found)
        assert all(line.strip() and len(line) <= 200 and not re.match(r"^\d+[.)]", line) for line in found)


def test_propose_paraphrases_shows_chat_models_a_worked_example(monkeypatch):
    import sys

    from tailorlm.strategies.prompting import DEMO_REWRITES

    prompts = []

    def fake_generate(model, tokenizer, prompt, *, max_new_tokens, temperature=0.0, seed=None):
        prompts.append(prompt)
        return "Say if the tweet is good news.\nTell whether investors would cheer.\n"

    class Tokenizer:
        chat_template = "chatml"

        def __call__(self, text):
            return {"input_ids": text.split()}

    monkeypatch.setattr(sys.modules["tailorlm.models.generate"], "generate", fake_generate)
    monkeypatch.setattr(sys.modules["tailorlm.models.generate"], "render_prompt",
                        lambda tokenizer, messages: "\n".join(m["content"] for m in messages))
    assert propose_paraphrases(object(), Tokenizer(), "Classify it.", 2) == [
        "Say if the tweet is good news.", "Tell whether investors would cheer."]
    assert len(prompts) == 1 and [m["role"] for m in prompts[0]] == ["user", "assistant", "user"]
    assert prompts[0][1]["content"] == "\n".join(DEMO_REWRITES) and prompts[0][2]["content"].endswith("Instruction: Classify it.")
