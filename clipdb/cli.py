"""What every ``python -m clipdb.*`` command shares: errors mapped to one line and an exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from clipdb.errors import ClipdbError, UsageError


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def run_guarded(
    parser: argparse.ArgumentParser,
    body: Callable[[], int],
    *,
    interrupted: str = "interrupted",
) -> int:
    """Run a command body: 0 ok, 1 runtime error (one line, no traceback), 2 usage error,
    130 on Ctrl-C (with the ``interrupted`` line)."""
    import psycopg

    try:
        return body()
    except UsageError as err:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except ClipdbError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except psycopg.Error as err:
        print(f"error: database: {first_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
