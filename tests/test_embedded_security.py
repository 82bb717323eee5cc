"""Who can reach the embedded server, and what starting it may change on the machine.

Each test starts its own servers under its own CLIPDB_HOMEs (never the session server's) and
stops them. The other local user is ``nobody`` through setpriv, so most tests need root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import own_server, refused_server

from clipdb import config
from clipdb.db.embedded import EmbeddedServer, _bin, ensure_server, stop_server
from clipdb.errors import ClipdbError

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (setpriv, chown)")


@pytest.fixture
def outer() -> Iterator[Path]:
    """A directory of the test's own that the server user may enter (0711, like /var/lib)."""
    base = Path(tempfile.mkdtemp(prefix="clipdb-sec-"))
    base.chmod(0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _fallback_socket_dir(home: Path) -> Path:
    """Where a home too long for home/run/.s.PGSQL.5432 puts its socket (computed as 0.1.0 did)."""
    digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"clipdb-{digest}"


def _long_home(outer: Path) -> Path:
    home = outer / ("h" * 90)
    assert len(str(home / "run" / ".s.PGSQL.5432")) > 100  # so the /tmp fallback is used
    return home


def _snapshot(path: Path) -> tuple[int, int, int, bool]:
    info = path.lstat()
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode), stat.S_ISLNK(info.st_mode)


def test_precreated_world_writable_socket_dir_is_refused_and_left_alone(outer: Path) -> None:
    home = _long_home(outer)
    planted = _fallback_socket_dir(home)
    planted.mkdir()
    try:
        planted.chmod(0o777)
        if os.geteuid() == 0:
            os.chown(planted, NOBODY, NOBODY)  # as another local user would have made it
        before = _snapshot(planted)
        message = refused_server(home)
        assert str(planted) in message and "refusing" in message
        assert _snapshot(planted) == before
        assert not list(planted.iterdir())  # no socket was put in it
    finally:
        shutil.rmtree(planted, ignore_errors=True)


def test_symlinked_socket_dir_is_refused_and_its_target_untouched(outer: Path) -> None:
    home = _long_home(outer)
    planted = _fallback_socket_dir(home)
    target = outer / "precious"
    target.mkdir()
    target.chmod(0o755)
    planted.symlink_to(target)
    try:
        before = _snapshot(target)
        message = refused_server(home)
        assert str(planted) in message and "not a directory" in message
        assert _snapshot(target) == before
        assert planted.is_symlink() and not list(target.iterdir())
    finally:
        planted.unlink()


@as_root
def test_private_parent_of_home_keeps_its_mode_and_is_named(outer: Path) -> None:
    private = outer / "priv"
    private.mkdir()
    private.chmod(0o700)
    home = private / "a" / "b" / "home"
    message = refused_server(home)
    assert f"cannot enter {private}," in message and "CLIPDB_HOME" in message
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert stat.S_IMODE(outer.stat().st_mode) == 0o711
    assert list(private.iterdir()) == []  # refused before creating anything


@pytest.fixture(scope="module")
def sec_server() -> Iterator[EmbeddedServer]:
    with own_server("clipdb-sec-srv-", migrate=False) as server:
        yield server


def _psql_as(server: EmbeddedServer, role: str, *, user: int | None) -> subprocess.CompletedProcess:
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
    command = [_bin("psql"), "-h", str(server.socket_dir), "-p", str(server.port), "-U", role,
               "-d", "postgres", "-XAtc", "SELECT current_user"]  # fmt: skip
    return subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=30)


def _leak_socket_dir(server: EmbeddedServer) -> None:
    # As if the directory had leaked: nobody can now reach the socket file itself.
    server.socket_dir.chmod(0o755)


@as_root
def test_other_local_user_cannot_be_superuser_even_with_the_socket(
    sec_server: EmbeddedServer,
) -> None:
    _leak_socket_dir(sec_server)
    try:
        for role in ("postgres", "clipdb_reader"):
            other = _psql_as(sec_server, role, user=NOBODY)
            assert other.returncode != 0, other.stdout
            assert "Peer authentication failed" in other.stderr, other.stderr
        owner = subprocess.run(
            [_bin("psql"), sec_server.url(database="postgres"), "-XAtc", "SELECT current_user"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert owner.stdout.strip() == "postgres", owner.stderr
    finally:
        sec_server.socket_dir.chmod(0o700)


@as_root
def test_trust_data_dir_from_0_1_0_is_switched_to_peer_in_place(
    sec_server: EmbeddedServer,
) -> None:
    pgdata = sec_server.home / "pgdata"
    hba = pgdata / "pg_hba.conf"
    hba.write_text("local all all trust\n")  # what initdb --auth=trust left
    subprocess.run(
        [_bin("pg_ctl"), "reload", "-D", str(pgdata)],
        check=True, capture_output=True, user="embedded_postgres",
    )  # fmt: skip
    _leak_socket_dir(sec_server)
    try:
        for _ in range(100):  # the reload lands a moment later
            if _psql_as(sec_server, "postgres", user=NOBODY).returncode == 0:
                break
            time.sleep(0.05)
        else:
            pytest.fail("precondition: trust lets nobody in")
        assert ensure_server(sec_server.home).pid == sec_server.pid  # upgraded while running
        assert "peer map=clipdb" in hba.read_text()
        assert "Peer authentication failed" in _psql_as(sec_server, "postgres", user=NOBODY).stderr
    finally:
        sec_server.socket_dir.chmod(0o700)
    # And a stopped one is upgraded before it starts.
    stop_server(sec_server.home)
    hba.write_text("local all all trust\n")
    restarted = ensure_server(sec_server.home)
    _leak_socket_dir(restarted)
    try:
        assert "Peer authentication failed" in _psql_as(restarted, "postgres", user=NOBODY).stderr
    finally:
        restarted.socket_dir.chmod(0o700)


@as_root
def test_server_runs_in_its_own_group_without_roots(sec_server: EmbeddedServer) -> None:
    server = ensure_server(sec_server.home)
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{server.pid}/status").read_text().splitlines()
    )
    uids, gids = status["Uid"].split(), status["Gid"].split()
    assert "0" not in uids and "0" not in gids, (uids, gids)
    assert "0" not in status["Groups"].split()


@as_root
def test_roots_default_home_is_one_the_server_user_can_enter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root's per-user dir is under /root (0700), which clipdb no longer opens up to 0755.
    monkeypatch.delenv("CLIPDB_HOME", raising=False)
    user_dir = tmp_path / "root-data-dir"
    monkeypatch.setattr(config.platformdirs, "user_data_dir", lambda name: str(user_dir))
    assert config.Settings.resolve().home == Path("/var/lib/clipdb")
    (user_dir / "pgdata").mkdir(parents=True)  # 0.1.0's database stays where it is
    assert config.Settings.resolve().home == user_dir


@as_root
def test_binaries_the_server_user_cannot_run_are_named_not_opened_up(outer: Path) -> None:
    from clipdb.db import embedded_access

    closed = outer / "site-packages"
    binary = closed / "embedded_postgres" / "pginstall" / "bin" / "postgres"
    binary.parent.mkdir(parents=True)
    binary.write_text("")
    binary.chmod(0o755)
    closed.chmod(0o700)
    user = embedded_access.server_user()
    assert user is not None
    with pytest.raises(ClipdbError, match=f"cannot run {binary}: {closed} is closed") as caught:
        embedded_access.check_reach(outer, binary, user)
    assert "\n" not in str(caught.value)
    assert stat.S_IMODE(closed.stat().st_mode) == 0o700
