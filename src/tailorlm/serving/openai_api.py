"""The OpenAI-shaped HTTP API over the engine: models, chat completions, completions, embeddings and health.

Errors use OpenAI's body, `{"error": {"message", "type", "param", "code"}}`: 400 for invalid parameters or a body
that is not JSON, 401 for a missing or wrong API key, 404 for an unknown model, 429 when the queue is full, 503
while shutting down or for a model whose engine is not installed, 504 when a request runs out of time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import numpy as np
from fastapi import FastAPI, Request as HttpRequest
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tailorlm.errors import TailorError
from tailorlm.serving.engine import Delta, Engine, EngineClosed, Failed, Finished, QueueFull, Request, Sampling
from tailorlm.serving.specialists import GgufServed

DEFAULT_MAX_TOKENS = 512
MAX_STOP = 4
ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    """An error answered in OpenAI's JSON shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content=error_body(self.message, self.type, self.param, self.code))


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def create_app(served: Mapping[str, Any], engine: Engine, *, api_key: str | None = None,
               timeout: float | None = None) -> FastAPI:
    """The FastAPI app answering for `served` (name -> ServedModel); closing the app drains the engine."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # Graceful shutdown: uvicorn has finished the open requests; let the engine finish anything still queued.
        await asyncio.to_thread(engine.close)

    app = FastAPI(title="tailorlm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.served, app.state.engine = served, engine

    if api_key is not None:
        app.add_middleware(_ApiKey, key=api_key)

    @app.exception_handler(ApiError)
    async def api_error(request: HttpRequest, err: ApiError) -> JSONResponse:
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: HttpRequest, err: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if err.status_code == 404 else None
        return ApiError(err.status_code, str(err.detail), code=code).response()

    @app.exception_handler(Exception)
    async def internal_error(request: HttpRequest, err: Exception) -> JSONResponse:
        return ApiError(500, f"internal error: {type(err).__name__}: {err}", type="server_error").response()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": len(served), "queued": engine.queued, "running": engine.running}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(s) for s in served.values()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        return _model_card(_find(served, name))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest) -> Any:
        body = await _json_body(request)
        target = _generator(served, body)
        messages = _messages(body)
        if target.run_alone is None or isinstance(target, GgufServed):  # a GGUF without a template: a 400 here
            prompt_ids = await _encode(target.encode_chat, messages)
        else:
            prompt_ids = await _encode(target.encode_chat, messages) if _has_template(target) else []
        sampling = _sampling(body, target, len(prompt_ids))
        call = _start(engine, target, sampling, prompt_ids, target.chat_messages(messages), timeout)
        if body.get("stream"):
            return _sse(call.chat_chunks(target.name, _include_usage(body)))
        return await call.chat_response(target.name)

    @app.post("/v1/completions")
    async def completions(request: HttpRequest) -> Any:
        body = await _json_body(request)
        target = _generator(served, body)
        prompt = _prompt(body)
        for unsupported, allowed in (("echo", (None, False)), ("suffix", (None, "")), ("logprobs", (None,)),
                                     ("best_of", (None, 1))):
            if body.get(unsupported) not in allowed:
                raise ApiError(400, f"{unsupported!r} is not supported by this server", param=unsupported)
        prompt_ids = await _encode(target.encode_text, prompt)
        sampling = _sampling(body, target, len(prompt_ids))
        call = _start(engine, target, sampling, prompt_ids, prompt, timeout)
        if body.get("stream"):
            return _sse(call.completion_chunks(target.name, _include_usage(body)))
        return await call.completion_response(target.name)

    @app.post("/v1/embeddings")
    async def embeddings(request: HttpRequest) -> Any:
        body = await _json_body(request)
        target = _find(served, body.get("model"))
        if target.kind != "embed":
            raise ApiError(400, f"model {target.name!r} writes text; embeddings come from an encoder such as minilm-l6",
                           param="model", code="model_not_embedding")
        texts = _embedding_input(body.get("input"))
        form = body.get("encoding_format") or "float"
        if form not in ("float", "base64"):
            raise ApiError(400, "encoding_format must be 'float' or 'base64'", param="encoding_format")
        if body.get("dimensions") is not None:
            raise ApiError(400, "'dimensions' is not supported: the model's vectors have a fixed size", param="dimensions")

        def embed() -> tuple[np.ndarray, int]:
            vectors = target.embedder.embed(texts)
            tokens = sum(len(ids) for ids in target.embedder.tokenizer(texts)["input_ids"])
            return vectors, tokens

        vectors, tokens = await asyncio.to_thread(engine.call, embed)  # on the thread of all model compute
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if form == "base64" else v.tolist()}
                for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": target.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    return app


class _ApiKey:
    """ASGI middleware: every route but /health needs `Authorization: Bearer KEY`."""

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("latin-1"), self.key):
                message = "missing API key: send the header 'Authorization: Bearer KEY'" if not given else "wrong API key"
                await ApiError(401, message, code="invalid_api_key").response()(scope, receive, send)
                return
        await self.app(scope, receive, send)



def _start(engine: Any, target: Any, sampling: Any, prompt_ids: list[int], prompt: Any,
           timeout: float | None) -> "_Call":
    """Queue one generation request with the engine; its events reach the returned call."""
    call = _Call(engine, Request(served=target, sampling=sampling, on_event=lambda e: None, prompt_ids=prompt_ids,
                                 prompt=prompt, deadline=_deadline(timeout)))
    call.start()
    return call


class _Call:
    """One generation request between the HTTP handler (an asyncio queue) and the engine thread."""

    def __init__(self, engine: Engine, request: Request) -> None:
        self.engine, self.request = engine, request
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.id = uuid.uuid4().hex[:24]
        self.created = int(time.time())
        request.on_event = self._deliver

    def _deliver(self, event: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def start(self) -> None:
        try:
            self.engine.submit(self.request)
        except QueueFull:
            raise ApiError(429, f"the server is busy: {self.engine.max_queue} requests are already waiting; "
                           "retry shortly", type="rate_limit_error", code="queue_full") from None
        except EngineClosed:
            raise ApiError(503, "the server is shutting down", type="server_error", code="shutting_down") from None

    async def events_until_done(self) -> AsyncIterator[Any]:
        try:
            while True:
                event = await self.events.get()
                yield event
                if isinstance(event, (Finished, Failed)):
                    return
        finally:
            self.request.cancelled.set()  # a client that left stops its row at the next step

    async def collect(self) -> tuple[str, Finished]:
        parts: list[str] = []
        async for event in self.events_until_done():
            if isinstance(event, Delta):
                parts.append(event.text)
            elif isinstance(event, Failed):
                raise ApiError(500, f"generation failed: {type(event.error).__name__}: {event.error}",
                               type="server_error")
            else:
                if event.reason == "timeout":
                    raise ApiError(504, "the request ran out of time (the server's --timeout) before it finished",
                                   type="timeout_error", code="timeout")
                return "".join(parts), event
        raise ApiError(500, "generation ended without a result", type="server_error")

    async def chat_response(self, model: str) -> dict[str, Any]:
        text, done = await self.collect()
        return {"id": f"chatcmpl-{self.id}", "object": "chat.completion", "created": self.created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": done.reason, "logprobs": None}],
                "usage": _usage(done)}

    async def completion_response(self, model: str) -> dict[str, Any]:
        text, done = await self.collect()
        return {"id": f"cmpl-{self.id}", "object": "text_completion", "created": self.created, "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": done.reason, "logprobs": None}],
                "usage": _usage(done)}

    async def chat_chunks(self, model: str, include_usage: bool) -> AsyncIterator[dict[str, Any]]:
        head = {"id": f"chatcmpl-{self.id}", "object": "chat.completion.chunk", "created": self.created, "model": model}
        yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        async for event in self.events_until_done():
            if isinstance(event, Delta):
                yield {**head, "choices": [{"index": 0, "delta": {"content": event.text}, "finish_reason": None}]}
            elif isinstance(event, Failed):
                yield error_body(f"generation failed: {event.error}", "server_error")
            else:
                yield {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": event.reason}]}
                if include_usage:
                    yield {**head, "choices": [], "usage": _usage(event)}

    async def completion_chunks(self, model: str, include_usage: bool) -> AsyncIterator[dict[str, Any]]:
        head = {"id": f"cmpl-{self.id}", "object": "text_completion", "created": self.created, "model": model}
        async for event in self.events_until_done():
            if isinstance(event, Delta):
                yield {**head, "choices": [{"index": 0, "text": event.text, "finish_reason": None, "logprobs": None}]}
            elif isinstance(event, Failed):
                yield error_body(f"generation failed: {event.error}", "server_error")
            else:
                yield {**head, "choices": [{"index": 0, "text": "", "finish_reason": event.reason, "logprobs": None}]}
                if include_usage:
                    yield {**head, "choices": [], "usage": _usage(event)}


def _sse(chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """Server-sent events in OpenAI's shape: one `data: {json}` per chunk, then `data: [DONE]`."""

    async def lines() -> AsyncIterator[str]:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _usage(done: Finished) -> dict[str, int]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def _model_card(served: Any) -> dict[str, Any]:
    card = {"id": served.name, "object": "model", "created": served.created, "owned_by": "tailorlm"}
    if served.kind == "unavailable":
        card["unavailable"] = served.reason
    return card


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


