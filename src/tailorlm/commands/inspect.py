"""`tailor inspect tokens | attention | embeddings`: token pieces, attention heat maps, embedding neighbours."""

from __future__ import annotations

import argparse
import json

MODEL_HELP = "model reference: built-in pack, folder, .gguf file or hub id"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="inspect_command", metavar="COMMAND", required=True)
    tokens = sub.add_parser("tokens", help="token ids, pieces and the text each covers; totals and tokens per word")
    tokens.add_argument("text", help="the text to tokenize (quote it)")
    tokens.add_argument("--model", required=True, help=MODEL_HELP)
    tokens.add_argument("--json", action="store_true", help="print JSON instead of a table")

    attention = sub.add_parser("attention", help="a PNG heat map of one layer's attention (one head or all)")
    attention.add_argument("text", help="the text the model reads (quote it)")
    attention.add_argument("--model", required=True, help=MODEL_HELP)
    attention.add_argument("--layer", type=int, required=True, help="layer number from 0; -1 for the last layer")
    attention.add_argument("--head", type=int, default=None, help="head number from 0 (default 0)")
    attention.add_argument("--all-heads", action="store_true", help="draw every head of the layer, on one scale")
    attention.add_argument("--output", default=None, help="PNG file to write (default attention-layerL-headH.png)")
    attention.add_argument("--max-tokens", type=int, default=64, help="give the model at most this many tokens (64)")
    attention.add_argument("--json", action="store_true", help="also print the weights as JSON")

    embeddings = sub.add_parser("embeddings", help="nearest tokens to words in the input embedding space")
    embeddings.add_argument("words", nargs="+", help="one or more words (quote a phrase to look it up as one)")
    embeddings.add_argument("--model", required=True, help=MODEL_HELP)
    embeddings.add_argument("--k", type=int, default=10, help="neighbours per word (10)")
    embeddings.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    if args.inspect_command == "tokens":
        from tailorlm.inspect.tokens import format_table, inspect_tokens

        table = inspect_tokens(args.model, args.text, progress=not args.json)
        print(json.dumps(table.to_dict(), indent=2, ensure_ascii=False) if args.json else format_table(table))
    elif args.inspect_command == "attention":
        from tailorlm.errors import ConfigError
        from tailorlm.inspect.attention import check_output, format_summary, inspect_attention

        if args.all_heads and args.head is not None:
            raise ConfigError("--head and --all-heads conflict", key="head", found=f"--head {args.head} --all-heads",
                              expected="one head with --head H, or every head with --all-heads")
        head = None if args.all_heads else (args.head if args.head is not None else 0)
        which = "all-heads" if head is None else f"head{head}"
        output = check_output(args.output or f"attention-layer{args.layer}-{which}.png")
        attention = inspect_attention(args.model, args.text, layer=args.layer, head=head, output=output,
                                      max_tokens=args.max_tokens, progress=not args.json)
        if args.json:
            print(json.dumps({**attention.to_dict(), "output": str(output)}, ensure_ascii=False))
        else:
            print(format_summary(attention, output))
    else:
        from tailorlm.inspect.embeddings import format_neighbours, inspect_embeddings

        results = inspect_embeddings(args.model, args.words, k=args.k, progress=not args.json)
        if args.json:
            report = {"model": args.model, "words": [r.to_dict() for r in results]}
            print(json.dumps(report, indent=2, ensure_ascii=False))
        else:
            print(format_neighbours(results, args.model))
    return 0
