"""A new decoder with random weights, built from a recipe's `model:` mapping through `transformers` configs.

    model:
      architecture: llama        # llama: RoPE, RMSNorm, SwiGLU, grouped-query attention; gpt2: learned positions,
      layers: 4                  #   LayerNorm, GELU
      heads: 4
      kv_heads: 2                # llama only: key-value heads shared by groups of query heads (GQA)
      hidden_size: 256
      ffn_size: 688              # default: 8/3 x hidden (llama, rounded up to a multiple of 64), 4 x hidden (gpt2)
      context_length: 256
      tokenizer: smollm2-135m-instruct   # a model reference or a tokenizer folder (`tailor tokenizer train`)
      tie_embeddings: true
      dropout: 0.0

The model is an ordinary `LlamaForCausalLM` or `GPT2LMHeadModel` initialised by transformers' own init, so the
trained result is a model folder that anything loading Hugging Face models can use.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tailorlm.config import build_dataclass, check_keys, suggest
from tailorlm.errors import ConfigError

ARCHITECTURES = ("llama", "gpt2")
DEFAULT_TOKENIZER = "smollm2-135m-instruct"


@dataclass
class ModelSpec:
    """The shape of a decoder to build from scratch."""

    architecture: str
    """llama or gpt2."""
    layers: int
    """Transformer blocks."""
    heads: int
    """Attention (query) heads; must divide hidden_size."""
    hidden_size: int
    """Width of the residual stream (and of the token embeddings)."""
    kv_heads: int | None = None
    """llama only: key-value heads, each shared by heads / kv_heads query heads; default: heads (no sharing)."""
    ffn_size: int | None = None
    """Inner width of the feed-forward layer; default 8/3 x hidden_size for llama (SwiGLU has three matrices, so
    this matches the parameters of a 4 x hidden GELU layer), 4 x hidden_size for gpt2."""
    context_length: int = 1024
    """Longest sequence in tokens (gpt2 learns one position embedding for each)."""
    tokenizer: str = DEFAULT_TOKENIZER
    """A model reference whose tokenizer to use, or a tokenizer folder; sets the vocabulary and special tokens."""
    tie_embeddings: bool = True
    """Share the input embedding with the output layer (saves vocabulary x hidden parameters)."""
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError("unknown architecture", key="model.architecture", found=repr(self.architecture),
                              expected="one of " + ", ".join(ARCHITECTURES),
                              hint=suggest(str(self.architecture), ARCHITECTURES))
        for name in ("layers", "heads", "hidden_size", "context_length", "kv_heads", "ffn_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError("must be a positive whole number", key=f"model.{name}", found=str(value))
        if self.hidden_size % self.heads:
            raise ConfigError("the heads do not divide the hidden size", key="model.heads",
                              found=f"{self.heads} heads for hidden_size {self.hidden_size}",
                              expected="a divisor of hidden_size, e.g. " + _divisors_near(self.hidden_size, self.heads),
                              hint="Each head gets hidden_size / heads dimensions")
        if self.kv_heads is not None:
            if self.architecture != "llama":
                raise ConfigError("kv_heads applies to llama only", key="model.kv_heads", found=str(self.kv_heads),
                                  expected="no kv_heads for gpt2 (every head has its own keys and values)")
            if self.heads % self.kv_heads:
                raise ConfigError("the key-value heads do not divide the heads", key="model.kv_heads",
                                  found=f"{self.kv_heads} kv_heads for {self.heads} heads",
                                  expected="a divisor of heads, e.g. " + _divisors_near(self.heads, self.kv_heads),
                                  hint="Each key-value head is shared by heads / kv_heads query heads")
        if (self.hidden_size // self.heads) % 2 and self.architecture == "llama":
            raise ConfigError("RoPE needs an even head size", key="model.heads",
                              found=f"hidden_size / heads = {self.hidden_size // self.heads}",
                              expected="hidden_size / heads even")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("must be in [0, 1)", key="model.dropout", found=str(self.dropout))
        if not str(self.tokenizer).strip():
            raise ConfigError("missing setting", key="model.tokenizer",
                              expected="a model reference or a tokenizer folder")
        if self.ffn_size is None:
            self.ffn_size = _round_up(self.hidden_size * 8 // 3, 64) if self.architecture == "llama" \
                else 4 * self.hidden_size
        if self.kv_heads is None and self.architecture == "llama":
            self.kv_heads = self.heads

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.architecture != "llama":
            data.pop("kv_heads")
        return data


FIELDS = [f.name for f in dataclasses.fields(ModelSpec)]
REQUIRED = ("architecture", "layers", "heads", "hidden_size")


def model_spec(data: Mapping[str, Any], *, where: str) -> ModelSpec:
    """Check a recipe's `model:` mapping (names, types, sizes) without building anything."""
    data = dict(data)
    check_keys(data, FIELDS, where=where, section="model")
    for name in REQUIRED:
        if data.get(name) is None:
            raise ConfigError("missing setting", where=where, key=f"model.{name}",
                              expected=_REQUIRED_EXPECTED[name])
    return build_dataclass(ModelSpec, data, where=where, section="model")


