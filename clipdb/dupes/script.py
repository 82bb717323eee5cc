"""``--script FILE --move-to DIR``: a POSIX sh script that moves the non-kept duplicates.

clipdb itself never moves or deletes a user's file: it writes a script the user can read and
run. The script moves each non-kept file to DIR/<its path relative to the files' common root>,
creates directories with ``mkdir -p``, skips (with a message) a file that is gone or whose
target exists (``mv -n`` is not POSIX, so it tests first), and never deletes. Names are written
as their exact bytes inside single quotes (a quote becomes ``'\\''``), which sh takes literally
whatever they hold: spaces, ``$``, backslashes, newlines, bytes that are not UTF-8. Comments
carry only escaped display forms, so no name can end a comment line.

The script file is always a new one of the caller's (mode 0755): a file or link already at
that name, which someone else may have put there to have a line of theirs run, is refused;
``--force`` replaces a regular file by renaming a fresh one over it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import time
from collections.abc import Sequence

from clipdb.dupes import Group
from clipdb.errors import ClipdbError, UsageError, disk_full
from clipdb.files import display
from clipdb.terminal import printable

HEADER = """\
#!/bin/sh
# Written by clipdb dupes on {date}: moves {count} duplicate files into
#   {target}
# keeping their paths relative to
#   {root}
# Nothing is deleted or overwritten: a file that is gone, or whose target exists, is skipped.
# Afterwards, run: clipdb ingest --prune {root_arg}
set -u
moved=0
skipped=0
move() {{
    if [ ! -e "$1" ] && [ ! -L "$1" ]; then
        printf 'skipped (gone): %s\\n' "$1" >&2
        skipped=$((skipped + 1))
        return 0
    fi
    if [ -e "$3" ] || [ -L "$3" ]; then
        printf 'skipped (target exists): %s\\n' "$3" >&2
        skipped=$((skipped + 1))
        return 0
    fi
    if mkdir -p -- "$2" && mv -- "$1" "$3"; then
        moved=$((moved + 1))
    else
        skipped=$((skipped + 1))
    fi
}}
"""
FOOTER = 'printf \'moved %s, skipped %s\\n\' "$moved" "$skipped"\n'


def quote(path: str) -> bytes:
    """``path``'s exact bytes as one sh word."""
    return b"'" + os.fsencode(path).replace(b"'", b"'\\''") + b"'"


def _comment(text: str) -> bytes:
    return ("# " + printable(display(text)) + "\n").encode("utf-8", "backslashreplace")


def common_root(groups: Sequence[Group]) -> str:
    """The deepest directory holding every file of ``groups``."""
    directories = {os.path.dirname(m.image_path) for g in groups for m in g.images}
    return os.path.commonpath(sorted(directories)) if directories else os.sep


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(os.path.join(root, ""))


def check_move_to(move_to: str, indexed_trees: Sequence[str]) -> str:
    """The absolute DIR, or a usage error: a file, or inside a tree whose images are indexed
    (moved files would be indexed again, or moved onto themselves)."""
    target = os.path.realpath(os.path.abspath(move_to))
    if os.path.lexists(target) and not os.path.isdir(target):
        raise UsageError(f"--move-to {printable(display(move_to))} exists and is not a directory")
    for tree in indexed_trees:
        real = os.path.realpath(tree)
        if _inside(target, real):
            raise UsageError(
                f"--move-to {printable(display(move_to))} is inside the indexed tree "
                f"{printable(display(tree))}; choose a directory outside it"
            )
    return target


def script_bytes(groups: Sequence[Group], move_to: str) -> bytes:
    """The script for ``groups`` (all of them: the caller picks the tiers)."""
    root = common_root(groups)
    moves = [m for g in groups for m in g.images if not m.keep]
    parts = [
        HEADER.format(
            date=time.strftime("%Y-%m-%d %H:%M:%S"),
            count=len(moves),
            target=printable(display(move_to)),
            root=printable(display(root)),
            root_arg=printable(display(root)),
        ).encode("utf-8", "backslashreplace")
    ]
    for number, group in enumerate(groups, 1):
        parts.append(_comment(f"group {number} ({group.tier}): keep {group.kept.image_path}"))
        for member in group.images:
            if member.keep:
                continue
            target = os.path.join(move_to, os.path.relpath(member.image_path, root))
            parts.append(
                b"move "
                + b" ".join(
                    (quote(member.image_path), quote(os.path.dirname(target)), quote(target))
                )
                + b"\n"
            )
    parts.append(FOOTER.encode())
    return b"".join(parts)


def check_script(path: str, force: bool) -> None:
    """Refuse a ``--script`` name clipdb must not write (before any work): a directory, a
    link, something that is not a regular file, or, without ``force``, any existing file."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    except OSError as err:
        raise ClipdbError(f"cannot write --script {_shown(path)}: {err.strerror}") from None
    if info is None:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ClipdbError(f"cannot write --script {_shown(path)}: no folder {_shown(folder)}")
        return
    if stat.S_ISDIR(info.st_mode):
        raise UsageError(f"--script {_shown(path)} is a directory")
    if stat.S_ISLNK(info.st_mode):
        raise ClipdbError(
            f"--script {_shown(path)} is a symbolic link; clipdb never writes through one"
        )
    if not stat.S_ISREG(info.st_mode):
        raise ClipdbError(f"--script {_shown(path)} exists and is not a regular file")
    if not force:
        raise ClipdbError(f"--script {_shown(path)} exists; pass --force to replace it")


def write_script(path: str, groups: Sequence[Group], move_to: str, *, force: bool = False) -> int:
    """Write the script to ``path`` as a new file of the caller's, mode 0755; returns how many
    moves it holds.

    The file is always a new inode: created exclusively, never through a link, so a file
    another user made at that name (writable by them, to append a command to what the caller
    later runs) is never filled in. With ``force`` an existing regular file is replaced by a
    rename of a private temporary file from the same directory (atomic; the rename replaces
    the name, whatever was swapped in meanwhile, and writes into nothing).
    """
    check_script(path, force)
    data = script_bytes(groups, move_to)
    exists = os.path.lexists(path)
    target = _temporary(path) if exists else path
    try:
        fd = os.open(
            target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o700
        )
    except FileExistsError:
        raise ClipdbError(f"--script {_shown(path)} exists; pass --force to replace it") from None
    except OSError as err:
        raise ClipdbError(f"cannot write --script {_shown(path)}: {err.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), 0o755)  # not the umask's say: readable, never others'
        if exists:
            os.rename(target, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(target)  # ours: made above with O_EXCL
        if err.errno == errno.ENOSPC:
            raise disk_full(f"writing --script {_shown(path)}", err) from None
        raise ClipdbError(f"cannot write --script {_shown(path)}: {err.strerror}") from None
    return sum(1 for g in groups for m in g.images if not m.keep)


def _temporary(path: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.{secrets.token_hex(8)}.tmp")


def _shown(path: str) -> str:
    return printable(display(path))
