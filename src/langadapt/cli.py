"""The `langadapt` command line. This file only parses arguments and delegates.

Every command (`commands.COMMANDS`) is an options class plus a function; the flags come from the
options class (`options.add_arguments`). Only the module of the command being run is imported,
so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys

from langadapt import __version__
from langadapt.commands import COMMANDS, GROUPS, find
from langadapt.errors import LangadaptError
from langadapt.options import add_arguments, describe, from_args

DESCRIPTION = ("Teach an English-centric open LLM a new language: measure and extend its tokenizer, resize and "
               "initialise its embeddings, continue pretraining, instruction-tune, evaluate and serve.\n\nMODEL "
               "arguments accept a hub id, a local HF directory, a .gguf file or the alias 'smollm2-135m' (the "
               "embedded default, SmolLM2-135M-Instruct).")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `langadapt` parser; every command's flags, or only those of the command `only` (faster)."""
    parser = argparse.ArgumentParser(prog="langadapt", description=DESCRIPTION, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"langadapt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    top = parser.add_subparsers(title="commands", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for command in COMMANDS:
        *group, name = command.words.split()
        subparsers = top
        if group:
            if group[0] not in groups:
                g = top.add_parser(group[0], help=GROUPS[group[0]], description=GROUPS[group[0]].capitalize() + ".")
                groups[group[0]] = g.add_subparsers(title=f"{group[0]} commands", metavar="ACTION")
            subparsers = groups[group[0]]
        p = subparsers.add_parser(name, help=command.help, formatter_class=_Formatter)
        p.set_defaults(_target=command.words)
        if only is None or only == command.words:
            cls = command.options_class()
            p.description = describe(cls)
            add_arguments(p, cls)
    return parser


def _command_words(argv: list[str]) -> str | None:
    """The command named at the start of `argv` (options before it skipped), if any."""
    words = [a for a in argv if not a.startswith("-")]
    for n in (2, 1):
        if " ".join(words[:n]) in {c.words for c in COMMANDS}:
            return " ".join(words[:n])
    return None


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option of `parser` and of its subcommands."""
    options = set()
    for action in parser._actions:
        options.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                options |= _option_strings(sub)
    return options


def _with_suggestion(word: str, parser: argparse.ArgumentParser) -> str:
    """`word`, followed by the nearest known option when it looks like a misspelt one."""
    if not word.startswith("--"):
        return word
    close = difflib.get_close_matches(word.split("=")[0], _option_strings(parser), n=1)
    return f"{word} (did you mean {close[0]}?)" if close else word


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `langadapt` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=_command_words(argv) or "")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error("unrecognized arguments: " + " ".join(_with_suggestion(word, parser) for word in unknown))
    words = getattr(args, "_target", None)
    if words is None:  # a group without its action (e.g. `langadapt corpus`): show that group's help
        parser.parse_args(argv + ["--help"])
        return 2
    debug = args.debug or os.environ.get("LANGADAPT_DEBUG") == "1"
    command = find(words)
    try:
        if getattr(args, "_listing", None):
            module, function = args._listing.split(":")
            print(getattr(importlib.import_module(module), function)())
            return 0
        return command.run(from_args(command.options_class(), args))
    except LangadaptError as e:
        if debug:
            raise
        print(f"langadapt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("langadapt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # also `accelerate launch -m langadapt.cli pretrain --config ...`
    sys.exit(main())