_REQUIRED_EXPECTED = {
    "architecture": "one of " + ", ".join(ARCHITECTURES),
    "layers": "the number of transformer blocks, e.g. 4",
    "heads": "the number of attention heads, e.g. 4",
    "hidden_size": "the model width, e.g. 256",
}


def load_spec_tokenizer(spec: ModelSpec, *, base_dir: Path) -> Any:
    """The tokenizer named by the spec: a folder (relative to the recipe) or a model reference."""
    from transformers import AutoTokenizer

    from tailorlm.models.load import load_tokenizer

    folder = tokenizer_folder(spec.tokenizer, base_dir)
    if folder is not None and not (folder / "config.json").is_file():  # a tokenizer folder without a model
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as err:
            from tailorlm.errors import ModelError

            raise ModelError("cannot load the tokenizer", where=str(folder), key="model.tokenizer",
                             found=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                             expected="a folder written by `tailor tokenizer train` or `save_pretrained`") from err
    else:
        tokenizer = load_tokenizer(str(folder) if folder is not None else spec.tokenizer)
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no end-of-text token, which separates documents in pre-training",
                          key="model.tokenizer", found=spec.tokenizer, expected="a tokenizer with an eos_token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_folder(reference: str, base_dir: Path) -> Path | None:
    """The folder a tokenizer reference names, relative to the recipe's folder first; None for other references."""
    for candidate in (base_dir / reference, Path(reference).expanduser()):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def hf_config(spec: ModelSpec, tokenizer: Any) -> Any:
    """The transformers config of the spec, with the vocabulary and special-token ids of `tokenizer`."""
    from transformers import GPT2Config, LlamaConfig

    ids = {"bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
           "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    vocab = len(tokenizer)
    if spec.architecture == "llama":
        return LlamaConfig(
            vocab_size=vocab, hidden_size=spec.hidden_size, intermediate_size=spec.ffn_size,
            num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
            max_position_embeddings=spec.context_length, tie_word_embeddings=spec.tie_embeddings,
            attention_dropout=spec.dropout, **ids,
        )
    return GPT2Config(
        vocab_size=vocab, n_embd=spec.hidden_size, n_inner=spec.ffn_size, n_layer=spec.layers, n_head=spec.heads,
        n_positions=spec.context_length, tie_word_embeddings=spec.tie_embeddings,
        resid_pdrop=spec.dropout, embd_pdrop=spec.dropout, attn_pdrop=spec.dropout, **ids,
    )


def build_model(spec: ModelSpec, tokenizer: Any, *, seed: int = 0) -> Any:
    """A causal LM of the spec's shape with transformers' initial weights, the same for the same seed."""
    import torch
    from transformers import AutoModelForCausalLM

    config = hf_config(spec, tokenizer)
    # A private RNG stream, so that building a model neither depends on nor changes what ran before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model


def parameter_count(spec: ModelSpec, tokenizer: Any) -> int:
    """Parameters of the model the spec builds (a tied output layer counted once), without allocating weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(spec, tokenizer))
    return sum(p.numel() for p in model.parameters())  # parameters() yields a shared tensor once


def describe(spec: ModelSpec, tokenizer: Any) -> str:
    """One paragraph for `--dry-run` and the run's start: architecture, sizes and parameters."""
    config = hf_config(spec, tokenizer)
    total = parameter_count(spec, tokenizer)
    embedding = config.vocab_size * spec.hidden_size
    parts = {
        "llama": "RoPE, RMSNorm, SwiGLU" + (f", grouped-query attention ({spec.heads} heads share {spec.kv_heads} "
                                            "key-value heads)" if spec.kv_heads != spec.heads else ""),
        "gpt2": "learned positions, LayerNorm, GELU",
    }[spec.architecture]
    return (f"new {_class_name(spec)} from scratch: "
            f"{spec.layers} layers, hidden {spec.hidden_size}, {spec.heads} heads, feed-forward {spec.ffn_size}, "
            f"context {spec.context_length}, vocabulary {config.vocab_size:,} ({parts}"
            f"{', tied embeddings' if spec.tie_embeddings else ''}); {total:,} parameters, of which the token "
            f"embedding is {embedding:,} ({embedding / total:.0%})")


def summary(model: Mapping[str, Any], *, base_dir: Path, where: str = "model") -> str:
    """`describe` for a recipe's `model:` mapping (loads only the tokenizer)."""
    spec = model_spec(model, where=where)
    return describe(spec, load_spec_tokenizer(spec, base_dir=base_dir))


def _class_name(spec: ModelSpec) -> str:
    return {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}[spec.architecture]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _divisors_near(total: int, wanted: int) -> str:
    """The divisors of `total` just below and above `wanted`: '4 or 8'."""
    divisors = [d for d in range(1, total + 1) if total % d == 0]
    below = [d for d in divisors if d < wanted][-1:]
    above = [d for d in divisors if d > wanted][:1]
    return " or ".join(str(d) for d in below + above)
