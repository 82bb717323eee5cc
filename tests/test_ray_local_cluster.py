"""The local Ray cluster ``--engine ray`` starts itself: files only the caller can reach,
every process on 127.0.0.1. A real Ray cluster, started and shut down by each test."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest
from helpers import TINY_MODEL, private_home

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from clipdb.ingest.ray_engine import RayEncoders  # noqa: E402
from clipdb.ingest.ray_local import private_temp  # noqa: E402

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _listening_addresses() -> set[str]:
    """The addresses this process and everything it started (GCS, raylet, agents, workers)
    listen on."""
    me = psutil.Process()
    pids = {me.pid, *(child.pid for child in me.children(recursive=True))}
    return {
        conn.laddr.ip
        for conn in psutil.net_connections(kind="inet")
        if conn.pid in pids and conn.status == psutil.CONN_LISTEN
    }


@pytest.mark.slow
def test_own_cluster_keeps_its_files_private_and_listens_on_loopback_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert not ray.is_initialized()
    with private_home("clipdb-test-ray-") as home:
        monkeypatch.setenv("CLIPDB_HOME", str(home))
        encoders = RayEncoders(
            TINY_MODEL, "none", address=None, gpus_per_worker=0, device="cpu",
            precision="fp32", max_pixels=None,
        )  # fmt: skip
        try:
            listening = _listening_addresses()
            private = home / "ray"
            info = private.stat() if private.is_dir() else None
            sessions = list(private.glob("*/session_2*"))
        finally:
            encoders.close()
    assert listening and listening <= LOOPBACK, listening
    # Ray makes its own temp dir and session folders 0777: inside a 0700 one of the caller's.
    assert info is not None and sessions, "Ray's files are not in CLIPDB_HOME/ray"
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()


def test_a_home_too_long_for_rays_sockets_gets_a_private_mkdtemp_and_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = Path(tempfile.gettempdir()) / ("h" * 80)
    where = private_temp(home)
    try:
        info = where.private.stat()
        assert where.private.parent == Path(tempfile.gettempdir())
        assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()
        assert where.temp.parent == where.private
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(where.private) in err and "too long" in err
        assert not home.exists()
    finally:
        where.remove()
    assert not where.private.exists()
