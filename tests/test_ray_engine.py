"""``clipdb ingest --engine ray``: decode + encode on Ray actors, rows written by the driver."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_MODEL, make_images, run_module
from ray_gate import FileGate

from clipdb.errors import ClipdbError
from clipdb.ingest import ingest

# Every test here starts or joins a Ray cluster: seconds each (the slow tier).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    """One in-process local cluster of 2 CPU slots (so 2 encoder actors) for this module."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def stored(database) -> dict[str, tuple]:
    """name -> (sha256, width, height, embedding) and how many rows there are per path."""
    with database.connect() as conn:
        result = conn.execute(
            "SELECT path, sha256, width, height, embedding FROM clipdb.images ORDER BY path"
        ).fetchall()
    return {
        path: (bytes(sha), width, height, np.asarray(emb.to_numpy(), np.float32))
        for path, sha, width, height, emb in result
    }


def row_counts(database) -> tuple[int, int]:
    with database.connect() as conn:
        return conn.execute("SELECT count(*), count(DISTINCT path) FROM clipdb.images").fetchone()


def kill_and_wait(actor) -> None:
    """ray.kill (which only asks), then wait until the actor is really gone."""
    ray.kill(actor)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray.get(actor.pid.remote(), timeout=10)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.02)
    raise AssertionError("the actor outlived ray.kill by a minute")


def ray_ingest(paths, database, **kwargs):
    kwargs.setdefault("on_skip", lambda path, reason: None)
    return ingest(
        [str(p) for p in paths],
        database=database,
        model=TINY_MODEL,
        pretrained="none",
        device="cpu",
        precision="fp32",
        progress=False,
        engine="ray",
        **kwargs,
    )


def test_ray_engine_stores_the_same_rows_as_local(ray_cluster, database, tiny_encoder, tmp_path):
    local_dir, ray_dir = tmp_path / "local", tmp_path / "ray"
    make_images(local_dir, 10)
    shutil.copytree(local_dir, ray_dir)
    ingest([str(local_dir)], database=database, encoder=tiny_encoder, workers=0, progress=False)
    summary = ray_ingest([ray_dir], database, batch_size=3)
    assert summary.new == 10
    rows = stored(database)
    for name in sorted(os.listdir(local_dir)):
        local, remote = rows[str(local_dir / name)], rows[str(ray_dir / name)]
        assert local[:3] == remote[:3]  # sha256, width, height
        # halfvec rows: float32 differences below 1e-6 may round to the next half (2**-10).
        np.testing.assert_allclose(remote[3], local[3], rtol=2**-10, atol=1e-5)
    with database.connect() as conn:  # the workers' pHash and metadata pass are stored too
        hashes = dict(conn.execute("SELECT path, phash::text FROM clipdb.images").fetchall())
        unread = conn.execute(
            "SELECT count(*) FROM clipdb.images WHERE metadata_version IS NULL"
        ).fetchone()
    assert all(hashes[str(ray_dir / n)] == hashes[str(local_dir / n)] for n in os.listdir(ray_dir))
    assert None not in hashes.values() and unread == (0,)
    assert ray_ingest([ray_dir], database).unchanged == 10  # same plan as local: nothing to do
    assert not ray.util.list_named_actors()  # the run's actors are gone


def test_ray_actors_decode_on_the_device_when_asked(ray_cluster, database, tiny_encoder, tmp_path):
    local_dir, ray_dir = tmp_path / "local", tmp_path / "ray"
    make_images(local_dir, 6)
    (local_dir / "cut.jpg").write_bytes((local_dir / "img_0000.jpg").read_bytes()[:400])
    shutil.copytree(local_dir, ray_dir)
    ingest([str(local_dir)], database=database, encoder=tiny_encoder, workers=0, progress=False)
    skips: list[str] = []
    summary = ray_ingest(
        [ray_dir], database, batch_size=4, decode="device", on_skip=lambda p, r: skips.append(p)
    )
    assert summary.new == 6 and skips == [str(ray_dir / "cut.jpg")]  # refused, then PIL said so
    rows = stored(database)
    for name in sorted(os.listdir(local_dir)):
        if name != "cut.jpg":
            local, remote = rows[str(local_dir / name)], rows[str(ray_dir / name)]
            assert local[:3] == remote[:3]
            assert float(np.dot(local[3], remote[3])) > 0.999


