"""`tailor export SPECIALIST --format hf|gguf --output DIR [--quant f16|q8_0]`: a merged model folder or a GGUF file,
reloaded from disk and checked for parity with the specialist (non-zero exit when the check fails)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tailorlm.export import FORMATS
    from tailorlm.export.gguf import QUANTS

    parser.add_argument("specialist", help="specialist folder (from `tailor train`) or any model reference")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="hf: a Hugging Face folder with the adapter merged; gguf: one GGUF file for llama.cpp")
    parser.add_argument("--output", required=True, help="folder to write the export and its parity.json into")
    parser.add_argument("--quant", help=f"GGUF weight type: {', '.join(QUANTS)} (default f16)")
    parser.add_argument("--overwrite", action="store_true", help="replace an output folder that already holds files")
    parser.add_argument("--device", default="cpu", help="where to load the specialist for merging and the check")


def run(args: argparse.Namespace) -> int:
    from tailorlm.export import export

    result = export(args.specialist, format=args.format, output=args.output, quant=args.quant,
                    overwrite=args.overwrite, device=args.device,
                    say=lambda text: print(f"… {text}", file=sys.stderr))
    for note in result.notes:
        print(f"note: {note}")
    print(result.report.render())
    if result.llama_cpp is not None:
        print(result.llama_cpp.render())
    elif result.llama_cpp_skipped:
        print(f"note: not read back by llama.cpp: {result.llama_cpp_skipped}")
    print(f"exported to {result.output}: " + ", ".join(result.files))
    if not result.passed:
        print(f"error: {result.output}: the export does not match the specialist within the documented tolerance "
              f"({'; '.join(result.failures)}); see {result.output / 'parity.json'}", file=sys.stderr)
        return 1
    return 0
