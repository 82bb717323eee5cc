"""The CLI kit every command shares: parse, run, map errors to exit codes, shared validators.

Exit codes: 0 ok, 1 runtime error (one line on stderr, no traceback), 2 usage error, 130 on
Ctrl-C. Nothing here imports torch, open_clip or FastAPI, so ``--help`` and argument errors of
every command answer at once.
"""

from __future__ import annotations

import argparse
import errno
import shlex
import sys
from collections.abc import Callable, Sequence

from clipdb.config import BACKENDS, DEVICES, PRECISIONS
from clipdb.errors import ClipdbError, UsageError, WeightsUnavailable, disk_full, first_line

__all__ = ["first_line", "run_command", "positive_int", "non_negative_int", "similarity_value"]


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
        return body(args)
    except UsageError as err:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
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
    return argparse.ArgumentParser(
        prog=f"{invoked_as}{name}",
        description=description,
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
