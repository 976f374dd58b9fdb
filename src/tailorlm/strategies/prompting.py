"""Prompt engineering as strategies: zero_shot, few_shot (random, label-balanced or kNN shots) and prompt_search.

A prompt specialist's folder holds `specialist.json` (weights 'none'; `config` the instruction, system prompt,
chosen shots, selection, k, seed and any search trials) and, for kNN selection, the train pool it picks shots from:
`knn_pool.jsonl` (the examples) and `knn_vectors.npy` (their unit-length embeddings), so loading needs no
re-embedding of the pool; only each test input is embedded.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tailorlm.errors import ConfigError, ModelError
from tailorlm.files import write_atomic
from tailorlm.strategies.base import MANIFEST, Manifest, file_sha256, library_versions, manifest_or_none, read_manifest

PROMPT_STRATEGIES = ("zero_shot", "few_shot", "prompt_search")
SELECTIONS = ("random", "balanced", "knn")
DEFAULT_EMBED_MODEL = "minilm-l6"
POOL_FILE, VECTORS_FILE = "knn_pool.jsonl", "knn_vectors.npy"
COMMON = {"instruction": None, "system": None}
FEW_SHOT = {**COMMON, "k": 4, "selection": "balanced", "seed": 0, "embed_model": DEFAULT_EMBED_MODEL}
SEARCH = {**COMMON, "instructions": None, "paraphrases": 2, "k": [0, 2, 4], "selection": "balanced", "seed": 0,
          "embed_model": DEFAULT_EMBED_MODEL, "eval_limit": None}
DEMO_INSTRUCTION = "Summarise the article in one sentence."
DEMO_REWRITES = ("Write a one-sentence summary of the article.", "Give the gist of the article in a single sentence.")
Score = Callable[["PromptSpecialist", list[Any]], float]
Propose = Callable[[str, int], list[str]]


@dataclass
class PromptSpecialist:
    """A base model with a chosen prompt: instruction, system prompt and few-shot examples (fixed, or kNN per input)."""

    base_model: str
    strategy: str
    instruction: str
    system: str | None
    shots: list[Any]
    """The fixed shots (TaskExample); empty for zero-shot and for kNN, whose shots come from `pool` per input."""
    settings: dict[str, Any]
    """The resolved settings (defaults filled in), with any note on how they were applied."""
    search: list[dict[str, Any]] = field(default_factory=list)
    """prompt_search trials: {instruction, source, k, score}, in the order tried."""
    base_model_path: str = ""
    pool: list[Any] = field(default_factory=list)
    """kNN only: the train examples shots are chosen from."""
    pool_vectors: np.ndarray | None = field(default=None, repr=False, compare=False)
    """kNN only: (len(pool), D) unit-length embeddings of the pool's inputs."""
    embedder: Any = field(default=None, repr=False, compare=False)
    """kNN only: embeds test inputs (an `Embedder` of settings['embed_model'], made when first needed)."""
    queries: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    """kNN only: the vectors of inputs already embedded (shared by the trials of a prompt search)."""

    @property
    def selection(self) -> str | None:
        """How the shots were chosen (None for zero-shot)."""
        return self.settings.get("selection") if self.k else None

    @property
    def k(self) -> int:
        """Shots per prompt."""
        return int(self.settings.get("k") or 0)

    def shots_for(self, example: Any) -> list[Any]:
        """The shots shown before `example`: the fixed ones, or for kNN the k pool examples nearest to its input.

        kNN never shows a pool example whose input equals the test input, so the answer cannot leak; the nearest
        shot comes last, next to the question.
        """
        if self.selection != "knn":
            return list(self.shots)
        if self.pool_vectors is None or not self.pool:
            return []
        if example.input not in self.queries:
            self.queries[example.input] = self._embedder().embed_queries([example.input])[0]
        query = self.queries[example.input]
        chosen = nearest(self.pool_vectors, query, self.k, exclude=_same_input(self.pool, example.input))
        return [self.pool[i] for i in chosen]

    def messages(self, task: Any, example: Any) -> list[dict[str, str]]:
        """The chat messages for `example`: the task's rendering with this instruction, system prompt and shots."""
        view = task
        if task.instruction != self.instruction or task.system != self.system:
            view = dataclasses.replace(task, instruction=self.instruction, system=self.system)
        return view.messages(example, self.shots_for(example))

    def save(self, folder: str | Path, *, task: Any = None) -> Path:
        """Write the specialist folder (kNN pool files first, specialist.json last, each atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "instruction": self.instruction, "system": self.system, "shots": [_example_dict(s) for s in self.shots],
            "selection": self.selection, "k": self.k, "seed": self.settings.get("seed"), "search": self.search,
            "settings": self.settings,
        }
        if self.selection == "knn":
            lines = "".join(json.dumps(_example_dict(e), ensure_ascii=False, default=str) + "\n" for e in self.pool)
            write_atomic(folder / POOL_FILE, lines)
            write_atomic(folder / VECTORS_FILE, _npy_bytes(np.asarray(self.pool_vectors, dtype=np.float32)))
            config["pool"] = {"examples": POOL_FILE, "vectors": VECTORS_FILE, "size": len(self.pool),
                              "embed_model": self.settings.get("embed_model")}
        data: dict[str, dict[str, str]] = {}
        if task is not None:
            config["task"] = {"name": task.name, "answer": task.answer, "labels": task.labels,
                              "input_template": task.input_template}
            data = _train_hashes(task)
        manifest = Manifest(base_model=self.base_model, base_model_path=self.base_model_path or self.base_model,
                            strategy=self.strategy, objective="sft", weights="none", config=config, data=data,
                            versions=library_versions())
        text = json.dumps(manifest.to_dict(), indent=1, ensure_ascii=False, default=str)
        write_atomic(folder / MANIFEST, text)
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, embedder: Any = None) -> "PromptSpecialist":
        """Read a prompt specialist folder; `embedder` replaces the kNN embedder the settings name."""
        from tailorlm.tasks.task import TaskExample

        folder = Path(folder)
        manifest = read_manifest(folder)
        if not is_prompt_specialist(folder):
            raise ModelError("not a prompt specialist", where=str(folder), found=f"strategy {manifest.strategy!r}",
                             expected="a folder made by one of the strategies " + ", ".join(PROMPT_STRATEGIES))
        config = manifest.config
        settings = dict(config.get("settings") or {})
        pool: list[Any] = []
        vectors = None
        if config.get("selection") == "knn":
            pool_info = config.get("pool") or {}
            pool_path = folder / pool_info.get("examples", POOL_FILE)
            vectors_path = folder / pool_info.get("vectors", VECTORS_FILE)
            if not pool_path.is_file() or not vectors_path.is_file():
                raise ModelError("the kNN pool of the prompt specialist is missing", where=str(folder),
                                 found=", ".join(p.name for p in (pool_path, vectors_path) if not p.is_file()) + " missing",
                                 expected=f"{POOL_FILE} and {VECTORS_FILE} beside {MANIFEST}")
            lines = pool_path.read_text(encoding="utf-8").splitlines()
            pool = [_example(TaskExample, json.loads(line)) for line in lines if line]
            vectors = np.load(vectors_path, allow_pickle=False)
            if vectors.shape[0] != len(pool):
                raise ModelError("the kNN pool and its vectors disagree", where=str(folder),
                                 found=f"{len(pool)} examples, {vectors.shape[0]} vectors",
                                 expected="one vector per example")
        return cls(base_model=manifest.base_model, strategy=manifest.strategy, instruction=config.get("instruction", ""),
                   system=config.get("system"), shots=[_example(TaskExample, s) for s in config.get("shots") or []],
                   settings=settings, search=list(config.get("search") or []), base_model_path=manifest.base_model_path,
                   pool=pool, pool_vectors=vectors, embedder=embedder)

    def _embedder(self) -> Any:
        if self.embedder is None:
            from tailorlm.retrieval.embeddings import Embedder

            self.embedder = Embedder(self.settings.get("embed_model") or DEFAULT_EMBED_MODEL)
        return self.embedder


def is_prompt_specialist(folder: str | Path) -> bool:
    """Whether `folder` holds a specialist made by zero_shot, few_shot or prompt_search."""
    manifest = manifest_or_none(folder)
    return manifest is not None and manifest.strategy in PROMPT_STRATEGIES and manifest.weights == "none"


def fit_prompting(strategy: str, task: Any, base_model: str, settings: Mapping[str, Any] | None = None, *,
                  score: Score | None = None, propose: Propose | None = None, embedder: Any = None) -> PromptSpecialist:
    """Fit the prompt strategy called `strategy`; ConfigError listing the strategies for another name."""
    if strategy == "zero_shot":
        return fit_zero_shot(task, base_model, settings or {})
    if strategy == "few_shot":
        return fit_few_shot(task, base_model, settings or {}, embedder=embedder)
    if strategy == "prompt_search":
        if score is None:
            raise ConfigError("prompt_search needs a way to score candidates", key="score", found="none",
                              expected="a function (specialist, eval examples) -> score")
        return fit_prompt_search(task, base_model, settings or {}, score=score, propose=propose, embedder=embedder)
    raise ConfigError("unknown prompt strategy", key="strategy", found=repr(strategy),
                      expected="one of " + ", ".join(PROMPT_STRATEGIES))


def fit_zero_shot(task: Any, base_model: str, settings: Mapping[str, Any]) -> PromptSpecialist:
    """The task's instruction (or settings' `instruction`/`system`), no examples."""
    values = _settings("zero_shot", settings, COMMON)
    instruction, system = _prompt(task, values)
    return PromptSpecialist(base_model=str(base_model), strategy="zero_shot", instruction=instruction, system=system,
                            shots=[], settings={**values, "k": 0}, base_model_path=_base_path(base_model))


def fit_few_shot(task: Any, base_model: str, settings: Mapping[str, Any], *, embedder: Any = None) -> PromptSpecialist:
    """k train examples as shots: a seeded random sample, label-balanced (round-robin over labels), or kNN per input.

    `balanced` on a task without labels falls back to `random` and says so in the settings' `note`.
    """
    values = _settings("few_shot", settings, FEW_SHOT)
    k = _count(values["k"], "k", where="strategies.few_shot", minimum=1)
    instruction, system = _prompt(task, values)
    base_path = _base_path(base_model)
    train = task.examples("train")
    chooser = ShotChooser(task, train, seed=_count(values["seed"], "seed", where="strategies.few_shot"),
                          embed_model=values["embed_model"], embedder=embedder)
    spec = chooser.specialist(k, _selection(values["selection"], "strategies.few_shot"), where="strategies.few_shot")
    spec.base_model, spec.base_model_path = str(base_model), base_path
    spec.instruction, spec.system, spec.strategy = instruction, system, "few_shot"
    spec.settings = {**values, **spec.settings}
    return spec


def fit_prompt_search(task: Any, base_model: str, settings: Mapping[str, Any], *, score: Score,
                      propose: Propose | None = None, embedder: Any = None,
                      higher_is_better: bool = True) -> PromptSpecialist:
    """Try each candidate instruction x each k on the eval split (never test) and keep the best-scoring prompt.

    Candidates are the user's `instructions` (the task's own first) and, per user instruction, `paraphrases`
    rewrites from `propose(instruction, n)`. Ties go to fewer shots, then the shorter instruction, then the first
    tried. Every trial is kept in `search`.
    """
    where = "strategies.prompt_search"
    values = _settings("prompt_search", settings, SEARCH)
    instruction, system = _prompt(task, values)
    base_path = _base_path(base_model)
    users = _instructions(values["instructions"], instruction, where)
    paraphrases = _count(values["paraphrases"], "paraphrases", where=where)
    ks = _k_values(values["k"], where)
    selection = _selection(values["selection"], where)
    limit = values["eval_limit"]
    if limit is not None:
        limit = _count(limit, "eval_limit", where=where, minimum=1)
    candidates: list[tuple[str, str]] = [(text, "user") for text in users]
    if paraphrases and propose is not None:
        for text in users:
            candidates += [(p, "paraphrase") for p in propose(text, paraphrases)]
    candidates = _unique(candidates)
    train = task.examples("train") if any(ks) else []
    evaluation = task.examples("eval")
    evaluation = evaluation[:limit] if limit else evaluation
    chooser = ShotChooser(task, train, seed=_count(values["seed"], "seed", where=where),
                          embed_model=values["embed_model"], embedder=embedder)
    trials: list[dict[str, Any]] = []
    best: tuple[tuple, PromptSpecialist] | None = None
    shells = [chooser.specialist(k, selection, where=where) for k in ks]  # bad k values fail before any scoring
    for k, shaped in zip(ks, shells):
        for text, source in candidates:
            spec = dataclasses.replace(shaped, instruction=text, system=system, base_model=str(base_model),
                                       strategy="prompt_search", settings={**values, **shaped.settings})
            value = float(score(spec, list(evaluation)))
            trials.append({"instruction": text, "source": source, "k": k, "score": value})
            key = (-value if higher_is_better else value, k, len(text), len(trials))
            if best is None or key < best[0]:
                best = (key, spec)
    assert best is not None  # candidates and ks are never empty
    chosen = best[1]
    chosen.base_model_path = base_path
    chosen.search = trials
    chosen.settings = {**chosen.settings, "k_values": ks, "proposed": sum(1 for _, s in candidates if s == "paraphrase"),
                       "eval_examples": len(evaluation)}
    if paraphrases and propose is None:
        notes = [chosen.settings.get("note"), "no paraphrases: no model was given to propose them"]
        chosen.settings["note"] = "; ".join(note for note in notes if note)
    return chosen


class ShotChooser:
    """Chooses shots from a train split for several k (the kNN pool is embedded once)."""

    def __init__(self, task: Any, train: Sequence[Any], *, seed: int, embed_model: str, embedder: Any = None) -> None:
        self.task, self.train, self.seed = task, list(train), seed
        self.embed_model, self.embedder = embed_model, embedder
        self._vectors: np.ndarray | None = None
        self._queries: dict[str, np.ndarray] = {}

    def specialist(self, k: int, selection: str, *, where: str) -> PromptSpecialist:
        """A specialist shell (no base model, prompt yet) holding k shots chosen by `selection`."""
        settings: dict[str, Any] = {"k": k, "selection": selection, "seed": self.seed}
        if k > len(self.train):
            raise ConfigError("k is larger than the training split", where=where, key="k",
                              found=f"k={k}, but the train split has {len(self.train)} example(s)",
                              expected=f"at most {len(self.train)}", hint="Lower k or give more training rows")
        shell = PromptSpecialist(base_model="", strategy="", instruction="", system=None, shots=[], settings=settings)
        if k == 0:
            return shell
        if selection == "balanced" and not self._has_labels():
            settings["selection"] = selection = "random"
            settings["note"] = (f"balanced selection needs a label task (answer {self.task.answer!r}), "
                                "so the shots were chosen at random")
        if selection == "random":
            shell.shots = random_shots(self.train, k, self.seed)
        elif selection == "balanced":
            shell.shots = balanced_shots(self.train, k, self.seed, labels=list(self.task.label_map()))
        else:
            if self._vectors is None:
                if self.embedder is None:
                    from tailorlm.retrieval.embeddings import Embedder

                    self.embedder = Embedder(self.embed_model)
                self._vectors = np.asarray(self.embedder.embed([e.input for e in self.train]), dtype=np.float32)
            shell.pool, shell.pool_vectors, shell.embedder = self.train, self._vectors, self.embedder
            shell.queries = self._queries
        return shell

    def _has_labels(self) -> bool:
        return self.task.answer == "label"


def random_shots(train: Sequence[Any], k: int, seed: int) -> list[Any]:
    """k train examples drawn without replacement by a generator seeded with `seed`."""
    return [train[i] for i in random.Random(seed).sample(range(len(train)), k)]


def balanced_shots(train: Sequence[Any], k: int, seed: int, *, labels: Sequence[str] = ()) -> list[Any]:
    """k train examples taken round-robin over the labels (each label's examples and the label order shuffled
    with `seed`); a label that runs out is skipped, so every label appears once k reaches the number of labels."""
    rng = random.Random(seed)
    groups: dict[str, list[Any]] = {}
    for example in train:
        groups.setdefault(example.references[0] if example.references else "", []).append(example)
    order = [label for label in labels if label in groups] + sorted(label for label in groups if label not in labels)
    rng.shuffle(order)
    queues = {label: rng.sample(groups[label], len(groups[label])) for label in order}
    shots: list[Any] = []
    while len(shots) < k:
        for label in order:
            if queues[label] and len(shots) < k:
                shots.append(queues[label].pop(0))
    return shots


def nearest(vectors: np.ndarray, query: np.ndarray, k: int, *, exclude: Collection[int] = ()) -> list[int]:
    """Positions of the k rows of `vectors` most cosine-similar to `query` (unit vectors), least similar first,
    so the nearest sits last, beside the question; ties keep pool order; `exclude` rows are never picked."""
    similarity = vectors @ np.asarray(query, dtype=np.float32)  # (N,)
    skip = set(exclude)
    ranked = [int(i) for i in np.argsort(-similarity, kind="stable") if int(i) not in skip][:k]
    return ranked[::-1]


def propose_paraphrases(model: Any, tokenizer: Any, instruction: str, n: int, *, seed: int = 0,
                        samples: int = 3, temperature: float = 0.8) -> list[str]:
    """Up to n rewrites of `instruction` written by the model itself: one greedy answer, then up to `samples`
    sampled ones (seeds seed, seed+1, ...), parsed one per line, de-duplicated; empty or overlong lines dropped."""
    from tailorlm.models.generate import generate, render_prompt

    if n <= 0:
        return []
    request = _rewrite_request(instruction, n)
    if getattr(tokenizer, "chat_template", None):
        # One worked example keeps small chat models writing instructions rather than answering them.
        prompt: Any = [{"role": "user", "content": _rewrite_request(DEMO_INSTRUCTION, len(DEMO_REWRITES))},
                       {"role": "assistant", "content": "\n".join(DEMO_REWRITES)},
                       {"role": "user", "content": request}]
    else:
        prompt = request + "\nRewrites:\n"
    prompt_tokens = len(tokenizer(render_prompt(tokenizer, prompt))["input_ids"])
    wanted = (2 * len(tokenizer(instruction)["input_ids"]) + 8) * n + 16
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    max_new_tokens = min(512, wanted, context - prompt_tokens) if context else min(512, wanted)
    if max_new_tokens < 1:
        return []
    found: list[str] = []
    for attempt in range(samples + 1):
        options = {"temperature": 0.0} if attempt == 0 else {"temperature": temperature, "seed": seed + attempt - 1}
        text = generate(model, tokenizer, prompt, max_new_tokens=max_new_tokens, **options)
        found = parse_paraphrases(text, instruction, known=found)
        if len(found) >= n:
            break
    return found[:n]


def _rewrite_request(instruction: str, n: int) -> str:
    return (f"Rewrite this instruction in {n} different ways, keeping its meaning. "
            f"Write one rewrite per line and nothing else.\n\nInstruction: {instruction.strip()}")


def parse_paraphrases(text: str, instruction: str, *, known: Sequence[str] = ()) -> list[str]:
    """`known` plus the rewrites in `text`: one per line, numbering, bullets and quotes stripped; lines that are
    empty, a preamble ("Here are ...:"), the instruction itself, a repeat, or over 3x its length (min 200) dropped."""
    limit = max(3 * len(instruction.strip()), 200)
    seen = {_squash(instruction)} | {_squash(t) for t in known}
    out = list(known)
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*\u2022]|\(?\d+[.):]|rewrite\s*\d*\s*:)\s*", "", line, flags=re.IGNORECASE).strip()
        line = line.strip("\"'`\u201c\u201d ").strip()
        if not line or line.endswith(":") or len(line) > limit or _squash(line) in seen:
            continue
        seen.add(_squash(line))
        out.append(line)
    return out


def _settings(strategy: str, settings: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """`defaults` updated by `settings`; ConfigError naming a key the strategy does not know."""
    settings = dict(settings or {})
    for key in settings:
        if key not in defaults:
            raise ConfigError(f"unknown {strategy} setting", where=f"strategies.{strategy}", key=str(key),
                              expected="one of " + ", ".join(defaults))
    return {**defaults, **settings}


def _prompt(task: Any, values: Mapping[str, Any]) -> tuple[str, str | None]:
    """The instruction and system prompt: the settings' when given, else the task's."""
    instruction = values.get("instruction") if values.get("instruction") is not None else task.instruction
    system = values.get("system") if values.get("system") is not None else task.system
    for key, value in (("instruction", instruction), ("system", system)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{key} must be text", key=key, found=repr(value), expected="a string")
    return instruction or "", system


def _selection(value: Any, where: str) -> str:
    if value not in SELECTIONS:
        raise ConfigError("unknown few-shot selection", where=where, key="selection", found=repr(value),
                          expected="one of " + ", ".join(SELECTIONS))
    return str(value)


def _count(value: Any, key: str, *, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be a whole number", where=where, key=key, found=repr(value),
                          expected=f"{minimum} or more")
    return value


def _k_values(value: Any, where: str) -> list[int]:
    values = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError("k must list the shot counts to try", where=where, key="k", found=repr(value),
                          expected="a list of whole numbers, e.g. [0, 2, 4]")
    return sorted({_count(v, "k", where=where) for v in values})


def _instructions(value: Any, own: str, where: str) -> list[str]:
    """The user's candidate instructions: the task's (or settings') own first, then the listed ones."""
    listed = [value] if isinstance(value, str) else list(value or [])
    if not all(isinstance(v, str) and v.strip() for v in listed):
        raise ConfigError("instructions must be non-empty texts", where=where, key="instructions", found=repr(value),
                          expected="a list of instructions")
    return [text for text in [own, *listed] if text and text.strip()] or [own]


def _unique(candidates: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Candidates without empty texts and without repeats (compared loosely), first occurrence kept."""
    seen: set[str] = set()
    out = []
    for text, source in candidates:
        if isinstance(text, str) and text.strip() and _squash(text) not in seen:
            seen.add(_squash(text))
            out.append((text.strip(), source))
    return out


def _squash(text: str) -> str:
    """A text compared loosely: lower case, single spaces, no trailing full stop."""
    return " ".join(text.lower().split()).rstrip(".")


def _same_input(pool: Sequence[Any], text: str) -> set[int]:
    """Positions of pool examples whose input is the same text (ignoring surrounding and repeated spaces)."""
    target = " ".join(text.split())
    return {i for i, e in enumerate(pool) if " ".join(e.input.split()) == target}


def _base_path(base_model: str | Path) -> str:
    """Where the base model reference resolves (a specialist folder: its absolute path)."""
    folder = Path(base_model)
    if (folder / MANIFEST).is_file():
        return str(folder.resolve())
    from tailorlm.models.hub import resolve

    return str(resolve(str(base_model), progress=False))


def _example_dict(example: Any) -> dict[str, Any]:
    return dataclasses.asdict(example) if dataclasses.is_dataclass(example) else dict(example)


def _example(cls: Any, data: Mapping[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


def _train_hashes(task: Any) -> dict[str, dict[str, str]]:
    """{"train": {file: sha256}} for the task's train files that exist as files (the shots come from them)."""
    files = [Path(p) for p in getattr(getattr(task, "data", None), "train", []) or []]
    return {"train": {str(p): file_sha256(p) for p in files if p.is_file()}}


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