async def _json_body(request: HttpRequest) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON: {err}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(body).__name__}", code="invalid_json")
    return body


def _find(served: Mapping[str, Any], name: Any) -> Any:
    if not isinstance(name, str) or not name:
        raise ApiError(400, "'model' is required: one of " + ", ".join(served), param="model")
    if name not in served:
        raise ApiError(404, f"the model {name!r} does not exist on this server; served: " + ", ".join(served),
                       param="model", code="model_not_found")
    return served[name]


def _generator(served: Mapping[str, Any], body: dict[str, Any]) -> Any:
    target = _find(served, body.get("model"))
    if target.kind == "unavailable":
        raise ApiError(503, f"model {target.name!r} cannot answer: {target.reason}", type="server_error",
                       param="model", code="engine_unavailable")
    if target.kind != "generate":
        raise ApiError(400, f"model {target.name!r} is an embedding model; use /v1/embeddings", param="model",
                       code="model_not_generative")
    n = body.get("n", 1)
    if n != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    return target


def _has_template(target: Any) -> bool:
    return bool(getattr(target.tokenizer, "chat_template", None))


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content}", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}] needs a role of " + ", ".join(ROLES) + " and a content",
                           param=f"messages[{i}]")
        content = m.get("content")
        if isinstance(content, list):  # content parts: only text is understood
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported", param=f"messages[{i}].content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be text", param=f"messages[{i}].content")
        out.append({"role": m["role"], "content": content})
    if not any(m["role"] == "user" for m in out):
        raise ApiError(400, "'messages' needs at least one user message", param="messages")
    return out


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be one text (lists of prompts and token arrays are not supported)",
                       param="prompt")
    return prompt


