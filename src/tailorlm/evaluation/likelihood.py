"""The evaluator's model passes: log-probabilities of options or continuations after a prompt, and greedy generation.

For an encoder-decoder (T5, Marian) the prompt is the encoder's input and the options, continuations and generated
text are what the decoder writes first.
"""

from __future__ import annotations

from typing import Any, Sequence

from tailorlm.errors import ModelError
from tailorlm.tasks.task import TaskExample


def option_logprobs(model: Any, prompts: list[list[int]], options: list[list[int]], *, pad_id: int) -> list[list[float]]:
    """For each prompt, the summed log-probability of each option's tokens after it.

    The prompts run once (left-padded, their key-value cache kept); the options then run on that cache, all
    options of all prompts in one batch. PEFT prompt-learning models, which manage their own cache, and
    encoder-decoders score each (prompt, option) pair as one sequence instead.
    """
    import torch

    if _prompt_learning(model) or _encoder_decoder(model):
        pairs = [(p, o) for p in prompts for o in options]
        flat = continuation_logprobs(model, [p for p, _ in pairs], [o for _, o in pairs], pad_id=pad_id)
        return [flat[i * len(options):(i + 1) * len(options)] for i in range(len(prompts))]
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):], mask[row, width - len(prompt):] = torch.tensor(prompt), 1
    device, n = model.device, len(options)
    with torch.inference_mode():
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                    position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(device), use_cache=True, logits_to_keep=1)
        first = out.logits[:, -1, :].float().log_softmax(-1)  # (B, V): every option's first token
        scores = first[:, [option[0] for option in options]]  # (B, n)
        rest = max(len(option) for option in options) - 1
        if rest > 0:  # the options' later tokens, read after the cached prompt: (B * n, rest) continuation rows
            cont = torch.full((len(prompts) * n, rest), pad_id, dtype=torch.long)
            cont_mask = torch.zeros_like(cont)
            for j, option in enumerate(options):
                cont[j::n, :len(option) - 1], cont_mask[j::n, :len(option) - 1] = torch.tensor(option[:-1]), 1
            cache, key = getattr(out, "cache", None), "cache"  # `past_key_values` before transformers 5.2x
            if cache is None:
                cache, key = out.past_key_values, "past_key_values"
            cache.batch_repeat_interleave(n)
            full_mask = torch.cat([mask.repeat_interleave(n, dim=0), cont_mask], dim=1)
            positions = mask.sum(-1).repeat_interleave(n)[:, None] + torch.arange(rest)[None, :]
            logits = model(input_ids=cont.to(device), attention_mask=full_mask.to(device),
                           position_ids=positions.to(device), use_cache=True, **{key: cache}).logits
            later = logits.float().log_softmax(-1)  # (B * n, rest, V)
            for j, option in enumerate(options):
                if len(option) > 1:
                    target = torch.tensor(option[1:], device=later.device)
                    picked = later[j::n, :len(option) - 1].gather(-1, target[None, :, None].expand(len(prompts), -1, 1))
                    scores[:, j] += picked.squeeze(-1).sum(-1)
    return scores.tolist()


def _logsumexp(values: list[float]) -> float:
    """log(sum(exp(v))) without overflow."""
    import math

    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values)) if math.isfinite(top) else top


def continuation_logprobs(model: Any, prompts: list[list[int]], continuations: list[list[int]], *,
                          pad_id: int) -> list[float]:
    """For each (prompt, continuation) pair of token ids, the summed log-probability of the continuation after the
    prompt: one forward pass over the left-padded batch, fp32 log-softmax over the last positions only."""
    import torch

    if _encoder_decoder(model):
        return _decoder_logprobs(model, prompts, continuations, pad_id=pad_id)
    lengths = [len(p) + len(c) for p, c in zip(prompts, continuations)]
    width, keep = max(lengths), max(len(c) for c in continuations) + 1
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, (prompt, continuation) in enumerate(zip(prompts, continuations)):
        sequence = prompt + continuation
        ids[row, width - len(sequence):] = torch.tensor(sequence, dtype=torch.long)
        mask[row, width - len(sequence):] = 1
    inputs: dict[str, Any] = {"input_ids": ids.to(model.device), "attention_mask": mask.to(model.device)}
    if not _prompt_learning(model):  # positions count from each row's first real token, as without padding
        inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(model.device)
    with torch.inference_mode():
        try:
            logits = model(**inputs, logits_to_keep=keep).logits
        except TypeError:  # a model whose forward has no logits_to_keep
            logits = model(**inputs).logits
        logprobs = logits[:, -keep:, :].float().log_softmax(-1)  # (N, keep, V)
    sums = []
    for row, continuation in enumerate(continuations):
        m = len(continuation)
        target = torch.tensor(continuation, dtype=torch.long, device=logprobs.device)
        sums.append(float(logprobs[row, keep - 1 - m:keep - 1].gather(-1, target[:, None]).sum()))
    return sums


