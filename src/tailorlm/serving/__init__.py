"""`tailor serve`: an OpenAI-compatible HTTP server for specialists and models (FastAPI + uvicorn)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

from tailorlm.errors import ConfigError


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a ConfigError saying the port is taken (before any model loads)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError("cannot listen on this address", key="port", found=f"{host}:{port}: {err.strerror or err}",
                          expected="a free port", hint="Another program uses it; choose another with --port") from None
    sock.listen(2048)
    return sock


def build_server(specs: Sequence[str], *, sock: socket.socket, api_key: str | None = None, max_queue: int = 64,
                 max_batch: int = 8, timeout: float | None = None, device: str | None = None, dtype: Any = None,
                 weights: str = "fp16", log_level: str = "info", on_note: Callable[[str], None] | None = None) -> Any:
    """Load `specs` and return a uvicorn Server for them on `sock` (call `.run(sockets=[sock])` to serve)."""
    import uvicorn

    from tailorlm.serving.engine import Engine
    from tailorlm.serving.openai_api import create_app
    from tailorlm.serving.specialists import load_served

    if not specs:
        raise ConfigError("nothing to serve", key="SPECIALIST", expected="one or more specialist folders or model references")
    if timeout is not None and timeout <= 0:
        raise ConfigError("the time limit must be positive", key="timeout", found=repr(timeout), expected="seconds > 0")
    engine = Engine(max_queue=max_queue, max_batch=max_batch)
    try:
        # Loaded on the engine's thread, where all their compute runs (see Engine.call).
        served = engine.call(lambda: load_served(specs, device=device, dtype=dtype, weights=weights, on_note=on_note))
    except BaseException:
        engine.close(timeout=0)  # Ctrl-C while loading: do not wait for the load (the worker is a daemon thread)
        raise
    app = create_app(served, engine, api_key=api_key, timeout=timeout)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=None)
    return uvicorn.Server(config)


def serve(specs: Sequence[str], *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_queue: int = 64, max_batch: int = 8, timeout: float | None = None, weights: str = "fp16",
          on_note: Callable[[str], None] | None = None) -> None:
    """Serve `specs` until interrupted; Ctrl-C finishes the requests in flight before stopping."""
    sock = bind(host, port)
    try:
        server = build_server(specs, sock=sock, api_key=api_key, max_queue=max_queue, max_batch=max_batch,
                              timeout=timeout, weights=weights, on_note=on_note)
        if on_note:
            on_note(f"serving {', '.join(server.config.app.state.served)} at http://{host}:{port}/v1")
            if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
                on_note(f"warning: {host} is reachable from other machines and no --api-key is set")
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown; the server did stop cleanly
            pass
    finally:
        sock.close()
