"""Everything a run needs before its first step: output folder, data, model, method, batch plans."""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from tailorlm.errors import ConfigError, DataError
from tailorlm.strategies.adapters import apply_method, count_parameters
from tailorlm.strategies.base import Manifest, file_sha256, library_versions, save_specialist
from tailorlm.training.attention import restore_attention, use_packed_attention
from tailorlm.training.cpu_kernels import cpu_kernels
from tailorlm.training.fused import restore_layers, use_lean_layers
from tailorlm.training.matmul import restore_linear, use_onednn_linear
from tailorlm.training.batches import BatchPlan, StreamPlan
from tailorlm.training.checkpoint import list_checkpoints
from tailorlm.training.config import PROMPT_METHODS, REPORT_ONLY_KEYS, RunConfig, TrainSettings
from tailorlm.training.distributed import World, barrier
from tailorlm.training.features import build_features
from tailorlm.training.loss import unwrap_model
from tailorlm.training.objectives import head_for
from tailorlm.training.stream import stream_plans, streams as _streams

RUN_FILE = "run.json"


@dataclass
class Prepared:
    """A run ready to step."""

    config: RunConfig
    output: Path
    device: torch.device
    dtype: torch.dtype
    model: Any
    tokenizer: Any
    model_path: str
    objective: str
    plan: BatchPlan | StreamPlan
    eval_plan: BatchPlan | StreamPlan | None
    label_names: list[str] | None
    data_files: dict[str, dict[str, str]]
    trainable: int
    total: int
    template_added: bool
    forgetting: Any = None
    """A `perplexity.ForgettingCheck` when the recipe asks for one."""

    def autocast(self) -> Any:
        """bf16 autocast on GPU; nothing on CPU, where fp32 is the fast dtype."""
        if self.device.type == "cuda" and self.dtype == torch.bfloat16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def save_specialist(self, state: Any, result: Any, world: World = World(), fsdp_root: Any = None,
                        console: Console | None = None) -> None:
        """Save the best checkpoint's weights (when evaluation picked one) or the last, with the manifest.

        The main process writes. Under FSDP (`fsdp_root` is the sharded loss module) every process must call this:
        all of them take part in gathering the whole weights. A forgetting check measures the saved weights.
        """
        from tailorlm.training.checkpoint import checkpoint_dir, load_trainable
        from tailorlm.training.fsdp import gather_model, whole_root

        if not (world.main or fsdp_root is not None):
            return
        restore_attention(unwrap_model(self.model))  # the saved model uses plain SDPA, like any other
        restore_layers(self.model)
        if state.best_step is not None and state.best_step != state.step:
            load_trainable(self.model, checkpoint_dir(self.output, state.best_step) / "trainable.safetensors")
        weights = gather_model(self.model) if fsdp_root is not None else None
        metrics = {"final_loss": result.final_loss, "best_step": state.best_step, "steps": state.step}
        evals = [h for h in state.history if "eval_loss" in h]
        if evals:
            best = next((h for h in evals if h["step"] == state.best_step), evals[-1])
            metrics["best"] = best
        if self.forgetting is not None and state.perplexity_before is not None:
            from tailorlm.training.perplexity import format_forgetting

            # on the weights being saved, with training's kernels (oneDNN or not), as the "before" was measured
            after = self.forgetting.measure(self.model, chunk_size=self.config.train.loss_chunk_size)
            metrics["forgetting"] = result.forgetting = self.forgetting.report(state.perplexity_before, after)
            if world.main and console is not None:
                console.print(format_forgetting(metrics["forgetting"]))
        restore_linear(self.model)  # the model after training multiplies as a reloaded one does
        manifest = Manifest(
            base_model=self.config.model_name, base_model_path=self.model_path, strategy=self.config.method,
            objective=self.objective, weights="adapter" if _is_peft(self.model) else "full",
            labels=self.label_names, config=self.config.to_dict(), data=self.data_files, steps=state.step,
            metrics=metrics, versions=library_versions(),
        )
        # peft saves a prompt method's virtual tokens by running its prompt encoder, which FSDP keeps in the root
        with whole_root(fsdp_root):
            if world.main:
                save_specialist(self.output, self.model, self.tokenizer, manifest, state_dict=weights)


def pick_device(settings: TrainSettings, world: World = World()) -> torch.device:
    """The device this process trains on: its own GPU under DDP, else the configured or best one."""
    name = settings.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and world.size > 1:
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return torch.device(name)


