"""Write a Llama-architecture decoder (SmolLM2, Llama, TinyLlama...) as one GGUF file, in llama.cpp's layout.

What llama.cpp expects, and transformers' GGUF loader (`modeling_gguf_pytorch_utils.py`) undoes when it reads the file
back: tensors named `token_embd`, `blk.N.attn_q` ... `output_norm`, `output` (absent when tied to the embeddings),
with the rows of the Q and K projections permuted from Hugging Face's rotate-half RoPE layout into the interleaved
pairs llama.cpp rotates; the hyper-parameters under `llama.*`; the tokenizer as a byte-level BPE ("gpt2") vocabulary
with merges and token types; the chat template under `tokenizer.chat_template`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tailorlm.errors import ConfigError, ModelError

QUANTS = ("f32", "f16", "q8_0")
"""The `--quant` values: f32 and f16 keep every weight, q8_0 stores 8-bit blocks of 32 with one scale each."""
ARCHITECTURES = ("llama",)
"""Hugging Face `model_type`s this writer knows (SmolLM2 is Llama)."""

# llama.cpp's token types (gguf.TokenType): the ones a byte-level BPE vocabulary uses.
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5


@dataclass
class GgufSummary:
    """What was written: the file, its quantization and how many tensors of each storage type it holds."""

    path: Path
    quant: str
    tensor_types: dict[str, int]
    bytes: int


def check_supported(model: Any, quant: str) -> None:
    """Refuse, before any work, a quantization or an architecture this writer does not handle."""
    if quant not in QUANTS:
        raise ConfigError("unsupported GGUF quantization", key="quant", found=repr(quant),
                          expected="one of " + ", ".join(QUANTS))
    config = model.config
    model_type = getattr(config, "model_type", "unknown")
    if model_type not in ARCHITECTURES or not type(model).__name__.endswith("ForCausalLM"):
        raise ModelError("GGUF export handles only Llama-architecture decoders",
                         found=f"{type(model).__name__} (model type {model_type!r})",
                         expected="a causal LM of model type " + ", ".join(ARCHITECTURES),
                         hint="Export it with --format hf instead")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ModelError("GGUF export does not handle Llama models with bias terms", found="attention_bias or mlp_bias",
                         expected="a Llama model without biases", hint="Export it with --format hf instead")
    rope = _rope_parameters(config)
    if rope.get("rope_type", "default") != "default":
        raise ModelError("GGUF export handles only the default RoPE", found=f"rope_type {rope.get('rope_type')!r}",
                         expected="rope_type 'default'", hint="Export it with --format hf instead")


def write_gguf(model: Any, tokenizer: Any, path: Path, quant: str, *, name: str = "model") -> GgufSummary:
    """Write `model` (a merged `LlamaForCausalLM`) and `tokenizer` to the GGUF file `path`, quantized as `quant`."""
    import gguf

    check_supported(model, quant)
    config = model.config
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    tied = bool(getattr(config, "tie_word_embeddings", False)) or "lm_head.weight" not in state or (
        state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr())
    vocab_rows = state["model.embed_tokens.weight"].shape[0]

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_type("model")
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant])
    _add_hyperparameters(writer, config, vocab_rows)
    _add_tokenizer(writer, tokenizer, vocab_rows)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    counts: dict[str, int] = {}
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise ModelError("this model has a weight with no llama.cpp name", found=hf_name,
                             expected="only the weights of a plain Llama model", hint="Export it with --format hf")
        data = tensor.float().numpy()
        if gguf_name.endswith(".attn_q"):
            data = permute_for_llama_cpp(data, heads, heads)
        elif gguf_name.endswith(".attn_k"):
            data = permute_for_llama_cpp(data, heads, kv_heads)
        data, qtype = _quantize(data, quant)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
        writer.add_tensor(f"{gguf_name}.{suffix}", data, raw_dtype=qtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GgufSummary(path=Path(path), quant=quant, tensor_types=counts, bytes=Path(path).stat().st_size)


def permute_for_llama_cpp(weights: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """Reorder Q/K projection rows from Hugging Face's RoPE halves to llama.cpp's interleaved pairs.

    The inverse of transformers' `LlamaTensorProcessor._reverse_permute_weights` (and the same as llama.cpp's
    `convert_hf_to_gguf.py` `LlamaModel.permute`): per head, row `i` of the first half and row `i` of the second half
    become rows `2i` and `2i + 1`.
    """
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    dim = weights.shape[0] // n_head // 2
    return weights.reshape(n_head, 2, dim, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)  # (out, in)


def _quantize(data: np.ndarray, quant: str) -> tuple[np.ndarray, Any]:
    """The stored array and its ggml type. Norms (1-D) stay float32, as llama.cpp keeps them; a matrix whose rows do
    not split into q8_0's blocks of 32 falls back to f16."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize

    if data.ndim == 1 or quant == "f32":
        return data.astype(np.float32), T.F32
    if quant == "q8_0" and data.shape[-1] % 32 == 0:
        return quantize(data, T.Q8_0), T.Q8_0
    return data.astype(np.float16), T.F16


