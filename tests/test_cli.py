"""The CLI as a whole: every subcommand explains itself, and user errors are one clear line."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from langadapt.cli import build_parser, main


def _subcommand_paths(parser: argparse.ArgumentParser, prefix=()):
    """Every runnable command path, e.g. ("tokenizer", "merge")."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if sub.get_default("_target"):
                    yield prefix + (name,)
                yield from _subcommand_paths(sub, prefix + (name,))


COMMANDS = sorted(_subcommand_paths(build_parser()))


def test_expected_commands_are_registered():
    names = {" ".join(c) for c in COMMANDS}
    for expected in ["corpus stats", "tokenizer train", "tokenizer merge", "tokenizer prune",
                     "tokenizer report", "model info", "demo"]:
        assert expected in names


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: langadapt " + " ".join(command))
    assert len(out.splitlines()) > 3


def test_help_does_not_import_torch():
    # `--help` must stay fast: the stage modules (and torch) load only when a command runs.
    code = "import sys; from langadapt.cli import main\ntry:\n main(['tokenizer','merge','--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_missing_file_is_one_line_error_without_traceback(tmp_path):
    missing = tmp_path / "nope.txt"
    proc = subprocess.run([sys.executable, "-m", "langadapt.cli", "corpus", "stats", str(missing)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert str(missing) in proc.stderr and "Traceback" not in proc.stderr


def test_group_without_action_shows_its_help(capsys):
    with pytest.raises(SystemExit):
        main(["tokenizer"])
    assert "train" in capsys.readouterr().out


def test_misspelt_option_suggests_the_nearest(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--max-stepz", "3"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --max-stepz (did you mean --max-steps?) 3" in capsys.readouterr().err