def test_killed_workers_then_a_rerun_index_every_image_once(ray_cluster, database, tmp_path):
    # 5 batches of 2 for the fixture's 2 actors. The gate lets the first batch through and
    # parks every later one: both actors wait inside a batch, the rest are queued here, when
    # the first batch's rows are committed. Then every actor is killed.
    count = 10
    make_images(tmp_path / "pics", count, size=(48, 36))
    gate = FileGate(tmp_path / "gate", passes=1)
    killed: list[str] = []

    def kill_when_parked() -> None:
        gate.wait(lambda: gate.parked() == 2 and row_counts(database)[0] == 2, "2 parked")
        # Every handle first: once one actor dies the ingest ends the others itself, and a
        # name looked up after that is gone.
        actors = {name: ray.get_actor(name) for name in ray.util.list_named_actors()}
        for name, actor in actors.items():
            kill_and_wait(actor)
            killed.append(name)

    with ThreadPoolExecutor(1) as pool, pytest.raises(ClipdbError) as failure:
        killer = pool.submit(kill_when_parked)
        ray_ingest(
            [tmp_path / "pics"], database, batch_size=2, ray_worker_class=gate.worker_class()
        )
    killer.result()  # its own failure (a timeout) first
    assert len(killed) == 2
    message = str(failure.value)
    assert "the Ray cluster failed" in message and "run again to finish" in message
    committed = int(message.split("; ")[-1].split(" image")[0])
    assert committed == 2 and row_counts(database) == (committed, committed)

    summary = ray_ingest([tmp_path / "pics"], database, batch_size=8)
    assert summary.new == count - committed and summary.unchanged == committed
    assert row_counts(database) == (count, count)


def test_engine_ray_without_ray_says_how_to_install(database, tmp_path):
    shim = tmp_path / "shim"
    (shim / "ray").mkdir(parents=True)
    (shim / "ray" / "__init__.py").write_text("raise ImportError('no ray here')\n")
    make_images(tmp_path / "pics", 2)
    env = {"PYTHONPATH": os.pathsep.join([str(shim), str(REPO)])}
    args = ["--model", TINY_MODEL, "--pretrained", "none"]
    result = run_module("clipdb.ingest", str(tmp_path / "pics"), "--engine", "ray", *args, env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: the Ray engine needs ray: pip install 'clipdb-pg[ray]'"
    ]
    assert row_counts(database) == (0, 0)
    usage = run_module(
        "clipdb.ingest", str(tmp_path / "pics"), "--ray-address", "127.0.0.1:1", *args, env=env
    )
    assert usage.returncode == 2 and "need --engine ray" in usage.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Joins the cluster as a driver and polls ray.nodes() until ``count`` nodes are alive.
_WAIT_FOR_NODES = """
import sys, time, ray
address, count = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 120
while True:
    try:  # the head's GCS may not listen yet
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        break
    except Exception:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
while sum(node["Alive"] for node in ray.nodes()) < count:
    if time.monotonic() > deadline:
        sys.exit(f"{count} node(s) not alive after 120 s: {ray.nodes()}")
    time.sleep(0.2)
"""


