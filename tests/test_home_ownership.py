"""Another local user and clipdb's own files: CLIPDB_HOME and a standby's ``--to``.

clipdb (often root) creates and locks files there; a directory another user controls (theirs,
writable by them, or reached through a link of theirs) could point those at any file. Each
test makes a real second account (helpers.other_user) and plants what that user could.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import other_user, refused_server, run_module

from clipdb.db import Database
from clipdb.db.embedded import EmbeddedServer, stop_server
from clipdb.errors import ClipdbError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (useradd, chown)")
REPO = Path(__file__).resolve().parent.parent
SECRET = "root's secret\n"


@pytest.fixture
def outer() -> Iterator[Path]:
    """A directory of root's that the server user may enter (0711, like /var/lib)."""
    base = Path(tempfile.mkdtemp(prefix="clipdb-own-"))
    base.chmod(0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def mallory() -> Iterator[Any]:
    with other_user() as entry:
        yield entry


@pytest.fixture
def victim(outer: Path) -> Path:
    """A root-only file another user would like truncated."""
    path = outer / "victim"
    path.write_text(SECRET)
    path.chmod(0o600)
    return path


def _plant_link(link: Path, target: Path, owner: Any) -> None:
    link.symlink_to(target)
    os.lchown(link, owner.pw_uid, owner.pw_gid)


def _their_dir(path: Path, owner: Any) -> Path:
    path.mkdir()
    path.chmod(0o755)
    os.chown(path, owner.pw_uid, owner.pw_gid)
    return path


def test_home_of_another_user_is_refused_and_its_links_not_followed(
    outer: Path, mallory: Any, victim: Path
) -> None:
    home = _their_dir(outer / "h", mallory)
    appeared = outer / "made-by-root"
    _plant_link(home / ".write-test", victim, mallory)
    _plant_link(home / "server.lock", appeared, mallory)
    try:
        result = run_module(
            "clipdb.db", "url", env={"CLIPDB_HOME": str(home), "PYTHONPATH": str(REPO)}
        )
    finally:
        stop_server(home)
    assert result.returncode == 1, result.stdout
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"refusing CLIPDB_HOME {home}" in result.stderr
    assert mallory.pw_name in result.stderr
    assert victim.read_text() == SECRET
    assert not appeared.exists()
    assert sorted(os.listdir(home)) == [".write-test", "server.lock"]


def test_home_writable_by_other_users_isrefused_server(outer: Path) -> None:
    home = outer / "h"
    home.mkdir()
    home.chmod(0o777)  # like /tmp, but without the sticky bit
    message = refused_server(home)
    assert "writable by other users (mode 0777)" in message
    assert os.listdir(home) == []


def test_links_in_a_home_of_ones_own_are_not_followed(outer: Path, victim: Path) -> None:
    # Root's own home, with links left in it (say, by an earlier attack): clipdb writes no
    # probe file any more, and opens server.lock without following a link.
    home = outer / "h"
    home.mkdir(mode=0o711)
    appeared = outer / "made-by-root"
    (home / ".write-test").symlink_to(victim)
    (home / "server.lock").symlink_to(appeared)
    message = refused_server(home)
    assert f"{home / 'server.lock'}" in message and "symbolic link" in message
    assert victim.read_text() == SECRET
    assert not appeared.exists()
    assert not (home / "pgdata").exists()


@pytest.mark.parametrize("planted", ["link", "folder"])
def test_another_users_link_or_folder_on_the_way_isrefused_server(
    outer: Path, mallory: Any, planted: str
) -> None:
    real = outer / "real"
    real.mkdir(mode=0o711)
    if planted == "link":
        # Root meant outer/real; the link is theirs, so they can point it elsewhere later.
        _plant_link(outer / "way", real, mallory)
    else:
        _their_dir(outer / "way", mallory)  # they can rename whatever root makes in it
    message = refused_server(outer / "way" / "home")
    assert f"{outer / 'way'}" in message and mallory.pw_name in message
    assert os.listdir(real) == []
    if planted == "folder":
        assert os.listdir(outer / "way") == []


def test_replicate_to_a_folder_of_another_user_isrefused_server(
    pg_server: EmbeddedServer, outer: Path, mallory: Any
) -> None:
    from clipdb.db.replica import replicate

    target = _their_dir(outer / "standby", mallory)
    try:
        with pytest.raises(ClipdbError) as caught:
            replicate(Database(url=pg_server.url()), target)
    finally:
        stop_server(target)
    message = str(caught.value)
    assert "\n" not in message and f"refusing --to {target}" in message
    assert mallory.pw_name in message
    assert os.listdir(target) == []