def _rope_parameters(config: Any) -> dict[str, Any]:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return dict(rope)


def _add_hyperparameters(writer: Any, config: Any, vocab_rows: int) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = _rope_parameters(config)
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(config.num_key_value_heads))
    writer.add_rope_freq_base(float(theta))
    writer.add_rope_dimension_count(int(head_dim))
    if head_dim * config.num_attention_heads != config.hidden_size:
        writer.add_key_length(int(head_dim))
        writer.add_value_length(int(head_dim))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(vocab_rows))


def _add_tokenizer(writer: Any, tokenizer: Any, vocab_rows: int) -> None:
    """The vocabulary, merges, token types, special ids and chat template of a byte-level BPE tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not _is_byte_level(spec):
        raise ModelError("GGUF export handles only byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM style)",
                         found=f"a {model.get('type', type(tokenizer).__name__)} tokenizer",
                         expected="a byte-level BPE tokenizer", hint="Export it with --format hf instead")
    size = len(tokenizer)
    if size > vocab_rows:
        raise ModelError("the tokenizer has more tokens than the model has embedding rows",
                         found=f"{size} tokens, {vocab_rows} rows", expected="at most as many tokens as rows")
    added = {index: token for index, token in tokenizer.added_tokens_decoder.items()}
    tokens, types = [], []
    for index, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(size)))):
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(_UNUSED)
        elif index in added:
            tokens.append(added[index].content)
            types.append(_CONTROL if added[index].special else _USER_DEFINED)
        else:
            tokens.append(token)
            types.append(_NORMAL)
    for index in range(size, vocab_rows):  # embedding rows beyond the tokenizer (padded vocabularies)
        tokens.append(f"[PAD{index}]")
        types.append(_UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(spec))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                     ("unk_token_id", writer.add_unk_token_id), ("pad_token_id", writer.add_pad_token_id)):
        value = getattr(tokenizer, key, None)
        if value is not None:
            add(int(value))
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    writer.add_add_bos_token(len(with_special) > len(plain) and with_special[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(len(with_special) > len(plain) and with_special[-1] == tokenizer.eos_token_id)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        writer.add_chat_template(template)


def _is_byte_level(spec: dict[str, Any]) -> bool:
    def has(node: Any) -> bool:
        if not isinstance(node, dict):
            return False
        if node.get("type") == "ByteLevel":
            return True
        return any(has(child) for child in node.get("pretokenizers") or [])

    return has(spec.get("pre_tokenizer")) or (spec.get("decoder") or {}).get("type") == "ByteLevel"


def _pre_tokenizer_name(spec: dict[str, Any]) -> str:
    """llama.cpp's name (`tokenizer.ggml.pre`) for how the tokenizer splits text before BPE.

    A lone ByteLevel with its GPT-2 regex is "gpt-2"; digits split one by one before it is SmolLM's "smollm". Other
    splits get "default", which llama.cpp loads with a warning (and transformers splits as GPT-2 does).
    """
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    parts = pre.get("pretokenizers") or []
    if [p.get("type") for p in parts] == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    return "default"
