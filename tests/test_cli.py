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


# --- negative numbers, usage errors, closed pipes (the CLI kit: clipdb.cli) ----------------


def test_negative_numbers_are_option_values() -> None:
    from clipdb.dupes.__main__ import build_parser as dupes_parser
    from clipdb.search.__main__ import build_parser as search_parser

    args = search_parser().parse_args(
        ["x.jpg", "--near", "-33.87,151.21,25", "--threshold", "-0.5", "--weights", "-1,1"]
    )
    assert (args.near, args.threshold, args.weights) == ("-33.87,151.21,25", -0.5, "-1,1")
    assert dupes_parser().parse_args(["--similar-threshold", "-.5"]).similar_threshold == -0.5
    assert search_parser().parse_args(["x.jpg", "--sort", "-date", "-k", "3"]).sort == "-date"


@pytest.mark.parametrize(
    ("command", "argv", "message"),
    [
        ("search", ["x.jpg", "--within", "-1"], "argument --within: must be from 0 to 2, got '-1'"),
        (
            "search",
            ["x.jpg", "--offset", "-3"],
            "argument --offset: must be from 0 to 100000, got '-3'",
        ),
        ("search", ["x.jpg", "-k", "-5"], "argument -k/--top: expected 1 to 10000, got '-5'"),
        (
            "ingest",
            ["x", "--batch-size", "-2"],
            "argument --batch-size: expected a positive integer, got '-2'",
        ),
        (
            "dupes",
            ["--similar-threshold", "-2"],
            "argument --similar-threshold: a cosine similarity is in [-1, 1], got '-2'",
        ),
        (
            "serve",
            ["--max-upload-mb", "-1"],
            "argument --max-upload-mb: expected a positive number, got '-1'",
        ),
    ],
)
def test_a_negative_value_gets_its_option_message(command, argv, message, capsys) -> None:
    import importlib

    main = importlib.import_module(f"clipdb.{command}.__main__").main
    assert main(argv) == 2
    prog = f"python -m clipdb.{command}"
    assert capsys.readouterr().err == f"{prog}: error: {message}\nsee {prog} --help\n"


@pytest.mark.parametrize("command", COMMANDS)
def test_usage_error_is_one_line_and_where_to_look(command: str) -> None:
    result = run_module("clipdb", command, "--no-such-flag")
    assert result.returncode == 2
    first, second = result.stderr.splitlines()  # no usage block before them
    assert first.startswith(f"clipdb {command}: error: ")
    assert second == f"see clipdb {command} --help"


def test_help_lists_every_db_action_and_the_exit_codes() -> None:
    result = run_module("clipdb", "--help")
    assert "url, status, stop, upgrade, replicate, promote" in result.stdout
    assert "130 interrupted (Ctrl-C)" in result.stdout


@pytest.mark.parametrize("action", ["url", "status", "stop", "upgrade", "replicate", "promote"])
def test_each_db_action_has_its_own_help(action: str) -> None:
    result = run_module("clipdb", "db", action, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: clipdb db {action} ")
    assert ("--to DIR" in result.stdout) == (action == "replicate")
    assert ("--json" in result.stdout) == (action == "status")


def test_db_examples_search_by_text() -> None:
    from clipdb.db.__main__ import EXAMPLES

    assert "clipdb search --text " in EXAMPLES
    assert 'clipdb search "' not in EXAMPLES
