"""The ``clipdb`` command and the CLI kit every command shares."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
from helpers import TINY_MODEL, run_module

from clipdb.cli import random_weights_rerun
from clipdb.db import Database

COMMANDS = ("ingest", "search", "embed", "serve", "db", "dupes")


def test_clipdb_help_lists_every_command() -> None:
    result = run_module("clipdb", "--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert f"\n  {command} " in result.stdout


def test_clipdb_version() -> None:
    from clipdb import __version__

    result = run_module("clipdb", "--version")
    assert (result.returncode, result.stdout) == (0, f"clipdb {__version__}\n")


def test_unknown_command_is_a_usage_error() -> None:
    result = run_module("clipdb", "nonsense")
    assert result.returncode == 2
    assert "unknown command 'nonsense'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_is_the_python_m_form(command: str) -> None:
    via_clipdb = run_module("clipdb", command, "--help")
    via_module = run_module(f"clipdb.{command}", "--help")
    assert via_clipdb.returncode == via_module.returncode == 0
    assert via_clipdb.stdout.startswith(f"usage: clipdb {command} ")
    assert via_module.stdout.startswith(f"usage: python -m clipdb.{command} ")
    # Same options either way: compare the option lines.
    options = [line for line in via_module.stdout.splitlines() if line.startswith("  -")]
    assert options == [line for line in via_clipdb.stdout.splitlines() if line.startswith("  -")]


HEAVY = ("torch", "open_clip", "fastapi")
PROBE = """
import sys
from clipdb.{command}.__main__ import main
code = main({argv!r})
heavy = sorted(name for name in {heavy!r} if name in sys.modules)
print("HEAVY", heavy, "CODE", code, file=sys.stderr)
"""


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("argv", [["--help"], ["--no-such-flag"]])
def test_help_and_argument_errors_import_nothing_heavy(command: str, argv: list[str]) -> None:
    code = PROBE.format(command=command, argv=argv, heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY [] CODE" in result.stderr, result.stderr
    assert result.stderr.rstrip().endswith("0" if argv == ["--help"] else "2")


@pytest.mark.parametrize("command", ["ingest", "search", "embed", "serve"])
def test_device_and_precision_are_validated_the_same_everywhere(command: str) -> None:
    for flag, value in (("--device", "tpu"), ("--precision", "fp8")):
        result = run_module(f"clipdb.{command}", "x.jpg", flag, value)
        if command == "serve":  # serve takes no positional argument
            result = run_module(f"clipdb.{command}", flag, value)
        assert result.returncode == 2, (command, flag, result.stderr)
        assert f"argument {flag}: invalid choice: '{value}'" in result.stderr


def test_random_weights_rerun_drops_the_commands_own_pretrained() -> None:
    argv = ["a b.jpg", "--pretrained", "openai", "--pretrained=x", "-k", "3"]
    assert random_weights_rerun("clipdb search", argv) == (
        "CLIPDB_PRETRAINED=none clipdb search 'a b.jpg' -k 3"
    )
    assert random_weights_rerun("python -m clipdb.serve", []) == (
        "CLIPDB_PRETRAINED=none python -m clipdb.serve"
    )


@pytest.mark.slow
def test_weights_out_of_reach_end_with_a_rerun_line_that_works(database: Database) -> None:
    """No weights to be had (the tiny model has no standard ones, like an offline hub): one
    line, naming CLIPDB_PRETRAINED=none and the exact command to run again; that line runs."""
    result = run_module("clipdb", "embed", "--text", "a red car", "--model", TINY_MODEL)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: open_clip has no standard weights for clipdb-tiny;")
    assert "CLIPDB_PRETRAINED=none" in line.split("; rerun: ")[0]
    rerun = shlex.split(line.split("; rerun: ")[1])
    command = ["clipdb", "embed", "--text", "a red car", "--model", TINY_MODEL]
    assert rerun == ["CLIPDB_PRETRAINED=none", *command]
    again = run_module("clipdb", *rerun[2:], env={"CLIPDB_PRETRAINED": "none"})
    assert again.returncode == 0, again.stderr
    assert len(again.stdout.strip("[]\n").split(",")) == 32
