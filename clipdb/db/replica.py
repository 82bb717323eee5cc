"""Streaming standbys: make one (pg_basebackup), promote it, report roles and lag, wait.

A standby made here is an embedded server in a CLIPDB_HOME of its own: the same private
socket directory and peer authentication as any embedded server (``embedded.ensure_server``
starts it), with ``standby.signal`` and a ``primary_conninfo`` written by ``pg_basebackup -R``.
PostgreSQL does the replication; clipdb only runs the bundled binaries and reads the
``pg_stat_replication`` / recovery functions. None of this touches clipdb's tables.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo, sql

from clipdb.db import Database, connect_checked, server_address
from clipdb.db import embedded_access as access
from clipdb.db.embedded import EmbeddedServer, _bin, _pgdata, _run_pg
from clipdb.db.safe_dir import SafeDir
from clipdb.errors import ClipdbError, first_line

BASEBACKUP_TIMEOUT_S = 3600
WAIT_TIMEOUT_S = 60.0


def application_name(home: Path) -> str:
    """The name a standby reports to its primary (pg_stat_replication, sync standby names)."""
    stem = re.sub(r"[^a-z0-9_]", "_", home.name.lower())[:20] or "standby"
    return f"clipdb_{stem}_{hashlib.sha256(str(home).encode()).hexdigest()[:6]}"


def replicate(source: Database, target: Path, *, sync: bool = False) -> EmbeddedServer:
    """Make ``target`` a CLIPDB_HOME holding a running streaming standby of ``source``.

    ``target`` is vetted as any CLIPDB_HOME is (``safe_dir``: the caller's or root's, no one
    else may write in it or on the way to it), so nothing can be planted in it between the
    check that it is empty and the files pg_basebackup writes.
    """
    from clipdb.db.embedded import ensure_server, open_home

    where = server_address(source.url)
    with connect_checked(source.url, autocommit=True) as conn:
        _check_may_replicate(conn, where)
    user = access.server_user()
    with open_home(target, user, what="--to", if_exists=_refuse_if_not_empty) as opened:
        target = opened.path
        pgdata = _pgdata(target)
        access.private_dir(pgdata, user, parent=opened.fd)
    name = application_name(target)
    url = conninfo.make_conninfo(source.url, application_name=name)
    try:
        _run_pg(
            [
                _bin("pg_basebackup"),
                "-D",
                str(pgdata),
                "-X",
                "stream",
                "-R",
                "-c",
                "fast",
                "-d",
                url,
                "--no-password",
            ],
            what="pg_basebackup",
            timeout=BASEBACKUP_TIMEOUT_S,
        )
    except ClipdbError as err:
        detail = str(err).split("pg_basebackup failed: ", 1)[-1]
        raise ClipdbError(f"cannot replicate from {where}: {detail}") from None
    server = ensure_server(target)
    if sync:
        # Only now: listed before it streams, the standby would stall every commit.
        with connect_checked(source.url, autocommit=True) as conn:
            _add_synchronous_standby(conn, name, where)
    return server


def _refuse_if_not_empty(target: SafeDir) -> None:
    readable = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=target.fd)
    try:
        if os.listdir(readable):
            raise ClipdbError(
                f"refusing --to {target.path}: it exists and is not an empty directory"
            )
    finally:
        os.close(readable)


def _check_may_replicate(conn: psycopg.Connection[Any], where: str) -> None:
    row = conn.execute(
        "SELECT current_user, rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if row is None or not row[1]:
        role = row[0] if row else "?"
        raise ClipdbError(
            f"cannot replicate from {where}: role {role} has no REPLICATION privilege "
            "(ALTER ROLE ... REPLICATION, or connect as a superuser)"
        )
    senders = conn.execute("SHOW max_wal_senders").fetchone()
    if senders is not None and int(senders[0]) == 0:
        raise ClipdbError(f"cannot replicate from {where}: max_wal_senders is 0")


def _add_synchronous_standby(conn: psycopg.Connection[Any], name: str, where: str) -> None:
    """Commits on the primary wait until this standby has applied them (read-your-writes).

    ``ANY 1 (...)``: one synchronous standby suffices, so adding a second does not make
    every commit wait for both. The price: if every listed standby is down, commits wait.
    """
    row = conn.execute("SHOW synchronous_standby_names").fetchone()
    current = (row[0] if row else "").strip()
    match = re.fullmatch(r"ANY 1 \((.*)\)", current)
    if current and match is None:
        raise ClipdbError(
            f"cannot add a synchronous standby on {where}: synchronous_standby_names is "
            f"{current!r}, not clipdb's ANY 1 (...) form; set it yourself"
        )
    names = [n.strip().strip('"') for n in match.group(1).split(",")] if match else []
    if name not in names:
        names.append(name)
    value = "ANY 1 (" + ", ".join(f'"{n}"' for n in names) + ")"
    try:
        conn.execute(
            sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(sql.Literal(value))
        )
        conn.execute("ALTER SYSTEM SET synchronous_commit = 'remote_apply'")
        conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        while time.monotonic() < deadline:  # the reload lands a moment later
            row = conn.execute(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                (name,),
            ).fetchone()
            if row is not None and row[0] in ("sync", "quorum"):
                return
            time.sleep(0.05)
    except psycopg.Error as err:
        raise ClipdbError(
            f"cannot make the standby synchronous on {where}: {first_line(err)}"
        ) from None
    raise ClipdbError(f"standby {name} did not become synchronous on {where}")


def is_standby(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(row and row[0])


def promote(database: Database) -> None:
    """Turn the standby into a primary (it stops following its old primary)."""
    with connect_checked(database.url, autocommit=True) as conn:
        if not is_standby(conn):
            raise ClipdbError(f"{server_address(database.url)} is already a primary")
        row = conn.execute("SELECT pg_promote(true, 60)").fetchone()
        if not (row and row[0]):
            raise ClipdbError(f"{server_address(database.url)} did not finish promoting in 60 s")


@dataclass(frozen=True)
class ReplicaLag:
    """One standby as its primary sees it."""

    name: str
    state: str
    sync_state: str
    replay_lag_bytes: int | None
    replay_lag_s: float | None


@dataclass(frozen=True)
class Replication:
    """What ``db status`` prints about replication."""

    role: str  # primary | standby
    replicas: list[ReplicaLag]  # on a primary: its standbys
    standby_lag_bytes: int | None = None  # on a standby: received but not yet replayed
    standby_lag_s: float | None = None  # on a standby: age of the last replayed commit
    replay_paused: bool = False


def replication_status(conn: psycopg.Connection[Any]) -> Replication:
    if is_standby(conn):
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), "
            "extract(epoch FROM now() - pg_last_xact_replay_timestamp()), "
            "pg_is_wal_replay_paused()"
        ).fetchone()
        assert row is not None
        return Replication(
            role="standby",
            replicas=[],
            standby_lag_bytes=None if row[0] is None else int(row[0]),
            standby_lag_s=None if row[1] is None else float(row[1]),
            replay_paused=bool(row[2]),
        )
    rows = conn.execute(
        "SELECT application_name, state, sync_state, "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), extract(epoch FROM replay_lag) "
        "FROM pg_stat_replication ORDER BY application_name"
    ).fetchall()
    replicas = [
        ReplicaLag(
            name=r[0],
            state=r[1],
            sync_state=r[2],
            replay_lag_bytes=None if r[3] is None else int(r[3]),
            replay_lag_s=None if r[4] is None else float(r[4]),
        )
        for r in rows
    ]
    return Replication(role="primary", replicas=replicas)


def wait_for_replicas(
    primary: Database, read_url: str | None = None, timeout: float = WAIT_TIMEOUT_S
) -> int:
    """Return once every standby streaming from ``primary`` (and the server ``read_url``
    reaches) has replayed everything committed so far; the number of standbys waited for."""
    deadline = time.monotonic() + timeout
    with connect_checked(primary.url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        target = row[0]
        while True:
            behind = conn.execute(
                "SELECT application_name, replay_lsn IS NOT NULL AND replay_lsn >= %s::pg_lsn "
                "FROM pg_stat_replication",
                (target,),
            ).fetchall()
            if all(caught_up for _, caught_up in behind):
                break
            if time.monotonic() > deadline:
                late = ", ".join(name for name, ok in behind if not ok)
                raise ClipdbError(f"replicas not caught up after {timeout:.0f} s: {late}")
            time.sleep(0.05)
    if read_url is not None:
        with connect_checked(read_url, autocommit=True) as reader:
            while is_standby(reader):
                done = reader.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
                ).fetchone()
                if done and done[0]:
                    break
                if time.monotonic() > deadline:
                    raise ClipdbError(
                        f"read server {server_address(read_url)} has not replayed the "
                        f"commits after {timeout:.0f} s"
                    )
                time.sleep(0.05)
    return len(behind)
