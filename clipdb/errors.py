"""Errors that the CLIs turn into one line on stderr and an exit code.

A message that names a setting carries it as an :class:`Option`, not as text, so each surface
names it its own way: ``--pretrained none`` on the command line (the default rendering),
``pretrained='none'`` for a caller of the Python API (:mod:`clipdb.api` marks the errors it
lets through).
"""

from __future__ import annotations

from dataclasses import dataclass

CLI = "cli"
PYTHON = "python"

# ClipDB's keyword where it differs from the flag (the original tool's ``model_name``).
_PYTHON_NAMES = {"model": "model_name"}


@dataclass(frozen=True)
class Option:
    """A setting named in an error message: ``name`` as the flag spells it without dashes,
    with an optional ``value`` (a literal, or with ``placeholder`` a metavar such as FILE)."""

    name: str
    value: str | None = None
    placeholder: bool = False

    def render(self, surface: str) -> str:
        if surface == PYTHON:
            keyword = _PYTHON_NAMES.get(self.name, self.name.replace("-", "_"))
            if self.value is None:
                return f"{keyword}="
            return f"{keyword}={self.value if self.placeholder else repr(self.value)}"
        return f"--{self.name}" if self.value is None else f"--{self.name} {self.value}"


class ClipdbError(Exception):
    """A runtime failure the user can act on: printed as one line, exit 1.

    Built from text and :class:`Option` parts; ``str()`` renders them for ``surface``
    (the command line unless a surface such as the Python API set its own)."""

    surface = CLI

    def __init__(self, *parts: str | Option) -> None:
        self.parts = parts
        super().__init__(self.render(CLI))

    def render(self, surface: str) -> str:
        return "".join(p if isinstance(p, str) else p.render(surface) for p in self.parts)

    def __str__(self) -> str:
        return self.render(self.surface)


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
