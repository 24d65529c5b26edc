"""The `langadapt` command line. This file only parses arguments and delegates.

Each subcommand names a `module:function` that receives the parsed arguments; the module
is imported only when that subcommand runs, so `--help` stays fast (no torch import).
Logic, printing of results included, lives in the stage packages.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from langadapt import __version__
from langadapt.errors import LangadaptError

LANGS = "bo (Tibetan), zh (Chinese), ko (Korean), en (English) or any other code (generic profile)"


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _add(sub, name: str, target: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """Add a subcommand whose handler is `target` = "package.module:function"."""
    p = sub.add_parser(name, help=help, description=description or help, formatter_class=_Formatter)
    p.set_defaults(_target=target)
    return p


def _add_corpus_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """The arguments every command that reads a corpus shares."""
    p.add_argument("paths", nargs="+" if required else "*", metavar="PATH",
                   help="text files, directories (read recursively), globs, .jsonl, .conllu, .csv/.tsv, .gz")
    p.add_argument("--lang", default="generic", help=f"language profile: {LANGS}")
    p.add_argument("--field", default="text", help="JSON field to read from .jsonl/.json records")
    p.add_argument("--column", default=None,
                   help="column (name or 0-based index) to read from .csv/.tsv; default: the longest text column")
    p.add_argument("--clean", choices=["none", "kangyur"], default="none",
                   help="strip known markup: 'kangyur' removes Derge Kangyur folio marks [1b], [1b.1], {D1} "
                        "and keeps the correction of (error,correction) pairs")
    p.add_argument("--on-bad-bytes", choices=["error", "replace"], default="error",
                   help="invalid UTF-8: stop with the file and byte offset, or replace with U+FFFD and count them")


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    """The full `langadapt` argument parser."""
    parser = argparse.ArgumentParser(
        prog="langadapt",
        description="Teach an English-centric open LLM a new language: measure and extend its tokenizer, "
                    "resize and initialise its embeddings, continue pretraining, instruction-tune, "
                    "evaluate and serve.\n\nMODEL arguments accept a hub id, a local HF directory, a .gguf file "
                    "or the alias 'smollm2-135m' (the embedded default, SmolLM2-135M-Instruct).",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"langadapt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    stages = parser.add_subparsers(title="commands", metavar="COMMAND")

    # --- corpus -------------------------------------------------------------------
    corpus = stages.add_parser("corpus", help="read and inspect text corpora",
                               description="Read and inspect text corpora.")
    corpus_cmds = corpus.add_subparsers(title="corpus commands", metavar="ACTION")
    # (corpus subcommands are registered here)

    # --- tokenizer ----------------------------------------------------------------
    # (tokenizer subcommands are registered here)

    # --- model --------------------------------------------------------------------
    # (model subcommands are registered here)

    # --- demo ---------------------------------------------------------------------
    # (demo is registered here)

    return parser


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    """Entry point of the `langadapt` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    target = getattr(args, "_target", None)
    if target is None:
        # A group without its action (e.g. `langadapt corpus`): show that group's help.
        parser.parse_args((argv if argv is not None else sys.argv[1:]) + ["--help"])
        return 2
    module_name, func_name = target.split(":")
    debug = args.debug or os.environ.get("LANGADAPT_DEBUG") == "1"
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        result = func(args)
    except LangadaptError as e:
        if debug:
            raise
        print(f"langadapt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("langadapt: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
