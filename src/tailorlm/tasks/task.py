"""A task: data splits, an instruction, an answer form and a metric, read from a recipe's `task:` and `data:` sections.

    task:
      name: finance-news-sentiment
      instruction: "Classify the sentiment of this financial news tweet for investors."
      system: null                      # optional system prompt
      answer: label                     # label | text | number | code | span
      labels: {"0": bearish, "1": bullish, "2": neutral}   # data value -> the word the model says; a list: value == word
      metric: macro_f1                  # see tasks/metrics.py METRICS
      input_template: null              # e.g. "Question: {input}\\nContext: {context}"
    data:                               # the DataSpec section, read exactly as `tailor train` reads it
      train: data/train.csv
      split: {test: 0.2}

Every split becomes a list of `TaskExample`s: classification rows give (text, label); chat rows give the last user
message and the last assistant message; QA and SQuAD rows keep their passage apart as `context`; HumanEval-style
code rows give the prompt and a test program.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from tailorlm.data.examples import ChatExample, ClassificationExample, Example
from tailorlm.data.spec import SPLITS, DataSpec
from tailorlm.errors import ConfigError, DataError

ANSWER_FORMS: tuple[str, ...] = ("label", "text", "number", "code", "span")
DEFAULT_METRICS: dict[str, str] = {
    "label": "accuracy", "text": "rougeL", "number": "numeric_accuracy", "code": "pass_at_1", "span": "token_f1",
}
TASK_KEYS: tuple[str, ...] = ("name", "instruction", "system", "answer", "labels", "metric", "input_template")
# HumanEval-style rows (prompt, canonical_solution, test, entry_point) read as prompt/completion when nothing else is said.
CODE_DATA_DEFAULTS: dict[str, Any] = {"format": "prompt_completion", "columns": {"completion": "canonical_solution"}}


@dataclass
class TaskExample:
    """One example as the evaluator and the strategies see it."""

    id: str
    """f"{split}-{i}"."""
    input: str
    """The text to classify, the question or the code prompt."""
    references: list[str]
    """Label values for label tasks; acceptable answers otherwise; [] for code."""
    context: str | None = None
    """A passage the answer is found in (span tasks, QA with context)."""
    tests: str | None = None
    """Code: a test program that calls the solution (HumanEval: test + check(entry_point))."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Everything else the row had; meta["origin"] is "file, row N"."""