def prepare(config: RunConfig, *, resume: bool, overwrite: bool, console: Console, world: World = World()) -> Prepared:
    """Check the output folder, load data and model, apply the method, and plan the batches (no training yet).

    Nothing is written until everything has been checked, so a run refused here leaves the output folder as it was.
    """
    from tailorlm.data.spec import DataSpec
    from tailorlm.data.templates import ensure_chat_template
    from tailorlm.models.load import resolve_dtype

    settings = config.train
    output = Path(config.output)
    _check_output(output, config, resume=resume, overwrite=overwrite)
    device = pick_device(settings, world)
    dtype = resolve_dtype(None if settings.dtype == "auto" else settings.dtype, device.type)

    data = dict(config.data)
    stream = data.pop("stream", None)
    spec = DataSpec.from_dict(data, source=config.source, base_dir=Path(config.base_dir))
    spec.check_files()
    streaming = _streams(config, spec, stream)
    train_examples: list = []
    splits: dict[str, list] = {}
    if not streaming:  # a streamed corpus is read by the token cache, never whole into memory
        splits = spec.load()
        train_examples = splits.get("train") or []
        if not train_examples:
            raise DataError("the training split is empty", where=config.source, key="data.train",
                            expected="at least one example")

    label_names = config.labels
    if config.objective == "classify" and label_names is None:
        from tailorlm.training.features import _label_sort_key

        label_names = sorted({ex.label for ex in train_examples if hasattr(ex, "label")}, key=_label_sort_key)
    # Weights stay fp32 for training; bf16 on GPU comes from autocast, which keeps fp32 master weights.
    model, tokenizer, model_path = _model(config, label_names, device, console)
    _check_context(model, settings.max_length, config)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    template_added = False
    if config.objective == "sft":
        template_added = ensure_chat_template(tokenizer)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
    if label_names:
        model.config.id2label = dict(enumerate(label_names))
        model.config.label2id = {name: i for i, name in enumerate(label_names)}

    if streaming:
        plan, eval_plan = stream_plans(config, spec, tokenizer, world)
    else:
        plan, eval_plan = _example_plans(config, splits, tokenizer, label_names, console)
    forgetting = _forgetting_check(config, tokenizer, eval_plan) if config.forgetting is not None else None

    packing = plan.packing
    kernels = device.type == "cpu" and settings.cpu_kernels  # tailorlm's compiled CPU kernels
    if kernels:
        cpu_kernels(announce=lambda line: console.print(line) if world.main else None)
    if packing:  # per-example causal attention instead of a block-diagonal mask over each row
        use_packed_attention(model, kernel=kernels)
    use_lean_layers(model, kernels=kernels)  # RMSNorm and SwiGLU that keep fewer tensors for the backward
    model = apply_method(model, config, model_path=model_path)
    trainable, total = count_parameters(model)
    if device.type == "cpu" and settings.cpu_matmul == "onednn":
        use_onednn_linear(model)  # fp32 linear layers through oneDNN, which uses AVX-512 where MKL does not
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()

    if config.objective in ("pretrain", "sft"):
        from tailorlm.training.loss import check_model

        check_model(model, packed=packing)  # two tiny probes: the chunked loss and packing are exact for this model
    barrier(world)  # every process has checked the folder before the first one changes it
    if world.main:
        _claim_output(output, config, resume=resume, overwrite=overwrite, console=console)
    rows = (f"{plan.num_rows:,} blocks of {settings.max_length} tokens streamed from {plan.cache.path}"
            if streaming else f"{len(plan.items):,} training sequences")
    console.print(f"model {config.model_name}: {trainable:,} of {total:,} parameters train ({config.method}); "
                  f"{rows}, {plan.steps_per_epoch(settings.grad_accum):,} "
                  f"steps per epoch{'; packed ' + format(plan.efficiency, '.0%') + ' full' if packing else ''}")
    return Prepared(config=config, output=output, device=device, dtype=dtype, model=model, tokenizer=tokenizer,
                    model_path=model_path, objective=config.objective, plan=plan, eval_plan=eval_plan,
                    label_names=label_names, data_files=_fingerprints(spec), trainable=trainable,
                    total=total, template_added=template_added, forgetting=forgetting)


