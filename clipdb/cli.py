"""The CLI kit every command shares: parse, run, map errors to exit codes, shared validators.

Exit codes: 0 ok, 1 runtime error (one line on stderr, no traceback), 2 usage error, 130 on
Ctrl-C, 141 (quietly) when the reader closes the pipe early (``| head``). Nothing here imports
torch, open_clip or FastAPI, so ``--help`` and argument errors of every command answer at once.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from clipdb.config import BACKENDS, DEVICES, PRECISIONS
from clipdb.errors import ClipdbError, UsageError, WeightsUnavailable, disk_full, first_line

__all__ = [
    "CommandParser",
    "first_line",
    "run_command",
    "positive_int",
    "non_negative_int",
    "similarity_value",
]

# A word that starts like a negative number (-1, -.5, -33.87,151.21,25): a value, never an
# option, wherever it stands.
_NEGATIVE_NUMBER = re.compile(r"^-\.?\d")

# What a command that ends because its reader closed the pipe exits with: 128 + SIGPIPE, as a
# shell reports any Unix tool stopped by that signal (`yes | head`).
BROKEN_PIPE = 141


class CommandParser(argparse.ArgumentParser):
    """The parser of every command (and of ``db``'s subcommands).

    - A word starting like a negative number is a value: ``--near -33.87,151.21,25``,
      ``--within -1`` (argparse alone takes it for an option, or refuses it whenever the
      parser has a digit option such as ``-0``, and says "expected one argument"); so is
      one of an option's choices that starts with a dash (``--sort -date``).
    - A usage error is two lines, ``PROG: error: ...`` and ``see PROG --help``, not the
      whole usage block before the one useful line.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # A choice spelled with a leading dash (--sort -date) is that option's value.
        words: list[str] = []
        for word in sys.argv[1:] if args is None else args:
            action = self._option_string_actions.get(words[-1]) if words else None
            if (
                action is not None
                and words[-1].startswith("--")
                and word.startswith("-")
                and action.choices is not None
                and word in action.choices
            ):
                words[-1] = f"{words[-1]}={word}"
            else:
                words.append(word)
        return super().parse_known_args(words, namespace)

    def _parse_optional(self, arg_string: str) -> Any:
        if arg_string not in self._option_string_actions and _NEGATIVE_NUMBER.match(arg_string):
            return None  # a positional word: the value of the option before it
        return super()._parse_optional(arg_string)

    def error(self, message: str) -> NoReturn:
        self.exit(2, usage_error(self.prog, message))


def usage_error(prog: str, message: str) -> str:
    """The two lines every usage error prints (argparse's and clipdb's own)."""
    return f"{prog}: error: {message}\nsee {prog} --help\n"


def run_command(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    body: Callable[[argparse.Namespace], int],
    *,
    interrupted: str = "interrupted",
) -> int:
    """Parse ``argv`` and run ``body(args)``; every outcome becomes an exit code."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2, already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    import psycopg

    try:
        code = body(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except UsageError as err:
        sys.stderr.write(usage_error(getattr(args, "command_prog", parser.prog), str(err)))
        return 2
    except WeightsUnavailable as err:  # offline, most often: say how to try it anyway
        rerun = random_weights_rerun(parser.prog, sys.argv[1:] if argv is None else argv)
        print(f"error: {err}; rerun: {rerun}", file=sys.stderr)
        return 1
    except ClipdbError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except psycopg.errors.DiskFull as err:  # a write outside the ingest writer
        print(f"error: {disk_full('the database server', err)}", file=sys.stderr)
        return 1
    except psycopg.Error as err:
        print(f"error: database: {first_line(err)}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno == errno.EPIPE:
            return _closed_pipe()
        if err.errno != errno.ENOSPC:
            raise
        print(f"error: {disk_full(str(err.filename or 'a file'), err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130


def random_weights_rerun(prog: str, argv: Sequence[str]) -> str:
    """The command line that runs ``prog argv`` again with seeded random weights: its own
    ``--pretrained`` dropped (a flag would beat the variable), CLIPDB_PRETRAINED=none in front."""
    kept: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg == "--pretrained":
            skip_value = True
        elif not arg.startswith("--pretrained="):
            kept.append(arg)
    return " ".join(["CLIPDB_PRETRAINED=none", prog, shlex.join(kept)]).rstrip()


def _closed_pipe() -> int:
    """The reader went away (``| head``): stop quietly. stdout now points at /dev/null so
    that the interpreter's last flush of what is still buffered cannot fail noisily."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (stdout replaced in-process)
        pass
    return BROKEN_PIPE


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    number = _int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def result_count(value: str) -> int:
    """argparse type: a number of results, 1 to MAX_RESULTS."""
    from clipdb.config import MAX_RESULTS

    number = _int(value)
    if not 1 <= number <= MAX_RESULTS:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_RESULTS}, got {value!r}")
    return number


def non_negative_int(value: str) -> int:
    """argparse type: an integer >= 0."""
    number = _int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {value!r}")
    return number


def positive_float(value: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return number


def non_negative_float(value: str) -> float:
    """argparse type: a finite number >= 0."""
    if value.strip() in ("0", "0.0"):
        return 0.0
    return positive_float(value)


def similarity_value(value: str) -> float:
    """argparse type: a cosine similarity in [-1, 1]."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not -1.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"a cosine similarity is in [-1, 1], got {value!r}")
    return number


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None


def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend``, ``--device`` and ``--precision``, the same for every command that encodes."""
    parser.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="auto: OpenVINO on CPU, torch on CUDA/MPS; torch; openvino (CPU only; default auto)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=DEVICES,
        help="where to encode: auto (cuda, then mps, then cpu), cpu, cuda or mps (default auto)",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32; int8: OpenVINO "
        "int8 weights (default auto)",
    )


# How the user ran the command, for usage lines: the ``clipdb`` dispatcher sets "clipdb ".
invoked_as = "python -m clipdb."


def command_parser(name: str, description: str, examples: str) -> argparse.ArgumentParser:
    """A command's parser, named as it was run; examples after the options."""
    return CommandParser(
        prog=f"{invoked_as}{name}",
        description=description,
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