def _decoder_logprobs(model: Any, sources: list[list[int]], continuations: list[list[int]], *,
                      pad_id: int) -> list[float]:
    """An encoder-decoder's summed log-probability of each continuation as the first tokens it writes for its source:
    one forward pass, sources right-padded (masked), decoder inputs the continuations shifted behind the start token."""
    import torch

    start = getattr(model.config, "decoder_start_token_id", None)
    start = model.generation_config.decoder_start_token_id if start is None else start
    ids = torch.full((len(sources), max(map(len, sources))), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    decoder = torch.full((len(sources), max(map(len, continuations))), pad_id, dtype=torch.long)
    for row, (source, continuation) in enumerate(zip(sources, continuations)):
        ids[row, :len(source)], mask[row, :len(source)] = torch.tensor(source, dtype=torch.long), 1
        decoder[row, :len(continuation)] = torch.tensor([start, *continuation[:-1]], dtype=torch.long)
    with torch.inference_mode():  # a causal decoder: the pads after a row's continuation do not change its scores
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                       decoder_input_ids=decoder.to(model.device)).logits
        logprobs = logits.float().log_softmax(-1)  # (N, T_decoder, V)
    sums = []
    for row, continuation in enumerate(continuations):
        target = torch.tensor(continuation, dtype=torch.long, device=logprobs.device)
        sums.append(float(logprobs[row, :len(continuation)].gather(-1, target[:, None]).sum()))
    return sums


def greedy(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int,
           examples: Sequence[TaskExample] = ()) -> list[tuple[str, int]]:
    """Batched greedy generation: (new text, new tokens up to the first end token) per prompt.

    A decoder's prompts are left-padded and already hold their special tokens (the chat template writes them); an
    encoder-decoder's are its encoder inputs, tokenized with their special tokens (as its training sources were) and
    right-padded, and its output is only what the decoder wrote after its start token.
    """
    import torch

    pad = _pad_id(tokenizer)
    encoder_decoder = _encoder_decoder(model)
    saved, tokenizer.padding_side = tokenizer.padding_side, "right" if encoder_decoder else "left"
    try:
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=encoder_decoder)
    finally:
        tokenizer.padding_side = saved
    lengths = inputs["attention_mask"].sum(-1).tolist()
    for length, example in zip(lengths, examples):
        _check_length(model, max(int(length), max_new_tokens) if encoder_decoder else int(length) + max_new_tokens,
                      example)
    stops = _stop_ids(model, tokenizer)
    with torch.inference_mode():
        output = model.generate(input_ids=inputs["input_ids"].to(model.device),
                                attention_mask=inputs["attention_mask"].to(model.device), max_new_tokens=max_new_tokens,
                                do_sample=False, temperature=None, top_p=None, top_k=None,
                                eos_token_id=sorted(stops) or None, pad_token_id=pad)
    results = []
    for row in output[:, 1 if encoder_decoder else inputs["input_ids"].shape[1]:].tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
        results.append((tokenizer.decode(row[:end], skip_special_tokens=True), end))
    return results


# -- small pieces -----------------------------------------------------------------------------------------------------

def _pad_id(tokenizer: Any) -> int:
    """The pad id, set to the end-of-text token's when the tokenizer has none."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return int(tokenizer.pad_token_id)


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end an answer: the model's and tokenizer's end-of-text, and the chat template's end of turn."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stops = set(configured if isinstance(configured, (list, tuple)) else [configured]) | {tokenizer.eos_token_id}
    if getattr(tokenizer, "chat_template", None):
        try:
            from tailorlm.data.templates import end_of_turn_token

            stops.add(tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer)))
        except ModelError:
            pass
    return {int(t) for t in stops if t is not None}


def _encoder_decoder(model: Any) -> bool:
    """Whether the model is an encoder-decoder (T5, BART, Marian), a PEFT model around one included."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def _prompt_learning(model: Any) -> bool:
    """Whether the model is a PEFT prompt-learning model, whose forward ignores position ids."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def _check_length(model: Any, tokens: int, example: TaskExample | None) -> None:
    """ModelError when an example's prompt and answer do not fit the model's context."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is not None and tokens > limit:
        raise ModelError("an example is too long for the model's context",
                         where=example.meta.get("origin") if example is not None else None,
                         found=f"{tokens} tokens (prompt and answer)", expected=f"at most {limit}",
                         hint="Lower --max-new-tokens, use fewer shots, or shorten the input")