def _model(config: RunConfig, label_names: list[str] | None, device: torch.device,
           console: Console) -> tuple[Any, Any, str]:
    """(model, tokenizer, folder it came from): a model reference loaded, or a new model built from its config."""
    from tailorlm.models.hub import resolve
    from tailorlm.models.load import load_model

    if isinstance(config.model, dict):
        from tailorlm.models.build import build_model, describe, load_spec_tokenizer, model_spec

        spec = model_spec(config.model, where=config.source)
        tokenizer = load_spec_tokenizer(spec, base_dir=Path(config.base_dir))
        console.print(describe(spec, tokenizer))
        return build_model(spec, tokenizer, seed=config.train.seed).to(device), tokenizer, ""
    model_path = str(resolve(config.model))
    model, tokenizer = load_model(model_path, head=head_for(config.objective),
                                  num_labels=len(label_names) if label_names else None, dtype=torch.float32,
                                  device=str(device))
    return model, tokenizer, model_path


def _example_plans(config: RunConfig, splits: dict[str, list], tokenizer: Any, label_names: list[str] | None,
                   console: Console) -> tuple[BatchPlan, BatchPlan | None]:
    """Tokenize the examples of train and eval in memory and plan their batches (packed for causal objectives)."""
    settings = config.train
    features = build_features(config.objective, splits["train"], tokenizer, max_length=settings.max_length,
                              label_names=label_names, split="train")
    if features.truncated:
        console.print(f"[yellow]note:[/yellow] {features.truncated} training examples were truncated to "
                      f"{settings.max_length} tokens")
    eval_examples = splits.get("eval") or []
    eval_features = build_features(config.objective, eval_examples, tokenizer, max_length=settings.max_length,
                                   label_names=label_names, split="eval") if eval_examples else None
    packing = settings.packing and config.objective in ("pretrain", "sft") and config.method not in PROMPT_METHODS
    pad_id = tokenizer.pad_token_id
    plan = BatchPlan(features.items, objective=config.objective, batch_size=settings.batch_size,
                     max_length=settings.max_length, pad_id=pad_id, packing=packing,
                     group_by_length=settings.group_by_length, seed=settings.seed, shuffle=True)
    eval_plan = None
    if eval_features is not None:
        eval_plan = BatchPlan(eval_features.items, objective=config.objective, batch_size=settings.batch_size,
                              max_length=settings.max_length, pad_id=pad_id, packing=packing,
                              group_by_length=True, seed=settings.seed, shuffle=False)
    return plan, eval_plan


def _check_output(output: Path, config: RunConfig, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs in one folder (checked before any work, so a refused run changes nothing)."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other", where=str(output),
                          hint="Use --resume to continue the run in this folder, or --overwrite to start again")
    if output.exists() and not output.is_dir():
        raise ConfigError("the output path is a file, not a folder", where=str(output), key="output",
                          expected="a new or empty folder")
    run_file = output / RUN_FILE
    wanted = json.dumps(_identity(config), sort_keys=True)
    if resume:
        if not list_checkpoints(output):
            raise ConfigError("nothing to resume: the output folder holds no checkpoint", where=str(output),
                              hint="Run without --resume to start")
        saved = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else None
        if saved is not None and isinstance(saved.get("train"), dict):  # an older run.json may record more of them
            saved["train"] = _resumable_train(saved["train"])
        if saved is not None and json.dumps(saved, sort_keys=True) != wanted:
            raise ConfigError("--resume needs the settings of the run that made the checkpoints", where=str(run_file),
                              found=_first_difference(saved, _identity(config)), expected="the same model, data and method",
                              hint="Set it back, or start a new run (another --output, or --overwrite)")
        return
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise ConfigError("the output folder already holds files", where=str(output),
                          expected="a new or empty folder", hint="Pass --resume to continue that run, or --overwrite "
                          f"to move it to {output.name}.previous and start again")


def _claim_output(output: Path, config: RunConfig, *, resume: bool, overwrite: bool, console: Console) -> None:
    """Once the run is known to be valid: move an old run aside (--overwrite) and record this run's settings."""
    if resume:
        return
    if output.exists() and any(output.iterdir()) and overwrite:
        previous = output.with_name(output.name + ".previous")
        if previous.exists():
            shutil.rmtree(previous)
        output.rename(previous)
        console.print(f"moved the previous contents of {output} to {previous}")
    output.mkdir(parents=True, exist_ok=True)
    (output / RUN_FILE).write_text(json.dumps(_identity(config), indent=1), encoding="utf-8")