@dataclass
class Task:
    """An application: which data, what to ask, what form the answer takes and how it is scored."""

    name: str
    instruction: str
    system: str | None
    answer: str
    labels: dict[str, str] | None
    """Label value -> label word (label tasks); None means the sorted values of the train split, each its own word."""
    metric: str
    data: DataSpec
    input_template: str | None = None
    source: str = "task"
    _cache: dict[str, list[TaskExample]] = field(default_factory=dict, repr=False, compare=False)
    """Examples read so far, by split; shared by copies made with dataclasses.replace (a prompt's view of the task)."""

    def __post_init__(self) -> None:
        if self.answer not in ANSWER_FORMS:
            raise ConfigError("unknown answer form", where=self.source, key="task.answer", found=repr(self.answer),
                              expected="one of " + ", ".join(ANSWER_FORMS), hint=_close(self.answer, ANSWER_FORMS))
        if self.labels is not None and self.answer != "label":
            raise ConfigError("labels are given but the answer is not a label", where=self.source, key="task.labels",
                              found=f"answer: {self.answer}", expected="answer: label, or no labels")

    # -- examples -------------------------------------------------------------------------------------------------

    def examples(self, split: str) -> list[TaskExample]:
        """The examples of one split ("train", "eval" or "test"), read once; labels are checked against the label set."""
        if split not in SPLITS:
            raise ConfigError("unknown split", where=self.source, found=repr(split), expected="one of " + ", ".join(SPLITS))
        if not self._cache:
            self._load()
        if split not in self._cache:
            raise DataError(f"the task has no {split} split", where=self.source, key=f"data.{split}",
                            found="splits " + ", ".join(self._cache),
                            hint=f"Give data.{split} files, or carve it from train with data.split: {{{split}: 0.2}}")
        return self._cache[split]

    def label_words(self) -> list[str]:
        """The words the model may answer with, in label-set order (label tasks)."""
        return list(self.label_map().values())

    def label_map(self) -> dict[str, str]:
        """Label value -> word; the train split's sorted values when the recipe gives no labels."""
        if self.answer != "label":
            raise ConfigError("the task has no labels", where=self.source, key="task.answer", found=self.answer, expected="label")
        if self.labels is None:
            self._load()
        assert self.labels is not None
        return self.labels

    def _load(self) -> None:
        """Read every split of the data section and convert its examples."""
        loaded = self.data.load_splits()
        converted = {name: [self._convert(ex, name, i, part.path) for i, ex in enumerate(part.examples)]
                     for name, part in loaded.items()}
        if self.answer == "label":
            if self.labels is None:
                from tailorlm.training.features import _label_sort_key

                values = sorted({e.references[0] for e in converted.get("train", [])}, key=_label_sort_key)
                self.labels = {v: v for v in values}
            for name, examples in converted.items():
                for example in examples:
                    if example.references[0] not in self.labels:
                        raise DataError("label is not in the label set", where=example.meta.get("origin") or f"{name} split",
                                        key="label", found=repr(example.references[0]),
                                        expected="one of " + ", ".join(self.labels),
                                        hint="Add it to task.labels, or fix the row")
        self._cache.update(converted)

    def _convert(self, example: Example, split: str, i: int, path: str) -> TaskExample:
        """A canonical data example as a TaskExample."""
        origin = str(example.origin) if example.origin else f"{path}, example {i + 1}"
        meta = {**example.meta, "origin": origin}
        ident = f"{split}-{i}"
        if isinstance(example, ClassificationExample):
            return TaskExample(ident, example.text, [example.label], meta=meta)
        if self.answer == "label":
            raise DataError("a label task needs text and label rows", where=origin, found=f"a {example.kind} example",
                            expected="a classification example (text, label)",
                            hint="Set data.format: text_label and map your columns with data.columns")
        if not isinstance(example, ChatExample):
            raise DataError(f"a {self.answer} task needs question and answer rows", where=origin,
                            found=f"a {example.kind} example", expected="a chat, QA, SQuAD or prompt/completion example")
        return self._from_chat(example, ident, meta)

    def _from_chat(self, example: ChatExample, ident: str, meta: dict[str, Any]) -> TaskExample:
        """The last user turn as input, the last assistant turn as reference; QA/SQuAD passages kept as context."""
        turns = example.messages
        last_user = max((i for i, m in enumerate(turns) if m["role"] == "user"), default=None)
        if last_user is None:
            raise DataError("the conversation has no user message", where=meta["origin"], key="messages",
                            expected="at least one user message")
        answer = next((m["content"] for m in turns[last_user + 1:] if m["role"] == "assistant"), None)
        answer = answer if answer is not None else str(meta.get("answer", ""))
        system = next((m["content"] for m in turns if m["role"] == "system"), None)
        history = [m for m in turns[:last_user] if m["role"] != "system"]
        if system:
            meta["system"] = system
        if history:
            meta["history"] = history
        text, context = turns[last_user]["content"], None
        if isinstance(meta.get("question"), str) and isinstance(meta.get("context"), str) and meta["context"].strip():
            text, context = meta["question"], meta["context"]
        references = [answer]
        if isinstance(meta.get("answers"), list):  # SQuAD: every acceptable answer, in order, without repeats
            references = list(dict.fromkeys(a for a in meta["answers"] if isinstance(a, str))) or references
        elif isinstance(meta.get("references"), list):  # source/target with several targets
            references = list(meta["references"])
        if self.answer == "code":
            return self._code_example(ident, text, answer, meta)
        if self.answer == "number":
            from tailorlm.tasks.parsing import parse_number

            number = parse_number(answer)
            if number is None:
                raise DataError("the answer holds no number", where=meta["origin"], key="answer",
                                found=repr(answer[-60:]), expected="a number, e.g. '#### 42' at the end")
            meta["solution"] = answer
            references = [number]
        return TaskExample(ident, text, references, context=context, meta=meta)

    def _code_example(self, ident: str, prompt: str, solution: str, meta: dict[str, Any]) -> TaskExample:
        """A code prompt with the test program that checks a completed solution."""
        test, entry = meta.get("test"), meta.get("entry_point")
        if not isinstance(test, str) or not test.strip():
            raise DataError("a code example has no tests", where=meta["origin"], key="test",
                            found="columns " + ", ".join(k for k in meta if k != "origin"),
                            expected="a 'test' column with a test program (HumanEval: test and entry_point)")
        tests = test + (f"\ncheck({entry})\n" if isinstance(entry, str) and entry and "def check(" in test else "")
        meta["canonical_solution"] = solution
        return TaskExample(ident, prompt, [], tests=tests, meta=meta)

    # -- prompts ------------------------------------------------------------------------------------------------------

    def user_text(self, example: TaskExample) -> str:
        """The user turn: instruction, the input (with its context), and for label tasks the allowed answers."""
        if self.input_template:
            try:
                body = self.input_template.format(input=example.input, context=example.context or "", **_fields(example))
            except (KeyError, IndexError, ValueError) as err:
                raise ConfigError("the input template cannot be filled", where=self.source, key="task.input_template",
                                  found=f"{type(err).__name__}: {err}",
                                  expected="placeholders {input}, {context} or columns of the data") from None
        elif example.context:
            body = f"Context: {example.context}\n\nQuestion: {example.input}"
        else:
            body = example.input
        parts = [self.instruction.strip()] if self.instruction and self.instruction.strip() else []
        parts.append(body)
        if self.answer == "label":
            parts.append("Answer with one of: " + ", ".join(self.label_words()) + ".")
        return "\n\n".join(parts)

    def answer_text(self, example: TaskExample) -> str:
        """What the assistant should say: the label word, the worked solution, the code, or the first reference."""
        if self.answer == "label":
            return self.label_map()[example.references[0]]
        if self.answer == "code":
            solution = example.meta.get("canonical_solution", "")
            return f"```python\n{example.input}{solution}```" if solution else ""
        if self.answer == "number" and isinstance(example.meta.get("solution"), str):
            return example.meta["solution"]
        return example.references[0] if example.references else ""

    def messages(self, example: TaskExample, shots: Sequence[TaskExample] = ()) -> list[dict[str, str]]:
        """System prompt, each shot as a user/assistant pair, then the example's user turn (zero-shot without shots)."""
        messages: list[dict[str, str]] = []
        system = self.system or example.meta.get("system")
        if system:
            messages.append({"role": "system", "content": system})
        for shot in shots:
            messages += [{"role": "user", "content": self.user_text(shot)},
                         {"role": "assistant", "content": self.answer_text(shot)}]
        messages += [dict(m) for m in example.meta.get("history", [])]
        messages.append({"role": "user", "content": self.user_text(example)})
        return messages