async def _encode(encode: Any, value: Any) -> list[int]:
    try:
        return await asyncio.to_thread(encode, value)
    except TailorError as err:
        raise ApiError(400, str(err), param="messages" if isinstance(value, list) else "prompt") from None


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float, *, open_low: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low < value if open_low else low <= value) \
            or value > high:
        bound = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
        raise ApiError(400, f"{key} must be a number in {bound}, not {value!r}", param=key)
    return float(value)


def _sampling(body: dict[str, Any], target: Any, prompt_tokens: int) -> Sampling:
    """The request's sampling settings, checked; max_tokens against the model's context."""
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, open_low=True)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, f"stop must be a text or a list of up to {MAX_STOP} non-empty texts", param="stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, f"seed must be a whole number, not {seed!r}", param="seed")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(key)
    context = target.context
    room = None if context is None else context - prompt_tokens
    if room is not None and room < 1:
        raise ApiError(400, f"the prompt has {prompt_tokens} tokens, which fills the model's context of {context}",
                       param="messages", code="context_length_exceeded")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS if room is None else min(DEFAULT_MAX_TOKENS, room)
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ApiError(400, f"{key} must be a positive whole number, not {max_tokens!r}", param=key)
    elif room is not None and max_tokens > room:
        raise ApiError(400, f"{key} is {max_tokens}, but the model's context is {context} tokens and the prompt takes "
                       f"{prompt_tokens}: at most {room} are left", param=key, code="context_length_exceeded")
    return Sampling(max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=tuple(stop), seed=seed)


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _embedding_input(value: Any) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "'input' must be a text or a non-empty list of texts (token arrays are not supported)",
                       param="input")
    return texts