@contextlib.contextmanager
def _loopback_cluster(cpus_per_node: tuple[int, ...]) -> Iterator[tuple[str, dict[str, str], list]]:
    """Ray nodes on 127.0.0.1 (the first is the head): (address, env for clients, nodes)."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # Short: Ray's Unix sockets live under it. Its own dir: `ray stop` would end every Ray
    # process on the machine, so each node runs --block in a session of its own, ended alone.
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": temp}
    # A token of this test's own for head, worker and driver (not ~/.ray/auth_token, which
    # other Ray users of this machine may have made or may replace meanwhile).
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        for index, cpus in enumerate(cpus_per_node):
            where = (
                ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"]
                if index == 0
                else [f"--address={address}"]
            )
            nodes.append(subprocess.Popen(
                [ray_cli, "start", *where, "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
                 "--block"],
                env=env, start_new_session=True,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
            # The head's GCS must answer before a worker joins; the caller needs them all.
            alive = subprocess.run(
                [sys.executable, "-c", _WAIT_FOR_NODES, address, str(index + 1)],
                env=env, capture_output=True, text=True, timeout=180,
            )  # fmt: skip
            assert alive.returncode == 0, alive.stderr[-2000:]
        yield address, env, nodes
    finally:
        # SIGKILL: `ray start --block` leaves its GCS and raylet up on SIGTERM (30 s spent
        # waiting each time), and this throwaway cluster's files go with its temp dir.
        for node in reversed(nodes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _ingest_args(pics: Path, address: str) -> list[str]:
    return [
        "clipdb.ingest", str(pics), "--model", TINY_MODEL, "--pretrained", "none", "--device",
        "cpu", "--engine", "ray", "--ray-address", address, "--batch-size", "2", "--json",
    ]  # fmt: skip


# `clipdb ingest` with gated actors: the CLI's own flags, options and exit codes (run_command).
_GATED_DRIVER = """
import dataclasses, json, sys
sys.path.insert(0, {tests!r})
from ray_gate import gated_worker
from clipdb.cli import run_command
from clipdb.config import Settings
from clipdb.ingest import ingest
from clipdb.ingest.__main__ import build_parser, ingest_options
from pathlib import Path

def body(args):
    settings = Settings.from_args(args)
    gated = gated_worker(Path({gate!r}))
    options = dataclasses.replace(
        ingest_options(args, settings), ray_worker_class=gated, progress=False
    )
    print(json.dumps(ingest(args.paths, options, settings=settings).to_dict()), flush=True)
    return 0

sys.exit(run_command(build_parser(), sys.argv[1:], body))
"""


def test_head_and_worker_on_loopback(database, tmp_path):
    """A head and a worker node on 127.0.0.1 (two raylets), joined with --ray-address."""
    make_images(tmp_path / "pics", 8)
    with _loopback_cluster((1, 1)) as (address, env, _):
        result = run_module(*_ingest_args(tmp_path / "pics", address), env=env, timeout=240)
        assert result.returncode == 0, result.stderr
        assert '"new": 8' in result.stdout
        assert row_counts(database) == (8, 8)


def test_cluster_lost_mid_run_exits_1_and_a_rerun_finishes(database, tmp_path):
    """The whole cluster (head, GCS, raylet, actors) killed while the driver is writing: the
    ingest exits 1 with one line saying what was committed, and a run on a new cluster
    indexes every image exactly once."""
    # 5 batches of 2 for 2 actors: the first passes the gate, the others park (both actors
    # inside a batch, 2 batches queued in the driver) and the cluster dies then.
    count = 10
    make_images(tmp_path / "pics", count, size=(48, 36))
    gate = FileGate(tmp_path / "gate", passes=1)
    driver_script = _GATED_DRIVER.format(tests=str(REPO / "tests"), gate=str(gate.folder))
    with _loopback_cluster((2,)) as (address, env, nodes):
        args = _ingest_args(tmp_path / "pics", address)[1:]
        driver = subprocess.Popen(
            [sys.executable, "-c", driver_script, *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

        def parked() -> bool:
            assert driver.poll() is None, driver.communicate()
            return gate.parked() == 2 and row_counts(database)[0] == 2

        gate.wait(parked, "2 parked actors and the first batch committed")
        os.killpg(nodes[0].pid, signal.SIGKILL)  # every Ray process of the cluster at once
        try:
            _, err = driver.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            driver.kill()
            raise AssertionError("the driver hung after its cluster died") from None
    assert driver.returncode == 1, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    committed = row_counts(database)[0]
    assert committed == 2 and row_counts(database) == (committed, committed)
    assert f"{committed} image" in lines[0] and "run again" in lines[0], lines[0]
    with _loopback_cluster((2,)) as (address, env, _):
        result = run_module(*_ingest_args(tmp_path / "pics", address), env=env, timeout=240)
    assert result.returncode == 0, result.stderr
    assert row_counts(database) == (count, count)
