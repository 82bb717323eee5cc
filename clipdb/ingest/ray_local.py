"""The local Ray cluster ``clipdb ingest --engine ray`` starts itself (no ``--ray-address``).

Left to its defaults Ray puts its session in ``/tmp/ray``, makes it and its ``logs/`` and
``runtime_resources/`` world-writable without the sticky bit (another user could delete
root's files there or plant a folder root's workers read), and its GCS, raylet and agents
listen on every interface. So the cluster clipdb starts:

- keeps its files under a directory only the caller can enter: ``CLIPDB_HOME/ray`` (0700,
  vetted like the home itself), or, when that path is too long for Ray's Unix sockets, a
  fresh ``mkdtemp`` (0700, removed afterwards; said on stderr). Ray chmods its own temp dir
  to 0777, so it gets a folder inside the private one, never the private one itself;
- is a loopback-only node: every process listens on 127.0.0.1 (checked after the start);
- has no dashboard.

A cluster given with ``--ray-address`` (or ``RAY_ADDRESS``) is its operator's to secure.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipdb.errors import ClipdbError

# Ray's longest Unix socket: TEMP/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store,
# at most 107 bytes on Linux; the session part is up to 64 bytes with a 7-digit pid.
SOCKET_PATH_LIMIT = 107
SESSION_SOCKET_LEN = len("/session_2026-12-07_15-58-39_481827_4194304/sockets/plasma_store")
RAY_TEMP_NAME = "t"  # what Ray gets (and makes 0777) inside the private directory
# Ray's switch for a single loopback node (its default on macOS and Windows).
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class PrivateTemp:
    """Where a cluster's files go: ``private`` (0700, the caller's) holds Ray's ``temp``."""

    private: Path
    temp: Path
    removable: bool  # a mkdtemp of this run's: removed when the cluster is shut down

    def remove(self) -> None:
        if self.removable:
            shutil.rmtree(self.private, ignore_errors=True)


def private_temp(home: Path) -> PrivateTemp:
    """``home/ray`` if Ray's sockets fit under it, else a fresh mkdtemp (said on stderr)."""
    from clipdb.db import safe_dir

    if len(str(home.expanduser() / "ray" / RAY_TEMP_NAME)) + SESSION_SOCKET_LEN > (
        SOCKET_PATH_LIMIT
    ):
        private = Path(tempfile.mkdtemp(prefix="clipdb-ray-"))  # 0700, made here
        print(
            f"Ray's session files go to {private} (removed at the end): CLIPDB_HOME "
            f"{home} is too long for Ray's socket paths",
            file=sys.stderr,
            flush=True,
        )
        return PrivateTemp(private, private / RAY_TEMP_NAME, removable=True)
    with safe_dir.safe_dir(home, "CLIPDB_HOME") as opened:
        private = safe_dir.private_subdir(opened, "ray")
    return PrivateTemp(private, private / RAY_TEMP_NAME, removable=False)


@contextmanager
def _loopback_node() -> Iterator[None]:
    """While Ray starts a node here: its address is 127.0.0.1, not the machine's.

    Ray reads the switch once at import, so its constant is set too; the variable reaches the
    processes it starts. Both are put back afterwards (the node keeps its address).
    """
    constants: Any = importlib.import_module("ray._private.ray_constants")
    saved_env, saved = os.environ.get(LOOPBACK_ENV), constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ENV] = "0"
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = saved_env


def start_local_cluster(ray: Any, home: Path, **init_options: Any) -> PrivateTemp:
    """``ray.init`` a new local cluster as described in the module docstring."""
    where = private_temp(home)
    try:
        with _loopback_node():
            context = ray.init(
                address="local",  # never a cluster found through files in a shared /tmp
                include_dashboard=False,
                _temp_dir=str(where.temp),
                **init_options,
            )
        node_ip = context.address_info.get("node_ip_address")
        if node_ip not in LOOPBACK_IPS:
            ray.shutdown()
            raise ClipdbError(
                f"Ray started its local cluster on {node_ip}, not 127.0.0.1; start one "
                "yourself and pass --ray-address"
            )
    except BaseException:
        where.remove()
        raise
    return where
