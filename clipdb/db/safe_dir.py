"""Directories clipdb keeps its own files in (CLIPDB_HOME, a standby's ``--to``): whose they are.

clipdb often runs as root and creates, locks and chowns files in these directories. Another
local user who could write in one, or rename or replace anything on the way to it (a folder
of theirs, a symlink of theirs), could point those files at one of root's. So the path is
walked from ``/`` one name at a time, each opened relative to its parent's descriptor without
following links (a link is followed only when the caller or root owns it, by reading it and
walking its target the same way), and refused with one line unless:

- every directory on the way is owned by the caller or root and writable by no one else,
  unless sticky (``/tmp``: others cannot rename what is not theirs there);
- the directory itself, if clipdb did not just create it, is owned by the caller or root and
  writable by no one else.

Callers then create and open their files relative to the returned descriptor with
``O_NOFOLLOW`` (``O_EXCL`` where they create), so nothing is reached through a name that
changes underneath them. PostgreSQL's own binaries are still given paths; they run as the
server user, inside directories no other user can change.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from clipdb.errors import ClipdbError

# O_PATH enters a directory its owner made 0711 without needing to read it (Linux); elsewhere
# O_RDONLY, which needs read permission on every directory on the way.
_ENTER = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40  # as the kernel's ELOOP limit
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


@dataclass(frozen=True)
class SafeDir:
    """An open, vetted directory: ``path`` has no links in it, ``fd`` is the directory."""

    path: Path
    fd: int


def owner_name(uid: int) -> str:
    import pwd

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


@contextmanager
def safe_dir(
    path: Path,
    what: str,
    *,
    mode: int | None = None,
    check_existing: Callable[[SafeDir, bool], None] | None = None,
) -> Iterator[SafeDir]:
    """Open ``path`` (creating what is missing) as described in the module docstring.

    ``what`` names it in errors (``CLIPDB_HOME``, ``--to``). Missing directories are created
    with exactly ``mode`` (None: 0755 less the umask). ``check_existing`` is called once with
    the deepest directory that already exists (vetted), and whether it is ``path`` itself,
    before anything is created.
    """
    me = os.geteuid()
    absolute = Path.cwd() / path.expanduser()

    def refuse(why: str) -> ClipdbError:
        return ClipdbError(f"refusing {what} {absolute}: {why}")

    def unusable(why: str) -> ClipdbError:
        return ClipdbError(f"{what} {absolute} is not writable: {why}")

    def trusted(info: os.stat_result, where: Path, *, final: bool) -> None:
        if info.st_uid not in (me, 0):
            raise refuse(
                f"{where} belongs to {owner_name(info.st_uid)}, who could swap what clipdb "
                "keeps there for links to other files; use a directory of your own"
            )
        loose = stat.S_IMODE(info.st_mode) & _OTHERS_WRITE
        if loose and (final or not info.st_mode & stat.S_ISVTX):
            raise refuse(
                f"{where} is writable by other users (mode {stat.S_IMODE(info.st_mode):04o}), "
                "who could plant links to other files there; use a directory of your own"
            )

    pending = list(reversed(absolute.parts[1:]))
    real = Path("/")
    fd = os.open("/", _ENTER)
    links = 0
    checked = False
    try:
        trusted(os.fstat(fd), real, final=False)
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                parent = os.open("..", _ENTER, dir_fd=fd)
                os.close(fd)
                fd, real = parent, real.parent  # already vetted on the way down
                continue
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not checked and check_existing is not None:
                    check_existing(SafeDir(real, fd), False)
                checked = True
                child = _make(fd, name, real / name, mode, unusable)
                if child is None:
                    pending.append(name)  # made by someone else meanwhile: vet it
                    continue
                os.close(fd)
                fd, real = child, real / name
                continue
            if stat.S_ISLNK(info.st_mode):
                if info.st_uid not in (me, 0):
                    raise refuse(
                        f"{real / name} is a symbolic link of {owner_name(info.st_uid)}, who "
                        "could point it anywhere; use the path it points to, if it is yours"
                    )
                links += 1
                if links > _MAX_LINKS:
                    raise refuse("too many levels of symbolic links")
                target = Path(os.readlink(name, dir_fd=fd))
                if target.is_absolute():
                    os.close(fd)
                    fd, real = os.open("/", _ENTER), Path("/")
                pending.extend(reversed([part for part in target.parts if part != "/"]))
                continue
            if not stat.S_ISDIR(info.st_mode):
                raise unusable(f"{real / name} is not a directory")
            try:
                child = os.open(name, _ENTER, dir_fd=fd)
            except OSError as err:
                raise unusable(f"cannot enter {real / name}: {err.strerror or err}") from None
            os.close(fd)
            fd, real = child, real / name
            trusted(os.fstat(fd), real, final=False)
        trusted(os.fstat(fd), real, final=True)
        if not checked and check_existing is not None:
            check_existing(SafeDir(real, fd), True)
    except OSError as err:
        os.close(fd)
        raise unusable(f"{err.strerror or err}") from None
    except BaseException:
        os.close(fd)
        raise
    try:
        yield SafeDir(real, fd)
    finally:
        os.close(fd)


def _make(
    parent: int, name: str, where: Path, mode: int | None, unusable: Callable[[str], ClipdbError]
) -> int | None:
    """mkdir ``name`` in ``parent`` and open it; None if someone else made it first."""
    try:
        os.mkdir(name, 0o755 if mode is None else 0o700, dir_fd=parent)
    except FileExistsError:
        return None
    except OSError as err:
        raise unusable(f"cannot create {where}: {err.strerror or err}") from None
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        if mode is not None:
            os.fchmod(fd, mode)  # exactly, whatever the umask
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_subdir(parent: SafeDir, name: str) -> Path:
    """``name`` in ``parent``: a directory only the caller can enter (0700), made if missing.

    One that exists is used only if it is a real directory of the caller's (it is ours to
    make private); never through a link.
    """
    path = parent.path / name
    try:
        os.mkdir(name, 0o700, dir_fd=parent.fd)
    except FileExistsError:
        pass
    except OSError as err:
        raise ClipdbError(f"cannot create {path}: {err.strerror or err}") from None
    try:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, dir_fd=parent.fd)
    except OSError:
        raise ClipdbError(f"refusing {path}: it is not a directory (a link?)") from None
    try:
        owner = os.fstat(fd).st_uid
        if owner != os.geteuid():
            raise ClipdbError(f"refusing {path}: it belongs to {owner_name(owner)}")
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def open_file(directory: int, name: str, flags: int, mode: int = 0o600) -> int:
    """``name`` in ``directory`` (a descriptor), never through a link; with O_CREAT, made
    exclusively when it is new and opened as it is otherwise. Only a regular file is taken."""
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC
    fd = -1
    if flags & os.O_CREAT:
        try:
            fd = os.open(name, flags | os.O_EXCL, mode, dir_fd=directory)
        except FileExistsError:
            flags &= ~os.O_CREAT
    if fd < 0:
        try:
            fd = os.open(name, flags | os.O_NONBLOCK, dir_fd=directory)  # never hang on a FIFO
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise OSError(errno.ELOOP, "a symbolic link, not followed") from None
            raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{name} is not a regular file")
    return fd


def read_text(path: Path) -> str:
    """A small file's text, the last name not followed if it is a link (OSError then)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        with os.fdopen(os.dup(fd), "r") as handle:
            return handle.read()
    finally:
        os.close(fd)
