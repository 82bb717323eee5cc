"""Faults during ingest: kill -9, two ingesters at once, the database restarting mid-run.

Each test ends by comparing the table with a clean run's (same paths, bytes, sizes and
embeddings) and counts duplicates: rows lost or doubled would show. See docs/RELIABILITY.md.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import (
    TINY_MODEL,
    assert_same_rows,
    make_images,
    own_server,
    run_module,
    table,
)

from clipdb.db import Database
from clipdb.db.embedded import EmbeddedServer, ensure_server, stop_server
from clipdb.db.queries import search_vector
from clipdb.db.registry import list_models
from clipdb.ingest import __main__ as ingest_cli
from clipdb.ingest import ingest
from clipdb.ingest.writer import BatchWriter

IMAGES = 60
BATCH = 4
# The subprocesses encode exactly like the tiny_encoder fixture (no bf16 autodetection).
CLI_MODEL = ["--model", TINY_MODEL, "--pretrained", "none", "--device", "cpu",
             "--precision", "fp32", "--batch-size", str(BATCH), "--workers", "0"]  # fmt: skip
# python -m clipdb.ingest (the first argument: a pipe's file descriptor), holding its third
# batch's transaction open (rows written, before COMMIT) after saying so on the pipe, so that
# the test's kill -9 lands on an uncommitted batch.
HELD_COMMIT_INGEST = """\
import os, runpy, sys, threading
import clipdb.db.store as store
ready = int(sys.argv.pop(1))
upsert = store.upsert_images
calls = []
def held(*args):
    calls.append(upsert(*args))
    if len(calls) == 3:
        os.write(ready, b"held")
        threading.Event().wait()  # until killed
    return calls[-1]
store.upsert_images = held
runpy.run_module("clipdb.ingest", run_name="__main__", alter_sys=True)
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    make_images(tmp_path / "tree", IMAGES, size=(64, 48), seed=11)
    return tmp_path / "tree"


@pytest.fixture
def clean_run(pg_server, template_database, tiny_encoder, tree) -> Iterator[dict]:
    """The table one undisturbed ingest of ``tree`` gives, in a database of its own."""
    import psycopg

    name = f"clipdb_test_clean_{os.getpid()}"
    admin = pg_server.url(database="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_database}")
    reference = Database(url=pg_server.url(database=name))
    ingest([tree], database=reference, encoder=tiny_encoder, batch_size=BATCH, workers=0,
           progress=False)  # fmt: skip
    yield table(reference)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# --- 1. kill -9 mid-run ------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_mid_run_leaves_whole_batches_and_rerun_equals_clean_run(database, tree, clean_run):
    ready, ready_to_child = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-c", HELD_COMMIT_INGEST, str(ready_to_child), str(tree), *CLI_MODEL],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(ready_to_child,),
    )
    os.close(ready_to_child)  # the child's copy is the only writer: its exit reads as b""
    try:
        readable, _, _ = select.select([ready], [], [], 120)  # hang-guard only
        assert readable, "ingest never reached its third batch"
        if os.read(ready, 4) != b"held":
            pytest.fail(f"ingest exited before its third batch: {process.communicate()[1]!r}")
        os.kill(process.pid, signal.SIGKILL)  # batches 1-2 committed, batch 3 written, no COMMIT
        assert process.wait(10) == -signal.SIGKILL
    finally:
        os.close(ready)
        if process.poll() is None:
            process.kill()
        process.communicate()

    killed = table(database)
    assert len(killed) % BATCH == 0, "a partial batch was committed"
    assert len(killed) == 2 * BATCH, "the uncommitted batch was kept, or a committed one lost"
    for path, row in killed.items():  # each committed row is complete and correct
        assert row[:5] == clean_run[path][:5]
        # halfvec rows: float32 differences below 1e-6 may round to the next half (2**-10).
        np.testing.assert_allclose(row[5], clean_run[path][5], rtol=2**-10, atol=1e-5)

    result = run_module("clipdb.ingest", str(tree), *CLI_MODEL, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["new"], summary["unchanged"]) == (IMAGES - len(killed), len(killed))
    assert_same_rows(table(database), clean_run)


