"""The resolved settings of one training run, built from a recipe plus command-line overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tailorlm.config import apply_overrides, build_dataclass, check_keys, load_yaml, suggest
from tailorlm.errors import ConfigError

OBJECTIVES = ("pretrain", "sft", "classify", "seq2seq")
METHODS = ("full", "freeze", "lora", "dora", "ia3", "prompt_tuning", "p_tuning", "prefix_tuning")
PROMPT_METHODS = ("prompt_tuning", "p_tuning", "prefix_tuning")
# Which methods make sense for which objective; prompt methods learn a soft prompt for a task,
# which is meaningless for raw-text pre-training. Prefix tuning cannot classify with peft 0.21 and
# transformers 5: peft's sequence-classification path looks for a `past_key_values` argument, which
# transformers renamed to `cache` (encoders such as BERT take no cache at all), and raises.
METHODS_FOR_OBJECTIVE: dict[str, tuple[str, ...]] = {
    "pretrain": ("full", "freeze", "lora", "dora", "ia3"),
    "sft": METHODS,
    "classify": ("full", "freeze", "lora", "dora", "ia3", "prompt_tuning", "p_tuning"),
    "seq2seq": METHODS,
}
# Learning rates that work for each method when the recipe gives none.
DEFAULT_LR = {
    "full": 2e-5, "freeze": 5e-5, "lora": 2e-4, "dora": 2e-4, "ia3": 3e-3,
    "prompt_tuning": 3e-2, "p_tuning": 1e-3, "prefix_tuning": 1e-2,
}
# A small model trained from random weights wants a far larger rate than fine-tuning (nanoGPT uses 1e-3 at this size).
DEFAULT_SCRATCH_LR = 1e-3


@dataclass
class LoraSettings:
    """LoRA and DoRA: low-rank updates to the target linear layers."""

    r: int = 16
    """Rank of the update."""
    alpha: float = 32.0
    """Scale numerator: the update is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter input; 0 is faster and usually as good for short runs."""
    target_modules: list[str] | None = None
    """Names of linear layers to adapt; default: every linear layer of attention and MLP."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError("LoRA rank must be at least 1", key="lora.r", found=str(self.r))
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout must be in [0, 1)", key="lora.dropout", found=str(self.dropout))


@dataclass
class PromptSettings:
    """Prompt tuning, P-tuning and prefix tuning: trained virtual tokens."""

    virtual_tokens: int = 20
    """How many virtual tokens are learned."""
    encoder: Literal["mlp", "lstm"] = "mlp"
    """P-tuning's prompt encoder."""
    encoder_hidden_size: int | None = None
    """Hidden size of the P-tuning encoder or prefix projection; default: the model's hidden size."""
    init_text: str | None = None
    """Prompt tuning: initialise the virtual tokens from the embeddings of this text."""
    prefix_projection: bool = False
    """Prefix tuning: reparameterise the prefix through an MLP."""

    def __post_init__(self) -> None:
        if self.virtual_tokens < 1:
            raise ConfigError("need at least one virtual token", key="prompt.virtual_tokens", found=str(self.virtual_tokens))


@dataclass
class FreezeSettings:
    """Freeze: train only named modules, or only the last N transformer layers (plus the head)."""

    modules: list[str] | None = None
    """Parameter-name substrings to train, e.g. ['layers.29', 'norm']."""
    last_n_layers: int | None = None
    """Train only the last N layers (and the final norm and head)."""


