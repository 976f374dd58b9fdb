"""The `tailor` command: a table from verb to one library function. No logic of its own beyond printing."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable

from tailorlm import __version__
from tailorlm.errors import TailorError

# verb -> (module that defines `add_arguments(parser)` and `run(args) -> int`, one-line help).
# Modules are imported only when their verb runs, so `tailor --help` stays fast.
VERBS: dict[str, tuple[str, str]] = {
    "quickstart": ("tailorlm.commands.quickstart", "Tailor the built-in model to finance sentiment four ways and compare them."),
    "models": ("tailorlm.commands.models", "List, pull and describe model references."),
    "data": ("tailorlm.commands.data", "Check data before training: lengths, masks, overlap, PII."),
    "estimate": ("tailorlm.commands.estimate", "Estimate parameters, memory and time of a training run."),
    "train": ("tailorlm.commands.train", "Pre-train or fine-tune with one loop, any objective and method."),
    "pretrain": ("tailorlm.commands.pretrain",
                 "Pre-train a small transformer from scratch, or continue pre-training a model."),
    "rag": ("tailorlm.commands.rag", "Index documents, search them, answer with citations, evaluate retrieval."),
    "tokenizer": ("tailorlm.commands.tokenizer", "Train a domain tokenizer or extend a model's tokenizer with domain words."),
    "inspect": ("tailorlm.commands.inspect", "See tokens, attention maps and embedding neighbours of a model."),
    "eval": ("tailorlm.commands.eval", "Score a specialist or model on a task: metric, confidence interval, predictions."),
    "compare": ("tailorlm.commands.compare", "Measure every strategy and base model on one task: leaderboard and report."),
    "export": ("tailorlm.commands.export", "Export a specialist as a merged model folder or a GGUF file, checked for parity."),
    "serve": ("tailorlm.commands.serve", "Serve specialists and models over an OpenAI-compatible HTTP API."),
    "chat": ("tailorlm.commands.chat", "Chat with a model or specialist in the terminal, answers streamed as they come."),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--debug", action="store_true")
    known, _ = parser.parse_known_args(argv)
    debug = known.debug or os.environ.get("TAILORLM_DEBUG") == "1"
    try:
        full = _parser_for(argv)
        args = full.parse_args(argv)
        if not getattr(args, "verb", None):
            full.print_help()
            return 0
        run: Callable[[argparse.Namespace], int] = importlib.import_module(args._module).run
        return int(run(args) or 0)
    except TailorError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - last line of defence for users
        if debug:
            raise
        print(
            f"internal error: {type(err).__name__}: {err}\n"
            "This is a bug in tailorlm or an unexpected environment; run again with --debug for the traceback.",
            file=sys.stderr,
        )
        return 1


class _OneLineHelp(argparse.HelpFormatter):
    """Room for the longest verb name, so each verb's help stays on its own line."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=20, width=100)
        self._action_max_length = 18


def _parser_for(argv: list[str]) -> argparse.ArgumentParser:
    """Build the parser, importing only the module of the verb being run."""
    parser = argparse.ArgumentParser(
        prog="tailor",
        description="Tailor a language model to an application, and measure which way of tailoring wins.",
        formatter_class=_OneLineHelp,
    )
    parser.add_argument("--version", action="version", version=f"tailorlm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full Python tracebacks instead of one-paragraph errors")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", title="verbs")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for verb, (module_name, help_line) in VERBS.items():
        verb_parser = sub.add_parser(verb, help=help_line, description=help_line)
        verb_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        verb_parser.set_defaults(_module=module_name)
        if verb == chosen:
            importlib.import_module(module_name).add_arguments(verb_parser)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