# --- 2. two ingesters and a search loop ---------------------------------------------------------


@pytest.mark.slow
def test_two_ingester_processes_with_searches_throughout_equal_one_clean_run(
    database, tree, clean_run
):
    # The searches start before the ingesters and end after them: the first has finished
    # before they start, the last began after they exited.
    first, ingested = threading.Event(), threading.Event()
    searches: list[int] = []
    failures: list[BaseException] = []
    query = np.random.default_rng(0).normal(size=32).astype(np.float32)

    def search_loop() -> None:
        seen = 0
        while True:
            last = ingested.is_set()
            try:
                with database.connect(autocommit=True) as conn:
                    total, distinct = conn.execute(
                        "SELECT count(*), count(DISTINCT path) FROM clipdb.images"
                    ).fetchone()
                    assert total == distinct, "a duplicate path was visible"
                    assert total >= seen, "rows disappeared"
                    seen = total
                    for model in list_models(conn):
                        hits = search_vector(conn, model, query, k=IMAGES)
                        assert len(hits) == len({h.image_path for h in hits})
                searches.append(total)
            except BaseException as err:  # noqa: BLE001
                failures.append(err)
                return
            finally:
                first.set()
            if last:
                return
            time.sleep(0.01)  # pacing only (leaves the CPUs to the ingesters); nothing waits on it

    searcher = threading.Thread(target=search_loop)
    searcher.start()
    assert first.wait(60), "the first search never finished"
    command = [sys.executable, "-m", "clipdb.ingest", str(tree), *CLI_MODEL, "--json"]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        outputs = [process.communicate(timeout=120) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        ingested.set()
        searcher.join(60)  # hang-guard only
    assert not searcher.is_alive(), "the last search never finished"
    assert not failures, failures
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
    summaries = [json.loads(out) for out, _ in outputs]
    assert all(s["skipped"] == {} for s in summaries)
    assert searches[0] == 0 and searches[-1] == IMAGES  # from before the first row to the end
    assert_same_rows(table(database), clean_run)


# --- 3. the database server restarts mid-ingest ---------------------------------------------


@pytest.fixture(scope="module")
def restart_server() -> Iterator[EmbeddedServer]:
    """An embedded server of these tests' own, so stopping it disturbs no other test."""
    with own_server("clipdb-restart-") as server:
        yield server


@pytest.fixture
def restartable(restart_server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch) -> Database:
    ensure_server(restart_server.home)
    database = Database(url=restart_server.url())
    with database.connect() as conn:
        conn.execute("TRUNCATE clipdb.images, clipdb.models CASCADE")
        conn.commit()
    monkeypatch.setenv("CLIPDB_DATABASE_URL", database.url)
    return database


class HeldEncoder:
    """The tiny encoder, holding its third batch until released (two are with the writer)."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = dataclasses.replace(encoder)
        self.reached, self.release = threading.Event(), threading.Event()
        self.calls = 0
        encode = encoder.encode_images

        def held(pixels: Any) -> Any:
            self.calls += 1
            if self.calls == 3:
                self.reached.set()
                self.release.wait(30)
            return encode(pixels)

        object.__setattr__(self.encoder, "encode_images", held)


def commits(monkeypatch: pytest.MonkeyPatch, batches: int) -> threading.Event:
    """An event set once the writer has committed ``batches`` batches (of any ingest)."""
    done, count = threading.Event(), itertools.count(1)
    write = BatchWriter._write

    def counted(self: BatchWriter, conn: Any, records: list) -> Any:
        conn = write(self, conn, records)  # returns after COMMIT
        if next(count) == batches:
            done.set()
        return conn

    monkeypatch.setattr(BatchWriter, "_write", counted)
    return done


def reconnect_tries(
    monkeypatch: pytest.MonkeyPatch, before: Callable[[int], None] = lambda attempt: None
) -> list[tuple[int, float]]:
    """(attempt, delay) of each reconnect try, as they come; ``before(attempt)`` runs in place
    of the back-off's sleep, so the test acts on each try instead of racing its delay."""
    tries: list[tuple[int, float]] = []

    def pause(self: BatchWriter, attempt: int, delay: float) -> None:
        tries.append((attempt, delay))
        before(attempt)

    monkeypatch.setattr(BatchWriter, "pause_before_reconnect", pause)
    return tries


def test_restart_mid_ingest_is_retried_and_loses_nothing(
    restartable, restart_server, tiny_encoder, tree, clean_run, monkeypatch
):
    committed = commits(monkeypatch, 2)

    def before(attempt: int) -> None:
        if attempt == 2:  # try 1 met the server down; try 2 is to find it up
            ensure_server(restart_server.home)

    tries = reconnect_tries(monkeypatch, before)
    held = HeldEncoder(tiny_encoder)
    outcome: list[Any] = []
    worker = threading.Thread(
        target=lambda: outcome.append(
            ingest(
                [tree],
                database=restartable,
                encoder=held.encoder,
                batch_size=BATCH,
                workers=0,
                progress=False,
            )  # fmt: skip
        )
    )
    worker.start()
    try:
        assert held.reached.wait(60), "the third batch never reached the encoder"
        assert committed.wait(60), "the first two batches were never committed"
        stop_server(restart_server.home)  # pg_ctl -m fast: every connection is cut
        held.release.set()  # batch 3 meets a dead connection and a server that is down
        worker.join(120)  # hang-guard only
        assert not worker.is_alive(), "the ingest never finished"
    finally:
        held.release.set()
        worker.join(120)
        ensure_server(restart_server.home)
    # Try 1 failed (else there would be no try 2) and try 2 worked (no try 3), each after the
    # default back-off of 1 s, then 2 s.
    assert tries == [(1, 1.0), (2, 2.0)]
    assert outcome and outcome[0].new == IMAGES
    assert_same_rows(table(restartable), clean_run)


def test_server_down_for_good_exits_1_with_one_line_and_rerun_completes(
    restartable, restart_server, tiny_encoder, tree, clean_run, monkeypatch, capsys
):
    committed = commits(monkeypatch, 2)
    tries = reconnect_tries(monkeypatch)  # no waiting: the server stays down throughout
    held = HeldEncoder(tiny_encoder)
    monkeypatch.setattr("clipdb.encoders.load_encoder", lambda *a, **k: held.encoder)
    codes: list[int] = []
    args = [str(tree), *CLI_MODEL, "--json"]
    worker = threading.Thread(target=lambda: codes.append(ingest_cli.main(args)))
    worker.start()
    try:
        assert held.reached.wait(60), "the third batch never reached the encoder"
        assert committed.wait(60), "the first two batches were never committed"
        stop_server(restart_server.home)
        held.release.set()
        worker.join(120)  # hang-guard only
        assert not worker.is_alive(), "the ingest never gave up"
    finally:
        held.release.set()
        worker.join(120)
        ensure_server(restart_server.home)
    assert tries == [(1, 1.0), (2, 2.0), (3, 4.0)]  # the default back-off, every try failed
    assert codes == [1]
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith("error: lost the database connection and 3 reconnects failed")
    assert captured.err.endswith("committed batches are kept, run again to finish\n")
    kept = table(restartable)
    assert len(kept) == 2 * BATCH  # the two committed batches survived the restart

    monkeypatch.setattr("clipdb.encoders.load_encoder", lambda *a, **k: tiny_encoder)
    assert ingest_cli.main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["new"], summary["unchanged"]) == (IMAGES - len(kept), len(kept))
    assert_same_rows(table(restartable), clean_run)