@dataclass
class TrainSettings:
    """The loop's settings."""

    max_steps: int | None = None
    """Optimizer steps to run; default: as many as `epochs` needs."""
    epochs: float = 1.0
    """Passes over the training split (ignored when max_steps is set)."""
    batch_size: int = 4
    """Sequences per micro-batch (packed sequences when packing is on)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float | None = None
    """Peak learning rate; default depends on the method."""
    weight_decay: float = 0.0
    schedule: Literal["linear", "cosine", "constant"] = "cosine"
    warmup_ratio: float = 0.03
    """Share of steps spent warming up (ignored when warmup_steps is set)."""
    warmup_steps: int | None = None
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm to this; null turns clipping off."""
    max_length: int = 512
    """Longest sequence in tokens; longer examples are truncated (and counted)."""
    packing: bool = True
    """Pack several examples per sequence without cross-example attention."""
    group_by_length: bool = True
    """When packing is off, batch examples of similar length to waste less on padding."""
    micro_batch_size: int | None = None
    """Sequences per forward pass; a batch is run in pieces of this size with gradients accumulated, which gives the
    same result with less activation memory. Default: 1 on CPU (no speed lost there), batch_size on GPU."""
    gradient_checkpointing: bool = False
    cpu_matmul: Literal["onednn", "default"] = "onednn"
    """On the CPU, multiply the fp32 linear layers (forward and backward) through oneDNN, which uses the AVX-512 units
    that PyTorch's default (MKL) leaves idle on AMD CPUs: about twice as fast there, the same fp32 arithmetic
    (training/matmul.py). `default` keeps PyTorch's own path."""
    cpu_kernels: bool = True
    """On the CPU, run the attention of packed fp32 rows, the loss's softmax, SwiGLU and RMSNorm through tailorlm's
    compiled kernels (training/cpu_kernels.py; built with the machine's C++ compiler on first use, about 30 s, then
    cached). false keeps PyTorch's own operations, as training does, after a warning, where the kernels cannot be
    built."""
    loss_chunk_size: int = 256
    """Tokens per chunk of the output layer and loss, so full logits are never held at once."""
    eval_every: int | None = None
    """Evaluate every N steps (and at the end); default: only at the end."""
    eval_max_batches: int | None = None
    early_stopping_patience: int | None = None
    """Stop after this many evaluations without improvement."""
    save_every: int | None = None
    """Checkpoint every N steps; default: only at the end (and on Ctrl-C)."""
    keep_last: int = 2
    """How many recent checkpoints to keep (the best is always kept)."""
    seed: int = 0
    log_every: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """auto: fp32 on CPU (bf16 is ~20x slower there), bf16 on GPU."""
    fsdp: bool = False
    """Shard parameters, gradients and optimizer state across the processes (PyTorch FSDP) instead of keeping a
    whole copy in each (DDP), for models that do not fit one device; only with --nproc above 1."""
    tensorboard: bool = True
    mlflow: bool = False

    def __post_init__(self) -> None:
        positive = {"batch_size": self.batch_size, "grad_accum": self.grad_accum, "max_length": self.max_length,
                    "loss_chunk_size": self.loss_chunk_size, "keep_last": self.keep_last, "log_every": self.log_every}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError("must be at least 1", key=f"train.{name}", found=str(value))
        if self.lr is not None and self.lr <= 0:
            raise ConfigError("learning rate must be positive", key="train.lr", found=str(self.lr),
                              expected="a number such as 2e-4")
        if self.micro_batch_size is not None and not 1 <= self.micro_batch_size <= self.batch_size:
            raise ConfigError("must be between 1 and train.batch_size", key="train.micro_batch_size",
                              found=str(self.micro_batch_size), expected=f"1 to {self.batch_size}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("must be at least 1", key="train.max_steps", found=str(self.max_steps))
        if self.epochs <= 0:
            raise ConfigError("must be positive", key="train.epochs", found=str(self.epochs))
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("must be in [0, 1)", key="train.warmup_ratio", found=str(self.warmup_ratio))
        for name in ("eval_every", "save_every", "early_stopping_patience", "eval_max_batches"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError("must be at least 1 (or null)", key=f"train.{name}", found=str(value))

    def check_processes(self, count: int, *, where: str | None = None) -> None:
        """Refuse settings that do not fit `count` training processes (checked before launching them)."""
        if self.grad_accum < count:
            raise ConfigError("each process needs at least one micro-batch per optimizer step", where=where,
                              key="train.grad_accum", found=f"{self.grad_accum} with {count} processes",
                              expected=f"at least {count}: the global batch (batch_size x grad_accum) is split "
                                       "across the processes")
        if self.fsdp and count == 1:
            raise ConfigError("FSDP shards the model across processes, and this run has one", where=where,
                              key="train.fsdp", expected="--nproc 2 or more (or torchrun), or train.fsdp: false")


@dataclass
class SampleSettings:
    """Text that `tailor pretrain` generates from the trained model at the end, to see what it learned."""

    prompts: list[str] = field(default_factory=lambda: ["The"])
    max_new_tokens: int = 64
    temperature: float = 0.8
    """0 is greedy; a little randomness shows more of what a small model learned than its most likely loop."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError("must be at least 1", key="samples.max_new_tokens", found=str(self.max_new_tokens))
        if self.temperature < 0:
            raise ConfigError("must be 0 (greedy) or more", key="samples.temperature", found=str(self.temperature))


@dataclass
class ForgettingSettings:
    """Perplexity on a general text and a held-out domain text, before and after training (continued pre-training
    can make a model forget what it knew)."""

    general: str | dict[str, Any] | None = None
    """General text the model should keep: a text file, or a data mapping like `data:` (train, format, columns)."""
    domain: str | dict[str, Any] = "eval"
    """Held-out domain text: `eval` (the run's eval split), a text file or a data mapping."""
    max_tokens: int = 8192
    """Tokens of each text that are scored (the first ones), so the check costs seconds, not minutes."""
    margin: float = 0.10
    """Flag forgetting when the general perplexity rises by more than this share."""

    def __post_init__(self) -> None:
        if self.general in (None, ""):
            raise ConfigError("missing setting", key="forgetting.general",
                              expected="a general text the model should not forget, e.g. a text file of Shakespeare")
        if self.max_tokens < 2:
            raise ConfigError("must be at least 2", key="forgetting.max_tokens", found=str(self.max_tokens))
        if self.margin < 0:
            raise ConfigError("must be 0 or more", key="forgetting.margin", found=str(self.margin),
                              expected="a share such as 0.1 (10%)")


@dataclass
class RunConfig:
    """Everything one `tailor train` run needs."""

    model: str | dict[str, Any]
    """A model reference, or a mapping that builds a new model from scratch (models/build.py)."""
    objective: Literal["pretrain", "sft", "classify", "seq2seq"]
    method: Literal["full", "freeze", "lora", "dora", "ia3", "prompt_tuning", "p_tuning", "prefix_tuning"]
    data: dict[str, Any]
    output: str
    labels: list[str] | None = None
    """classify: the label set in order; default: the sorted labels found in the training split."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    prompt: PromptSettings = field(default_factory=PromptSettings)
    freeze: FreezeSettings = field(default_factory=FreezeSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    samples: SampleSettings = field(default_factory=SampleSettings)
    forgetting: ForgettingSettings | None = None
    source: str = "<command line>"
    base_dir: str = "."

    def __post_init__(self) -> None:
        allowed = METHODS_FOR_OBJECTIVE[self.objective]
        if self.method not in allowed:
            combos = "; ".join(f"{o}: {', '.join(m)}" for o, m in METHODS_FOR_OBJECTIVE.items())
            raise ConfigError(
                f"method {self.method!r} does not fit objective {self.objective!r}",
                where=self.source, key="method", expected=f"for {self.objective}: {', '.join(allowed)} (all: {combos})",
            )
        if self.method == "freeze" and not (self.freeze.modules or self.freeze.last_n_layers):
            raise ConfigError("freeze needs modules to train", where=self.source, key="freeze",
                              expected="freeze.modules (name substrings) or freeze.last_n_layers")
        if isinstance(self.model, dict):
            self._check_scratch_model()
        if self.forgetting is not None and self.objective not in ("pretrain", "sft"):
            raise ConfigError("the forgetting check measures a language model's perplexity", where=self.source,
                              key="forgetting", found=f"objective {self.objective}", expected="objective pretrain or sft")
        if self.forgetting is not None and self.train.fsdp:
            raise ConfigError("the forgetting check needs the whole model in each process", where=self.source,
                              key="forgetting", found="train.fsdp: true", expected="DDP or one process")
        if self.train.lr is None:
            self.train.lr = DEFAULT_SCRATCH_LR if isinstance(self.model, dict) else DEFAULT_LR[self.method]

    def _check_scratch_model(self) -> None:
        """A model built from a config starts from random weights: only pre-training all of them makes sense."""
        from tailorlm.models.build import model_spec

        spec = model_spec(self.model, where=self.source)
        if self.objective != "pretrain" or self.method != "full":
            wrong = "objective" if self.objective != "pretrain" else "method"
            raise ConfigError(
                "a model built from a config has random weights, so it can only be pre-trained, all of it",
                where=self.source, key=wrong, found=f"objective {self.objective}, method {self.method}",
                expected="objective: pretrain and method: full",
                hint="Pre-train it first (tailor pretrain), then fine-tune the result by naming its folder as model")
        if self.train.max_length > spec.context_length:
            raise ConfigError("max_length is longer than the model's context", where=self.source,
                              key="train.max_length", found=str(self.train.max_length),
                              expected=f"at most model.context_length ({spec.context_length})")
        self.model = spec.to_dict()

    @property
    def model_name(self) -> str:
        """The model as one short phrase for messages and the manifest."""
        if isinstance(self.model, dict):
            return f"new {self.model['architecture']} ({self.model['layers']} layers, hidden {self.model['hidden_size']})"
        return self.model

    def to_dict(self) -> dict[str, Any]:
        """The resolved settings as plain data (saved in the manifest, printed before a run)."""
        data = dataclasses.asdict(self)
        data.pop("source"), data.pop("base_dir")
        return data


TOP_KEYS = [f.name for f in dataclasses.fields(RunConfig) if f.name not in ("source", "base_dir")]
# Settings that change what a run reports but not what it trains, so a run may resume with others.
REPORT_ONLY_KEYS = ("samples",)


def resolve_config(recipe: str | Path | None = None, *, values: dict[str, Any] | None = None,
                   overrides: list[str] | None = None, quick: bool = False) -> RunConfig:
    """Merge a recipe, explicit command-line values (dotted keys) and `key=value` overrides into a checked RunConfig.

    With `quick`, the recipe's `quick:` section (a short run: fewer steps, another output folder) is merged over the
    rest of the recipe first; flags and overrides still win over it. Without it the section is ignored.
    """
    data: dict[str, Any] = load_yaml(recipe) if recipe else {}
    source = str(recipe) if recipe else "<command line>"
    data = _with_quick(data, quick, source)
    base_dir = str(Path(recipe).resolve().parent) if recipe else str(Path.cwd())
    if isinstance(data.get("data"), (str, list)):
        data["data"] = {"train": data["data"]}
    values = {("data.train" if k == "data" else k): v for k, v in (values or {}).items()}
    flat = [f"{k}={v!r}" if isinstance(v, str) and not _plain(v) else f"{k}={v}" for k, v in values.items() if v is not None]
    data = apply_overrides(data, flat + list(overrides or []))
    check_keys(data, TOP_KEYS, where=source)
    for name in ("model", "objective", "method", "data", "output"):
        if data.get(name) in (None, ""):
            raise ConfigError("missing setting", where=source, key=name, expected=_EXPECTED[name])
    for name in ("objective", "method"):
        allowed = OBJECTIVES if name == "objective" else METHODS
        if data[name] not in allowed:
            raise ConfigError(f"unknown {name}", where=source, key=name, found=repr(data[name]),
                              expected="one of " + ", ".join(allowed), hint=suggest(str(data[name]), allowed))
    return build_dataclass(RunConfig, {**data, "source": source, "base_dir": base_dir}, where=source, section="")


def _with_quick(data: dict[str, Any], quick: bool, source: str) -> dict[str, Any]:
    """The recipe without its `quick:` section, or with it merged in (mappings merged key by key) when `quick`."""
    section = data.pop("quick", None)
    if not quick:
        return data
    if section is None:
        raise ConfigError("the recipe has no quick: section", where=source, key="quick",
                          expected="a mapping of the settings of a short run, e.g. quick: {train: {max_steps: 20}}",
                          hint="Run without --quick, or shorten it with --max-steps N")
    if not isinstance(section, dict):
        raise ConfigError("quick: must be a mapping", where=source, key="quick", found=repr(section),
                          expected="settings of the recipe, e.g. {train: {max_steps: 20}, output: runs/short}")
    return _merged(data, section)


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = (_merged(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict)
                       else value)
    return merged


def _plain(text: str) -> bool:
    return all(c.isalnum() or c in "-_./:" for c in text)


_EXPECTED = {
    "model": "a model reference (smollm2-135m-instruct, minilm-l6, a folder or a .gguf file), or a mapping that "
             "builds a new model (architecture, layers, heads, hidden_size, ...)",
    "objective": "one of " + ", ".join(OBJECTIVES),
    "method": "one of " + ", ".join(METHODS),
    "data": "a data file, or a mapping with train (and optionally eval, test) files",
    "output": "a folder for the specialist and checkpoints",
}