def load_task(recipe: str | Path, *, overrides: Iterable[str] = ()) -> Task:
    """The task of a recipe file (its `task:` and `data:` sections), with `key=value` overrides applied."""
    from tailorlm.config import apply_overrides, load_yaml

    path = Path(recipe)
    data = apply_overrides(load_yaml(path), list(overrides))
    return task_from_dict(data, source=str(path), base_dir=path.resolve().parent)


def task_from_dict(data: dict[str, Any], *, source: str, base_dir: Path) -> Task:
    """A Task from a recipe mapping with `task:` and `data:`; errors name the recipe and the key."""
    section = data.get("task")
    if section is None:
        raise ConfigError("the recipe has no task section", where=source, key="task",
                          found="keys " + ", ".join(map(str, data)),
                          expected="a task: mapping with instruction, answer, metric (and labels for label tasks)")
    if not isinstance(section, dict):
        raise ConfigError("the task section is not a mapping", where=source, key="task", found=type(section).__name__,
                          expected="a mapping with instruction, answer, metric")
    for key in section:
        if key not in TASK_KEYS:
            raise ConfigError("unknown setting", where=source, key=f"task.{key}", found=repr(key),
                              expected="one of " + ", ".join(TASK_KEYS), hint=_close(str(key), TASK_KEYS))
    answer = section.get("answer", "text")
    if answer not in ANSWER_FORMS:
        raise ConfigError("unknown answer form", where=source, key="task.answer", found=repr(answer),
                          expected="one of " + ", ".join(ANSWER_FORMS), hint=_close(str(answer), ANSWER_FORMS))
    metric = section.get("metric") or DEFAULT_METRICS[answer]
    if not isinstance(metric, str):
        raise ConfigError("wrong type", where=source, key="task.metric", found=repr(metric), expected="a metric name")
    from tailorlm.tasks.metrics import check_metric

    check_metric(metric, answer, where=f"{source} (task.metric)")
    texts = {key: _text(section, key, source) for key in ("name", "instruction", "system", "input_template")}
    spec = _data_spec(data.get("data"), answer, source, base_dir)
    return Task(name=texts["name"] or Path(source).stem, instruction=texts["instruction"] or "", system=texts["system"],
                answer=answer, labels=_labels(section.get("labels"), answer, source), metric=metric, data=spec,
                input_template=texts["input_template"], source=source)


