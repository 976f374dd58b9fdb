"""The PyTorch serving engine: one worker thread decodes queued requests of the same specialist as one batch.

Requests wait in a bounded queue. The worker takes the oldest one and up to `max_batch - 1` more of the same
specialist, left-pads their prompts, and decodes step by step over one KV cache. Each row samples with its own
temperature, top_p and seeded generator, and finishes on its own (EOS, a stop string, max_tokens, its deadline, or
its client leaving); finished rows leave the batch. Text goes back to each request piece by piece through its
`on_event` callback. Requests of the same specialist that arrive meanwhile are prefilled and join the running batch
between two steps (continuous batching); those of other specialists wait for the next batch.
"""

from __future__ import annotations

import collections
import concurrent.futures
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tailorlm.errors import ConfigError


@dataclass(frozen=True)
class Sampling:
    """How one request samples: greedy when temperature is 0."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ConfigError("max_tokens must be a positive whole number", key="max_tokens", found=repr(self.max_tokens))
        if not 0.0 <= self.temperature <= 2.0:
            raise ConfigError("temperature is out of range", key="temperature", found=repr(self.temperature),
                              expected="a number from 0 (greedy) to 2")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError("top_p is out of range", key="top_p", found=repr(self.top_p), expected="a number in (0, 1]")


@dataclass(frozen=True)
class Delta:
    """New text of a request."""

    text: str


@dataclass(frozen=True)
class Finished:
    """A request's end: why it ended ('stop', 'length', 'timeout' or 'cancelled') and its token counts."""

    reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    """A request that could not be generated."""

    error: BaseException


Event = Delta | Finished | Failed


@dataclass(frozen=True)
class Answer:
    """What a one-at-a-time generator may return instead of its text: the text with its true token count and why
    it ended ('stop' or 'length'), which re-tokenizing the text cannot always recover."""

    text: str
    completion_tokens: int
    reason: str


@dataclass(eq=False)
class Request:
    """One generation job: for the batched engine `prompt_ids`, for one-at-a-time specialists `prompt`."""

    served: Any
    """The `ServedModel` that answers it."""
    sampling: Sampling
    on_event: Callable[[Event], None]
    prompt_ids: list[int] = field(default_factory=list)
    prompt: Any = None
    """The messages or text for a `run_alone` specialist."""
    deadline: float | None = None
    """time.monotonic() after which the request stops with reason 'timeout'."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set when the client has gone away."""
    ended: bool = field(default=False, init=False)
    """Whether its Finished or Failed event was sent: nothing is sent after it."""

    def emit(self, event: Event) -> None:
        """Send `event` to the request's client, unless the request has already ended."""
        if self.ended:
            return
        if isinstance(event, (Finished, Failed)):
            self.ended = True
        self.on_event(event)


class QueueFull(Exception):
    """The bounded queue has no room: the server answers 429."""


class EngineClosed(Exception):
    """The engine is shutting down and takes no new requests."""


class StopText:
    """Builds a request's text from its growing decoded text, holding back what may be the start of a stop string.

    `update(text)` takes the whole text so far and returns the new piece that is safe to send and whether a stop
    string appeared (the text is cut before it); `flush()` returns what was held back once generation has ended.
    """

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self.stop = tuple(s for s in stop if s)
        self.sent = ""
        self.text = ""

    def update(self, text: str) -> tuple[str, bool]:
        cuts = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if cuts:
            self.text = text[: min(cuts)]
            return self._send(self.text), True
        self.text = text
        hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        if text.endswith("\ufffd"):  # a character whose bytes are split over tokens: wait for the rest
            hold = max(hold, 1)
        return self._send(text[: len(text) - hold]), False

    def flush(self) -> str:
        return self._send(self.text.rstrip("\ufffd"))

    def _send(self, visible: str) -> str:
        if len(visible) > len(self.sent) and visible.startswith(self.sent):
            piece, self.sent = visible[len(self.sent):], visible
            return piece
        return ""


