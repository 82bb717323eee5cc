"""``--script FILE --move-to DIR``: a POSIX sh script that moves the non-kept duplicates.

clipdb itself never moves or deletes a user's file: it writes a script the user can read and
run. The script moves each non-kept file to DIR/<its path relative to the files' common root>,
creates directories with ``mkdir -p``, skips (with a message) a file that is gone or whose
target exists (``mv -n`` is not POSIX, so it tests first), and never deletes.

Advice goes stale between ``clipdb dupes`` and running the script: the kept file may be deleted
(moving its copies would move the last one away), or a new photo saved under a dupe's name. So
each group is checked when the script runs, before any of its moves: the kept file must still
be a file of its recorded size, each dupe a file of its recorded size and modification time
(to the second: ``touch -t`` and ``find -newer`` are what POSIX offers), and a dupe recorded as
the same bytes as the kept file must still be (``cmp``); otherwise the whole group is skipped
and the script says why. A dupe that is the same file as another indexed name (a link to it, a
hard link) is not moved: moving the target would leave the link dangling. Names are written
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

from clipdb.dupes import Group, Member
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
# Each group is checked before its moves (the kept file still there with its size, each
# duplicate unchanged since clipdb dupes ran); a group that fails is skipped, saying why.
# Afterwards, run: clipdb ingest --prune {root_arg}
set -u
TZ=UTC0
export TZ
moved=0
skipped=0
skipped_groups=0
stamps="${{TMPDIR:-/tmp}}/clipdb-dupes.$$"
mkdir -m 700 "$stamps" || exit 1
trap 'rm -f "$stamps/lo" "$stamps/hi"; rmdir "$stamps"' 0
trap 'exit 1' HUP INT TERM
filesize() {{
    wc -c < "$1" | tr -d ' '
}}
skip_group() {{
    if [ "$ok" = 1 ]; then
        printf 'skipped group %s: %s\n' "$group" "$1" >&2
        skipped_groups=$((skipped_groups + 1))
    fi
    ok=0
}}
# group NUMBER KEPT SIZE: the kept file must still be a file of the recorded size.
group() {{
    group=$1
    kept=$2
    ok=1
    if [ ! -f "$2" ]; then
        skip_group "the kept file is gone: $2"
    elif [ "$(filesize "$2")" != "$3" ]; then
        skip_group "the kept file changed since clipdb dupes ran: $2"
    fi
}}
# check DUPE SIZE STAMP NEXT IDENTICAL: the dupe is still the file clipdb saw (size, and a
# modification time from STAMP to NEXT, UTC seconds as touch -t takes them); IDENTICAL=1:
# still the kept file's bytes.
check() {{
    [ "$ok" = 1 ] || return 0
    if [ ! -f "$1" ]; then
        skip_group "a duplicate is gone: $1"
    elif [ "$(filesize "$1")" != "$2" ]; then
        skip_group "a duplicate changed since clipdb dupes ran (size): $1"
    elif ! touch -t "$3" "$stamps/lo" || ! touch -t "$4" "$stamps/hi" \
        || [ -n "$(find -H "$stamps/lo" -newer "$1")" ] \
        || [ -z "$(find -H "$stamps/hi" -newer "$1")" ]; then
        skip_group "a duplicate changed since clipdb dupes ran (time): $1"
    elif [ "$5" = 1 ] && ! cmp -s "$kept" "$1"; then
        skip_group "a duplicate no longer has the kept file's bytes: $1"
    fi
}}
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
FOOTER = (
    'printf \'moved %s, skipped %s, skipped groups %s\\n\' "$moved" "$skipped" "$skipped_groups"\n'
)


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
    moves = [m for g in groups for m in movable(g)]
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
        parts.extend(_group(number, group, move_to, root))
    parts.append(FOOTER.encode())
    return b"".join(parts)


def movable(group: Group) -> list[Member]:
    """The group's dupes the script moves: not one that is also indexed under another name
    (moving a link's target strands the link)."""
    return [m for m in group.images if not m.keep and not m.aliases]


def _group(number: int, group: Group, move_to: str, root: str) -> list[bytes]:
    """One group's lines: comments, the run-time checks, then the moves (only if they pass)."""
    kept = group.kept
    parts = [_comment(f"group {number} ({group.tier}): keep {kept.image_path} ({kept.reason})")]
    for member in group.images:
        if member.extra_metadata:
            parts.append(
                _comment(
                    f"  note: {member.image_path} has {', '.join(member.extra_metadata)} "
                    "that the kept file lacks"
                )
            )
        if not member.keep and member.aliases:
            parts.append(
                _comment(
                    f"  not moved: {member.image_path} is the same file as "
                    f"{', '.join(member.aliases)}"
                )
            )
    moves = movable(group)
    if not moves:
        return parts
    parts.append(f"group {number} ".encode() + quote(kept.image_path) + f" {kept.size}\n".encode())
    for member in moves:
        second = member.mtime_ns // 1_000_000_000
        parts.append(
            b"check "
            + quote(member.image_path)
            + f" {member.size} {_stamp(second)} {_stamp(second + 1)} "
            f"{int(member.identical)}\n".encode()
        )
    parts.append(b'if [ "$ok" = 1 ]; then\n')
    for member in moves:
        target = os.path.join(move_to, os.path.relpath(member.image_path, root))
        parts.append(
            b"    move "
            + b" ".join((quote(member.image_path), quote(os.path.dirname(target)), quote(target)))
            + b"\n"
        )
    parts.append(b"fi\n")
    return parts


def _stamp(second: int) -> str:
    """A UTC second as ``touch -t`` takes it (the script sets TZ=UTC0)."""
    return time.strftime("%Y%m%d%H%M.%S", time.gmtime(second))


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
    return sum(len(movable(g)) for g in groups)


def _temporary(path: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.{secrets.token_hex(8)}.tmp")


def _shown(path: str) -> str:
    return printable(display(path))