def _identity(config: RunConfig) -> dict[str, Any]:
    """The settings that must match for a checkpoint to be resumable (step counts may change, and so may
    train.fsdp: FSDP writes the same whole-tensor checkpoints as one process or DDP, and train.cpu_matmul and
    train.cpu_kernels, which change only the last bits of the results).

    Paths count by what they point at, so `data.jsonl` and `/home/me/data.jsonl` are the same setting.
    """
    data = config.to_dict()
    data.pop("output")
    for key in REPORT_ONLY_KEYS:
        data.pop(key)
    if data.get("forgetting") is None:  # runs made before the check existed have no such key
        data.pop("forgetting", None)
    base = Path(config.base_dir)
    if isinstance(data["model"], dict):
        data["model"] = {**data["model"], "tokenizer": _absolute(data["model"]["tokenizer"], base)}
    else:
        data["model"] = _absolute(data["model"], base)
    data["data"] = dict(data["data"])
    for split in ("train", "eval", "test"):
        value = data["data"].get(split)
        if value is not None:
            paths = value if isinstance(value, list) else [value]
            data["data"][split] = [_absolute(v, base) for v in paths]
    data["train"] = _resumable_train(data["train"])
    return data


_FREE_TRAIN_KEYS = ("max_steps", "epochs", "eval_every", "save_every", "keep_last", "log_every", "tensorboard",
                    "mlflow", "early_stopping_patience", "fsdp", "cpu_matmul", "cpu_kernels",
                    "frozen_weights")  # removed from the settings; a run.json from before may still record it
"""train.* settings a resumed run may change."""


def _resumable_train(train: dict[str, Any]) -> dict[str, Any]:
    """The train.* settings that must match for a resume."""
    return {k: v for k, v in train.items() if k not in _FREE_TRAIN_KEYS}


def _absolute(reference: Any, base: Path) -> Any:
    """An existing file or folder as an absolute path (keeping any `#fragment`); anything else unchanged."""
    if not isinstance(reference, str):
        return reference
    file, mark, fragment = reference.partition("#")
    path = base / file
    return str(path.resolve()) + mark + fragment if file and path.exists() else reference


def _first_difference(saved: dict, wanted: dict, prefix: str = "") -> str:
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key} was {a!r}, now {b!r}"
    return ""


def _check_context(model: Any, max_length: int, config: RunConfig) -> None:
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit and max_length > limit:
        raise ConfigError("max_length is longer than the model's context", where=config.source, key="train.max_length",
                          found=str(max_length), expected=f"at most {limit} tokens for {config.model_name}")


def _fingerprints(spec: Any) -> dict[str, dict[str, str]]:
    """sha256 of every data file of each split, so a specialist records exactly what it learned from."""
    result: dict[str, dict[str, str]] = {}
    for split in ("train", "eval", "test"):
        for entry in getattr(spec, split, None) or []:
            path = Path(str(entry).split("#", 1)[0])
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in files:
                if file.is_file():
                    result.setdefault(split, {})[str(file)] = file_sha256(file)
    return result


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def _forgetting_check(config: RunConfig, tokenizer: Any, eval_plan: Any) -> Any:
    """Tokenize the general and domain texts of the forgetting check once, before any training."""
    from tailorlm.training.perplexity import ForgettingCheck, text_tokens

    settings = config.forgetting
    base = Path(config.base_dir)
    texts, labels = {}, {}
    for name in ("general", "domain"):
        source = getattr(settings, name)
        if source == "eval":
            if eval_plan is None:
                raise ConfigError("the forgetting check's domain text is the eval split, and this run has none",
                                  where=config.source, key="forgetting.domain",
                                  expected="an eval split (data.eval or data.split.eval), or a held-out text file")
            texts[name], labels[name] = eval_plan.tokens(settings.max_tokens), "eval split"
        else:
            texts[name] = text_tokens(source, tokenizer, max_tokens=settings.max_tokens, where=config.source,
                                      base_dir=base, key=f"forgetting.{name}")
            labels[name] = _text_label(source)
    return ForgettingCheck(texts=texts, window=config.train.max_length, margin=settings.margin, labels=labels)


def _text_label(source: Any) -> str:
    """A short name of a text source for the printed table: the first file's name."""
    first = source if isinstance(source, str) else source.get("train")
    first = first[0] if isinstance(first, list) and first else first
    return Path(str(first)).name if first else "text"