class _Row:
    """A request's state inside a batch."""

    def __init__(self, request: Request) -> None:
        import torch

        self.request = request
        self.ids: list[int] = []
        self.text = StopText(request.sampling.stop)
        self.generator = torch.Generator(device="cpu")
        seed = request.sampling.seed if request.sampling.seed is not None else random.getrandbits(63)
        self.generator.manual_seed(seed)
        self.reason: str | None = None

    def pick(self, logits: Any) -> int:
        """The next token from this row's logits (V,) float32 on the CPU."""
        import torch

        s = self.request.sampling
        if s.temperature == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / s.temperature, dim=-1)
        if s.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of the tokens ranked above each one
            sorted_probs[before >= s.top_p] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def take(self, token: int, tokenizer: Any, eos_ids: frozenset[int]) -> None:
        """Add a token, send any new text, and set `reason` when the row is done."""
        if token in eos_ids:
            self.reason = "stop"
        else:
            self.ids.append(token)
            piece, stopped = self.text.update(tokenizer.decode(self.ids, skip_special_tokens=True))
            self._send(piece)
            if stopped:
                self.reason = "stop"
            elif len(self.ids) >= self.request.sampling.max_tokens:
                self.reason = "length"
        if self.reason is None:
            self.reason = _interrupted(self.request)

    def finish(self) -> None:
        if self.reason != "cancelled":
            self._send(self.text.flush())
        self.request.emit(Finished(self.reason or "stop", len(self.request.prompt_ids), len(self.ids)))

    def _send(self, piece: str) -> None:
        if piece:
            self.request.emit(Delta(piece))


def _interrupted(request: Request) -> str | None:
    if request.cancelled.is_set():
        return "cancelled"
    if request.deadline is not None and time.monotonic() > request.deadline:
        return "timeout"
    return None


def decode_batch(served: Any, requests: Sequence[Request], *,
                 more: Callable[[int], list[Request]] | None = None, max_rows: int = 0,
                 between: Callable[[], None] | None = None) -> None:
    """Generate every request (all of `served`, batched) step by step over one KV cache; results go to on_event.

    `more(room)` is asked between steps for up to `room` further requests of `served`: they are prefilled on their
    own and join the running batch (continuous batching) while it holds fewer than `max_rows` rows. `between()` is
    called after every step (the engine runs its queued calls there).
    """
    import torch

    tokenizer = served.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(served.eos_ids, default=0)
    with torch.inference_mode(), served.selected() as model:
        device = model.device
        cache_arg = _cache_argument(model)
        rows = [_Row(r) for r in requests]
        cache, mask, next_pos, logits = _prefill(model, requests, pad, device)
        active = list(range(len(rows)))  # batch position -> row
        while True:
            tokens = [rows[r].pick(logits[b]) for b, r in enumerate(active)]
            for b, r in enumerate(active):
                rows[r].take(tokens[b], tokenizer, served.eos_ids)
            keep = [b for b, r in enumerate(active) if rows[r].reason is None]
            for b, r in enumerate(active):
                if rows[r].reason is not None:
                    rows[r].finish()
            if not keep:
                return
            if between is not None:
                between()
            if len(keep) < len(active):
                index = torch.tensor(keep, dtype=torch.long, device=device)
                cache.batch_select_indices(index)
                mask, next_pos = mask[index], next_pos[index]
                active = [active[b] for b in keep]
                tokens = [tokens[b] for b in keep]
            if more is not None and len(active) < max_rows and _joinable(cache):
                joining = [r for r in more(max_rows - len(active)) if not _finish_if_interrupted(r)]
                if joining:
                    cache, mask, next_pos = _join(model, served, rows, joining, pad, device, cache, mask, next_pos,
                                                  active, tokens)
            step = torch.tensor(tokens, dtype=torch.long, device=device)[:, None]  # (B, 1)
            mask = torch.cat([mask, torch.ones_like(step)], dim=-1)
            out = model(input_ids=step, attention_mask=mask, position_ids=next_pos[:, None], use_cache=True,
                        **{cache_arg: cache})
            logits = out.logits[:, -1, :].float().cpu()  # (B, V)
            next_pos = next_pos + 1


