"""`tailor tokenizer train CORPUS... | extend MODEL_REF --corpus FILES...`: a domain tokenizer, or a model's tokenizer extended."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tailorlm.tokenization.train import DEFAULT_COMPARE, TYPES

    sub = parser.add_subparsers(dest="tokenizer_command", metavar="COMMAND", required=True)
    train = sub.add_parser("train", help="train a byte-level BPE or unigram tokenizer on a corpus; held-out fertility vs a reference")
    train.add_argument("corpus", nargs="+", help="text files (.txt, .md, .gz of them), folders of them, or JSONL/JSON/CSV/TSV/Parquet files")
    train.add_argument("--vocab-size", type=int, required=True, help="tokens in the vocabulary, special tokens and the 256 bytes included")
    train.add_argument("--type", default="bpe", choices=TYPES, help="bpe (default) or unigram; both work on bytes, so no input is unknown")
    train.add_argument("--output", required=True, help="folder for the tokenizer (loads with AutoTokenizer.from_pretrained)")
    train.add_argument("--compare", default=DEFAULT_COMPARE,
                       help=f"reference tokenizer: a model reference or tokenizer folder, or 'none' (default {DEFAULT_COMPARE})")
    train.add_argument("--held-out", type=float, default=0.05, help="fraction of blocks held out for fertility (every 20th for 0.05)")
    train.add_argument("--min-frequency", type=int, default=None, help="bpe only: the fewest times a pair must occur to be merged (default 2)")
    _common(train)

    extend = sub.add_parser("extend", help="add frequent domain words to a model's tokenizer and initialise their embeddings")
    extend.add_argument("model", help="model reference: built-in pack, model folder, .gguf file or hub id")
    extend.add_argument("--corpus", nargs="+", required=True, help="domain text: text files, folders of them, or data files")
    extend.add_argument("--add", type=int, required=True, help="how many words to add")
    extend.add_argument("--output", required=True, help="folder for the extended model and tokenizer (accepted by tailor train --model)")
    extend.add_argument("--min-pieces", type=int, default=3, help="only words the base tokenizer splits into at least this many pieces")
    extend.add_argument("--held-out", type=float, default=0.05, help="fraction of blocks held out for fertility and loss (every 20th for 0.05)")
    extend.add_argument("--loss-texts", type=int, default=50, help="held-out texts on which both models' loss is measured (0: none)")
    extend.add_argument("--loss-chars", type=int, default=1000, help="each loss text is cut to this many characters, at a space")
    _common(extend)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--column", default=None, help="the column of data files that holds the text (default: text or an alias)")
    parser.add_argument("--overwrite", action="store_true", help="write into an output folder that is not empty")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(soft_wrap=True)
    if args.tokenizer_command == "train":
        _train(args, console)
    else:
        _extend(args, console)
    return 0


def _train(args: argparse.Namespace, console) -> None:
    from tailorlm.tokenization.fertility import fertility_table
    from tailorlm.tokenization.train import train_tokenizer

    compare = None if args.compare.lower() == "none" else args.compare
    result = train_tokenizer(args.corpus, vocab_size=args.vocab_size, output=args.output, type=args.type, compare=compare,
                             held_out=args.held_out, min_frequency=args.min_frequency, column=args.column,
                             overwrite=args.overwrite, progress=not args.quiet)
    specials = ", ".join(f"{token} {id_}" for token, id_ in result.special_tokens.items())
    console.print(f"{result.type} tokenizer of {result.vocab_size:,} tokens saved to {result.output}")
    if result.vocab_size < result.asked:
        console.print(f"note: {result.asked:,} tokens were asked for, but the corpus only supports {result.vocab_size:,} "
                      "(every pair that occurs often enough is merged); a larger corpus gives the full size")
    console.print(f"special tokens (id): {specials}; chat template: ChatML")
    if result.fertility:
        first = next(iter(result.fertility.values()))
        title = (f"fertility on the held-out {result.held_out_fraction:g} of the corpus "
                 f"({first.words:,} words, {first.chars:,} characters)")
        console.print(fertility_table(result.fertility, title=title, vocab_sizes=result.vocab_sizes))
    elif result.held_out_fraction > 0:
        console.print("no fertility table: the corpus has too few blocks to hold any out at this fraction")


def _extend(args: argparse.Namespace, console) -> None:
    from rich.table import Table

    from tailorlm.tokenization.extend import LOSS_UNIT, REPORT_FILE, extend_tokenizer
    from tailorlm.tokenization.fertility import fertility_table

    report = extend_tokenizer(args.model, args.corpus, add=args.add, output=args.output, min_pieces=args.min_pieces,
                              held_out=args.held_out, loss_texts=args.loss_texts, loss_chars=args.loss_chars,
                              column=args.column, overwrite=args.overwrite, progress=not args.quiet)
    added = Table(title=f"{len(report.added)} tokens added (of {args.add} asked), most tokens saved first", title_justify="left")
    for column in ("token", "id", "frequency", "pieces before", "tokens saved", "uses"):
        added.add_column(column, justify="left" if column == "token" else "right")
    shown = sorted(report.added, key=lambda w: -w.saved)
    for word in shown[:20]:
        added.add_row(repr(word.token), str(word.id), f"{word.frequency:,}", str(len(word.pieces)), f"{word.saved:,}", f"{word.uses:,}")
    console.print(added)
    if len(shown) > 20:
        console.print(f"... and {len(shown) - 20} more, all in {report.output / REPORT_FILE}")
    for part, rows in report.fertility.items():
        first = rows["base"]
        name = "the counted corpus" if part == "counted" else "the held-out part"
        console.print(fertility_table(rows, title=f"fertility on {name} ({first.words:,} words, {first.chars:,} characters)"))
    if report.loss:
        table = Table(title=f"domain loss before any training, on {report.loss_texts} {report.loss_text_source} texts",
                      title_justify="left")
        for column in ("model", "tokens", "nats/char", "nats/word"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for name, loss in report.loss.items():
            table.add_row(name, f"{loss.tokens:,}", f"{loss.per_char:.4f}", f"{loss.per_word:.4f}")
        console.print(table)
        ratio = report.loss_ratio
        verdict = "within 5% of the base" if ratio <= 1.05 else "MORE than 5% above the base"
        console.print(f"extended / base, per character: {ratio:.4f} ({verdict})")
        console.print(f"loss unit: {LOSS_UNIT}.")
    head = "tied to the input embeddings" if report.tied_head else "untied (its new rows initialised the same way)"
    console.print(f"model and tokenizer saved to {report.output} (output layer {head}); report in {REPORT_FILE}")
