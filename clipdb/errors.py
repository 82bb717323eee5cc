"""Errors that the CLIs turn into one line on stderr and an exit code."""


class ClipdbError(Exception):
    """A runtime failure the user can act on: printed as one line, exit 1."""


class UsageError(ClipdbError):
    """Bad arguments: printed with the usage line, exit 2."""