def _data_spec(data: Any, answer: str, source: str, base_dir: Path) -> DataSpec:
    """The `data:` section as `tailor train` reads it (a path or list of paths is the train split)."""
    if data in (None, ""):
        raise ConfigError("missing setting", where=source, key="data",
                          expected="a data file, or a mapping with train (and optionally eval, test) files")
    if isinstance(data, (str, list)):
        data = {"train": data}
    if isinstance(data, dict) and answer == "code" and "format" not in data and "columns" not in data:
        data = {**data, **CODE_DATA_DEFAULTS}
    spec = DataSpec.from_dict(data, source=source, base_dir=base_dir)
    spec.check_files()
    return spec


def _labels(value: Any, answer: str, source: str) -> dict[str, str] | None:
    """task.labels as value -> word: a mapping as given (keys as strings), a list as value == word."""
    if value is None:
        return None
    if answer != "label":
        raise ConfigError("labels are given but the answer is not a label", where=source, key="task.labels",
                          found=f"answer: {answer}", expected="answer: label, or no labels")
    if isinstance(value, list):
        value = {item: item for item in value}
    if not isinstance(value, dict) or not value:
        raise ConfigError("wrong type", where=source, key="task.labels", found=repr(value),
                          expected='a mapping from data value to word, e.g. {"0": bearish, "1": bullish}, or a list of labels')
    labels: dict[str, str] = {}
    for key, word in value.items():
        key_text, word_text = _scalar(key), _scalar(word)
        if not key_text or not word_text:
            raise ConfigError("empty label", where=source, key=f"task.labels.{key}", found=repr(word),
                              expected="a non-empty label value and word")
        labels[key_text] = word_text
    words = list(labels.values())
    repeated = sorted({w for w in words if words.count(w) > 1})
    if repeated:
        raise ConfigError("two labels share a word", where=source, key="task.labels", found=", ".join(repeated),
                          expected="a different word for each label")
    return labels


def _scalar(value: Any) -> str:
    """A label value or word as text, like the data layer writes labels (1.0 -> '1', true -> 'true')."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip() if value is not None else ""


def _text(section: dict[str, Any], key: str, source: str) -> str | None:
    """An optional text setting of the task section."""
    value = section.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError("wrong type", where=source, key=f"task.{key}", found=repr(value), expected="text")
    return value


def _fields(example: TaskExample) -> dict[str, Any]:
    """The row's other columns, for input templates that name them; a list of texts (PubMedQA's CONTEXTS) is given
    as its items, one a paragraph."""
    return {k: "\n\n".join(v) if isinstance(v, list) and v and all(isinstance(t, str) for t in v) else v
            for k, v in example.meta.items() if isinstance(k, str) and k.isidentifier() and k not in ("input", "context")}


def _close(name: str, allowed: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(str(name), list(allowed), n=1)
    return f"Did you mean {close[0]!r}?" if close else None
