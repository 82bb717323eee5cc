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
    opened = _Walk(what, Path.cwd() / path.expanduser(), mode, check_existing).run()
    try:
        yield opened
    finally:
        os.close(opened.fd)


class _Walk:
    """One walk from ``/`` to a directory: where it stands (``fd``, the directory ``real``
    names), the names still to walk (the next last), and how it refuses."""

    def __init__(
        self,
        what: str,
        absolute: Path,
        mode: int | None,
        check_existing: Callable[[SafeDir, bool], None] | None,
    ) -> None:
        self.what, self.absolute = what, absolute
        self.mode, self.check_existing = mode, check_existing
        self.me = os.geteuid()
        self.pending = list(reversed(absolute.parts[1:]))
        self.real = Path("/")
        self.fd = -1
        self.links = 0
        self.checked = False

    def refuse(self, why: str) -> ClipdbError:
        return ClipdbError(f"refusing {self.what} {self.absolute}: {why}")

    def unusable(self, why: str) -> ClipdbError:
        return ClipdbError(f"{self.what} {self.absolute} is not writable: {why}")

    def run(self) -> SafeDir:
        """Walk every name; the directory at the end, vetted and open (nothing open on error)."""
        self.fd = os.open("/", _ENTER)
        try:
            self._trusted(os.fstat(self.fd), self.real, final=False)
            while self.pending:
                self._step(self.pending.pop())
            self._trusted(os.fstat(self.fd), self.real, final=True)
            self._check_existing(whole=True)
        except OSError as err:
            os.close(self.fd)
            raise self.unusable(f"{err.strerror or err}") from None
        except BaseException:
            os.close(self.fd)
            raise
        return SafeDir(self.real, self.fd)

    def _step(self, name: str) -> None:
        if name in ("", "."):
            return
        if name == "..":
            # Already vetted on the way down.
            self._move(os.open("..", _ENTER, dir_fd=self.fd), self.real.parent)
            return
        try:
            info = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            self._create(name)
            return
        if stat.S_ISLNK(info.st_mode):
            self._follow_link(name, info)
        else:
            self._enter(name, info)

    def _move(self, fd: int, real: Path) -> None:
        os.close(self.fd)
        self.fd, self.real = fd, real

    def _check_existing(self, *, whole: bool) -> None:
        """Call ``check_existing`` on the deepest directory that exists, once."""
        if not self.checked and self.check_existing is not None:
            self.check_existing(SafeDir(self.real, self.fd), whole)
        self.checked = True

    def _create(self, name: str) -> None:
        self._check_existing(whole=False)
        child = _make(self.fd, name, self.real / name, self.mode, self.unusable)
        if child is None:
            self.pending.append(name)  # made by someone else meanwhile: vet it
        else:
            self._move(child, self.real / name)

    def _follow_link(self, name: str, info: os.stat_result) -> None:
        """Walk a link's target instead of its name, if the caller or root owns it."""
        if info.st_uid not in (self.me, 0):
            raise self.refuse(
                f"{self.real / name} is a symbolic link of {owner_name(info.st_uid)}, who "
                "could point it anywhere; use the path it points to, if it is yours"
            )
        self.links += 1
        if self.links > _MAX_LINKS:
            raise self.refuse("too many levels of symbolic links")
        target = Path(os.readlink(name, dir_fd=self.fd))
        if target.is_absolute():
            self._move(os.open("/", _ENTER), Path("/"))
        self.pending.extend(reversed([part for part in target.parts if part != "/"]))

    def _enter(self, name: str, info: os.stat_result) -> None:
        if not stat.S_ISDIR(info.st_mode):
            raise self.unusable(f"{self.real / name} is not a directory")
        try:
            child = os.open(name, _ENTER, dir_fd=self.fd)
        except OSError as err:
            raise self.unusable(f"cannot enter {self.real / name}: {err.strerror or err}") from None
        self._move(child, self.real / name)
        self._trusted(os.fstat(self.fd), self.real, final=False)

    def _trusted(self, info: os.stat_result, where: Path, *, final: bool) -> None:
        if info.st_uid not in (self.me, 0):
            raise self.refuse(
                f"{where} belongs to {owner_name(info.st_uid)}, who could swap what clipdb "
                "keeps there for links to other files; use a directory of your own"
            )
        loose = stat.S_IMODE(info.st_mode) & _OTHERS_WRITE
        if loose and (final or not info.st_mode & stat.S_ISVTX):
            raise self.refuse(
                f"{where} is writable by other users (mode {stat.S_IMODE(info.st_mode):04o}), "
                "who could plant links to other files there; use a directory of your own"
            )


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
