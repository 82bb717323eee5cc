"""Errors that the CLIs turn into one line on stderr and an exit code."""


class ClipdbError(Exception):
    """A runtime failure the user can act on: printed as one line, exit 1."""


class UsageError(ClipdbError):
    """Bad arguments: printed with the usage line, exit 2."""


class WeightsUnavailable(ClipdbError):
    """A model's weights cannot be had here (not cached and no network, or none published):
    exit 1, and the CLI adds the command line that reruns it with random weights."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message (PostgreSQL's carry DETAIL/HINT lines after it)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def disk_full(where: str, err: BaseException) -> ClipdbError:
    """The one line for ENOSPC (a PostgreSQL DiskFull or an OSError): what and where, and
    that nothing committed is lost."""
    return ClipdbError(
        f"no space left on device: {where} ({first_line(err)}); "
        "committed rows are kept, free some space and run again"
    )
