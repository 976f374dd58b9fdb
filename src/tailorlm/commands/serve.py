"""`tailor serve`: an OpenAI-compatible HTTP server for specialists and models."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs", nargs="+", metavar="SPECIALIST",
                        help="a specialist folder, a model reference or NAME=PATH (the name clients ask for)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on every route but /health")
    parser.add_argument("--max-queue", type=int, default=64, metavar="N",
                        help="requests that may wait; more are answered 429 (default 64)")
    parser.add_argument("--max-batch", type=int, default=8, metavar="N",
                        help="requests of one specialist generated together (default 8)")
    parser.add_argument("--timeout", type=float, metavar="S", help="seconds a request may take, queued or running "
                        "(default: no limit)")
    parser.add_argument("--weights", choices=("fp16", "fp32"), default="fp16",
                        help="on the CPU, store the weights in fp16 and compute in fp32: 2-3x faster decoding, next "
                             "tokens as fp32's but for near-ties (default fp16); fp32 serves them exactly as trained")


def run(args: argparse.Namespace) -> int:
    from tailorlm.serving import serve

    serve(args.specs, host=args.host, port=args.port, api_key=args.api_key, max_queue=args.max_queue,
          max_batch=args.max_batch, timeout=args.timeout, weights=args.weights,
          on_note=lambda text: print(text, file=sys.stderr, flush=True))
    return 0
