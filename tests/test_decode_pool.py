"""The decode pool of ingest and the backfills: a worker that dies costs its file, not the run.

The workers are parked on a gate the test controls (a FIFO) and killed there, or kill
themselves on one file; the hooks reach the workers through their initializer, which the
pool takes from clipdb.decode.worker_init when it starts them.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from helpers import make_images

from clipdb import decode, files
from clipdb.ingest import ingest

GATE = "gate"  # beside the library: <tmp>/lib/deadly_0000.jpg -> <tmp>/gate/parked


def parking_worker_init() -> None:
    """In a worker: the pHash of a ``deadly`` file writes the worker's pid to the gate FIFO,
    then waits forever (for the test to kill it)."""
    decode.worker_init()
    hash_file = decode.phash_task

    def parked(path: str, max_pixels: int | None, found: files.FileStat | None = None) -> tuple:
        if os.path.basename(path).startswith("deadly"):
            with open(Path(path).parent.parent / GATE / "parked", "w") as gate:
                gate.write(str(os.getpid()))
            threading.Event().wait()
        return hash_file(path, max_pixels, found)

    decode.phash_task = parked  # the task is pickled by name: workers look it up here


def segfaulting_worker_init() -> None:
    """In a worker: reading the metadata of a ``deadly`` file ends in SIGSEGV."""
    from clipdb.ingest import backfill

    decode.worker_init()
    read = backfill._read

    def crashing(path: str, found: files.FileStat | None = None) -> object:
        if os.path.basename(path).startswith("deadly"):
            os.kill(os.getpid(), signal.SIGSEGV)
        return read(path, found)

    backfill._read = crashing  # type: ignore[assignment]


class Killer(threading.Thread):
    """SIGKILLs every worker that parks on the gate, until :meth:`stop`."""

    def __init__(self, gate: Path) -> None:
        super().__init__(daemon=True)
        gate.mkdir()
        self.fifo = gate / "parked"
        os.mkfifo(self.fifo)
        self.killed: list[int] = []
        self.start()

    def run(self) -> None:
        while True:
            with open(self.fifo) as gate:  # blocks until a worker (or stop) opens it
                pid = gate.read()
            if not pid:
                return
            self.killed.append(int(pid))
            os.kill(int(pid), signal.SIGKILL)

    def stop(self) -> None:
        with open(self.fifo, "w"):
            pass  # nothing written: the thread ends
        self.join()


def library(tmp_path: Path, database, encoder) -> tuple[list[Path], Path]:
    """20 good files and a deadly one, indexed (in this process, no hooks)."""
    good = make_images(tmp_path / "lib", 20)
    deadly = make_images(tmp_path / "lib", 1, seed=1, prefix="deadly")[0]
    run(tmp_path / "lib", database, encoder, workers=0)
    return good, deadly


def run(root: Path, database, encoder, **options):
    skips: list[tuple[str, str]] = []
    options.setdefault("workers", 2)
    options.setdefault("progress", False)
    options["on_skip"] = lambda path, reason: skips.append((path, reason))
    summary = ingest([str(root)], database=database, encoder=encoder, **options)
    return summary, skips


def column(database, sql: str) -> dict[str, object]:
    with database.connect() as conn:
        return dict(conn.execute(sql).fetchall())


def test_a_worker_killed_in_the_phash_backfill_is_a_remembered_skip(
    database, tiny_encoder, tmp_path, monkeypatch
):
    good, deadly = library(tmp_path, database, tiny_encoder)
    with database.connect() as conn:
        conn.execute("UPDATE clipdb.images SET phash = NULL")
        conn.commit()
    monkeypatch.setattr(decode, "worker_init", parking_worker_init)
    killer = Killer(tmp_path / GATE)
    try:
        summary, skips = run(tmp_path / "lib", database, tiny_encoder)
    finally:
        killer.stop()
    # Killed in the pool, then again when tried alone: the file is the culprit.
    assert len(killer.killed) == 2
    assert skips == [(str(deadly), files.KILLED)]
    assert summary.skipped == {files.KILLED: 1} and summary.new == summary.updated == 0
    hashes = column(database, "SELECT path, phash FROM clipdb.images")
    assert hashes[str(deadly)] is None
    assert all(hashes[str(path)] is not None for path in good)
    assert column(database, "SELECT path, reason FROM clipdb.skipped_files") == {
        str(deadly): files.KILLED
    }

    monkeypatch.undo()  # the file would hash now: a rerun must not try it
    again, skips = run(tmp_path / "lib", database, tiny_encoder)
    assert (again.known_bad, again.skipped, skips) == (1, {files.KILLED: 1}, [])
    assert column(database, "SELECT path, phash FROM clipdb.images")[str(deadly)] is None


def test_a_worker_crashing_in_the_metadata_backfill_is_a_remembered_skip(
    database, tiny_encoder, tmp_path, monkeypatch
):
    good, deadly = library(tmp_path, database, tiny_encoder)
    with database.connect() as conn:
        conn.execute("UPDATE clipdb.images SET metadata_version = NULL")
        conn.commit()
    monkeypatch.setattr(decode, "worker_init", segfaulting_worker_init)
    summary, skips = run(tmp_path / "lib", database, tiny_encoder)
    assert skips == [(str(deadly), files.CRASHED)]
    assert summary.metadata_read == len(good) and summary.skipped == {files.CRASHED: 1}
    versions = column(database, "SELECT path, metadata_version FROM clipdb.images")
    assert versions[str(deadly)] is None
    assert all(versions[str(path)] is not None for path in good)

    monkeypatch.undo()
    again, skips = run(tmp_path / "lib", database, tiny_encoder)
    assert (again.known_bad, again.metadata_read, skips) == (1, 0, [])
