"""`tailor chat`: talk to a model or specialist in the terminal, answers streamed token by token."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="SPECIALIST_OR_MODEL",
                        help="a model reference (e.g. smollm2-135m-instruct) or a specialist folder "
                        "(trained, prompting or RAG)")
    parser.add_argument("--system", metavar="TEXT", help="system prompt (replaces a specialist's own)")
    parser.add_argument("--max-new-tokens", type=int, metavar="N",
                        help="longest answer in tokens (default 256, or a RAG specialist's own); the history gets "
                        "the context less this")
    parser.add_argument("--temperature", type=float, default=0.0, metavar="T",
                        help="sampling temperature (default 0: greedy)")
    parser.add_argument("--device", metavar="DEVICE", help="cpu or cuda (default: cuda when a GPU is visible)")
    parser.add_argument("--weights", choices=("fp16", "fp32"), default="fp16",
                        help="on the CPU, store the weights in fp16 and compute in fp32 for faster answers (default "
                             "fp16); fp32 keeps them exactly as trained")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tailorlm.chat import command_list, open_chat, run_chat

    console = Console(highlight=False, soft_wrap=True)
    session = open_chat(args.target, system=args.system, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, device=args.device, weights=args.weights)
    console.print(f"chatting with {session.name} ({session.context}-token context); {command_list()}",
                  style="dim", markup=False)
    try:
        return run_chat(session, console=console)
    finally:
        if session.rag is not None:
            session.rag.close()