def _prefill(model: Any, requests: Sequence[Request], pad: int, device: Any) -> tuple[Any, Any, Any, Any]:
    """Run the left-padded prompts: (cache, attention mask (B, T), next positions (B,), last logits (B, V) on CPU)."""
    import torch

    width = max(len(r.prompt_ids) for r in requests)
    ids = torch.full((len(requests), width), pad, dtype=torch.long)
    mask = torch.zeros((len(requests), width), dtype=torch.long)
    for i, r in enumerate(requests):  # left padding: every prompt ends at the last column
        ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids, dtype=torch.long)
        mask[i, width - len(r.prompt_ids):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    return _cache_of(out), mask, positions[:, -1] + 1, out.logits[:, -1, :].float().cpu()


def _join(model: Any, served: Any, rows: list[_Row], joining: list[Request], pad: int, device: Any, cache: Any,
          mask: Any, next_pos: Any, active: list[int], tokens: list[int]) -> tuple[Any, Any, Any]:
    """Prefill `joining` and append them to the running batch; `rows`, `active` and `tokens` grow in place.

    The shorter of the two caches is padded on the left with masked slots, so every row keeps its own positions.
    """
    import torch
    import torch.nn.functional as F

    new_rows = [_Row(r) for r in joining]
    first = len(rows)
    rows.extend(new_rows)
    new_cache, new_mask, new_pos, logits = _prefill(model, joining, pad, device)
    kept, new_tokens = [], []
    for j, row in enumerate(new_rows):
        token = row.pick(logits[j])
        row.take(token, served.tokenizer, served.eos_ids)
        if row.reason is not None:
            row.finish()
        else:
            kept.append(j)
            new_tokens.append(token)
    if not kept:
        return cache, mask, next_pos
    if len(kept) < len(new_rows):
        index = torch.tensor(kept, dtype=torch.long, device=device)
        new_cache.batch_select_indices(index)
        new_mask, new_pos = new_mask[index], new_pos[index]
    width = max(mask.shape[1], new_mask.shape[1])
    for old_layer, new_layer in zip(cache.layers, new_cache.layers):
        for name in ("keys", "values"):
            a, b = getattr(old_layer, name), getattr(new_layer, name)  # (B, H, T, D)
            a = F.pad(a, (0, 0, width - a.shape[-2], 0))
            b = F.pad(b, (0, 0, width - b.shape[-2], 0))
            setattr(old_layer, name, torch.cat([a, b], dim=0))
    mask = torch.cat([F.pad(mask, (width - mask.shape[1], 0)), F.pad(new_mask, (width - new_mask.shape[1], 0))])
    active.extend(first + j for j in kept)
    tokens.extend(new_tokens)
    return cache, mask, torch.cat([next_pos, new_pos])


def _joinable(cache: Any) -> bool:
    """Whether new rows can be appended to this cache: a plain dynamic cache of (B, H, T, D) keys and values."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer).__name__ == "DynamicLayer" and getattr(layer, "keys", None) is not None
                                and layer.keys.dim() == 4 for layer in layers)


def _finish_if_interrupted(request: Request) -> bool:
    """Finish a request that ran out of time (or lost its client) while it waited; True when it did."""
    why = _interrupted(request)
    if why:
        request.emit(Finished(why, len(request.prompt_ids), 0))
    return bool(why)


def _cache_argument(model: Any) -> str:
    """The name under which this transformers version's forward takes the KV cache ('cache' from 5.x on)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class _Stopped(Exception):
    """Raised inside a one-at-a-time generation to end it early."""


def run_alone(request: Request, between: Callable[[], None] | None = None) -> None:
    """Generate one request of a specialist that cannot be batched (RAG, prompt-learning adapters, llama.cpp);
    `between()` is called with each piece of text (the engine runs its queued calls there)."""
    served, sampling = request.served, request.sampling
    text = StopText(sampling.stop)
    so_far: list[str] = []
    reason: list[str] = []

    def on_text(piece: str) -> None:
        if between is not None:
            between()
        so_far.append(piece)
        out, stopped = text.update("".join(so_far))
        if out:
            request.emit(Delta(out))
        why = "stop" if stopped else _interrupted(request)
        if why:
            reason.append(why)
            raise _Stopped

    answer: Answer | None = None
    try:
        full = served.run_alone(request.prompt, sampling, on_text)
    except _Stopped:
        full = None
    if isinstance(full, Answer):
        answer, full = full, full.text
    if full is not None:  # what the specialist adds after the streamed answer (a RAG answer's sources)
        out, stopped = text.update(full)
        if out:
            request.emit(Delta(out))
        if stopped:
            reason.append("stop")
    if not reason or reason[0] == "stop":
        rest = text.flush()
        if rest:
            request.emit(Delta(rest))
    if answer is not None and not reason:
        completion, ended = answer.completion_tokens, answer.reason
    else:
        completion = len(served.tokenizer(text.text, add_special_tokens=False)["input_ids"]) if served.tokenizer else 0
        ended = reason[0] if reason else _length_or_stop(completion, sampling)
    request.emit(Finished(ended, len(request.prompt_ids), completion))


def _length_or_stop(tokens: int, sampling: Sampling) -> str:
    return "length" if tokens >= sampling.max_tokens else "stop"


class Engine:
    """A bounded queue of generation requests and the worker thread that batches and runs them."""

    def __init__(self, *, max_queue: int = 64, max_batch: int = 8) -> None:
        if max_queue < 1 or max_batch < 1:
            raise ConfigError("the queue and the batch need room for at least one request",
                              key="max_queue" if max_queue < 1 else "max_batch",
                              found=str(min(max_queue, max_batch)), expected="1 or more")
        self.max_queue, self.max_batch = max_queue, max_batch
        self._pending: collections.deque[Request] = collections.deque()
        self._calls: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future]] = collections.deque()
        self._lock = threading.Condition()
        self._closing = False
        self._running = 0
        self._worker = threading.Thread(target=self._work, name="tailorlm-engine", daemon=True)
        self._worker.start()

    @property
    def queued(self) -> int:
        """Requests waiting for a batch."""
        return len(self._pending)

    @property
    def running(self) -> int:
        """Requests being generated now."""
        return self._running

    def submit(self, request: Request) -> None:
        """Queue a request; QueueFull when `max_queue` requests already wait, EngineClosed while shutting down."""
        with self._lock:
            if self._closing:
                raise EngineClosed
            if len(self._pending) >= self.max_queue:
                raise QueueFull
            self._pending.append(request)
            self._lock.notify()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the engine's worker thread and return its result (or raise its error).

        All the compute of the served models belongs on that one thread: loading them, embeddings, generation. PyTorch
        runs its parallel CPU kernels on OpenMP thread teams, one team per calling thread, and once two threads own
        teams on a small CPU, OpenMP stops spin-waiting between kernels (it counts more threads than cores), which
        makes the many small kernels of a decoding step about twice as slow. A queued call runs before the next batch
        or between two decoding steps of the running one.
        """
        if threading.current_thread() is self._worker:
            return fn()
        done: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._closing:
                raise EngineClosed
            self._calls.append((fn, done))
            self._lock.notify()
        return done.result()

    def _run_calls(self) -> None:
        while self._calls:
            with self._lock:
                if not self._calls:
                    return
                fn, done = self._calls.popleft()
            try:
                done.set_result(fn())
            except BaseException as err:  # noqa: BLE001 - the caller gets the error
                done.set_exception(err)

    def close(self, *, timeout: float | None = None) -> None:
        """Take no new requests, finish those queued and running, and stop the worker."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._worker.join(timeout)

    def _next_batch(self) -> list[Request] | None:
        with self._lock:
            while not self._pending and not self._calls and not self._closing:
                self._lock.wait()
            if self._calls:
                return []
            if not self._pending:
                return None
            first = self._pending[0]
            limit = 1 if first.served.run_alone is not None else self.max_batch
            batch = [r for r in self._pending if r.served is first.served][:limit]
            for r in batch:
                self._pending.remove(r)
            self._running = len(batch)
            return batch

    def _more(self, served: Any, room: int, batch: list[Request]) -> list[Request]:
        """Up to `room` queued requests of `served`, taken from the queue to join the running batch.

        None while an older request of another specialist waits: the running batch then drains, and that one's
        specialist gets the next batch, so a busy specialist cannot starve the others.
        """
        with self._lock:
            if self._pending and self._pending[0].served is not served:
                return []
            joining = [r for r in self._pending if r.served is served][:room]
            for r in joining:
                self._pending.remove(r)
            batch.extend(joining)  # so that a failure reaches them too
            self._running += len(joining)
            return joining

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run_calls()
            try:
                # Requests out of time (or whose client left) while queued never start.
                batch = [r for r in batch if not _finish_if_interrupted(r)]
                if not batch:
                    continue
                if batch[0].served.run_alone is not None:
                    run_alone(batch[0], between=self._run_calls)
                else:
                    served = batch[0].served
                    decode_batch(served, batch, more=lambda room: self._more(served, room, batch),
                                 max_rows=self.max_batch, between=self._run_calls)
            except Exception as err:  # noqa: BLE001 - one failed batch must not stop the server
                for r in batch:
                    r.emit(Failed(err))  # those that finished before the failure keep their answer
            finally:
                self._running = 0
