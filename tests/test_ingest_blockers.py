"""Ingest never waits silently: sessions that hold up its index DDL are named (and ended when
they are the read-only role's), and a second ingest of a root waits for the first, saying so.

Waits are bounded by CLIPDB_LOCK_WAIT, made short here; a thread's deadline only keeps a
regression from hanging the suite (the old code waited for ever), it is never a timing check.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from helpers import TINY_MODEL

from clipdb.config import lock_wait_seconds
from clipdb.db import Database, blockers, ingest_lock
from clipdb.db.model_index import drop_model_index, model_index_state
from clipdb.db.registry import registered_model
from clipdb.errors import UsageError
from clipdb.ingest import bulk, ingest
from clipdb.ingest.__main__ import build_parser

DEADLINE_S = 120


class Runner:
    """``step`` in a thread: its result or error once joined."""

    def __init__(self, step: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = step()
            except BaseException as err:  # noqa: BLE001 - handed to the test
                self.error = err

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self) -> bool:
        self.thread.join(DEADLINE_S)
        return not self.thread.is_alive()


@contextmanager
def open_snapshot(url: str, *statements: str) -> Iterator[psycopg.Connection[Any]]:
    """A session that lifts its idle timeout and keeps a REPEATABLE READ snapshot open; ended
    on exit (so that a regression's waiting ingest is freed)."""
    conn = psycopg.connect(url, autocommit=True)
    pid = conn.info.backend_pid
    try:
        conn.execute("SET idle_in_transaction_session_timeout = 0")
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        for statement in statements:
            conn.execute(statement)
        yield conn
    finally:
        with psycopg.connect(url.replace("clipdb_reader@", "postgres@"), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        conn.close()


def reader_url(database: Database) -> str:
    return database.url.replace("postgres@", "clipdb_reader@", 1)


def alive(conn: psycopg.Connection[Any]) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


def said_lines(
    monkeypatch: pytest.MonkeyPatch, module: Any, marker: str
) -> tuple[list[str], threading.Event]:
    """Record what ``module`` says on stderr; the event is set once a line holds ``marker``."""
    lines: list[str] = []
    seen = threading.Event()
    original = module.say

    def say(line: str) -> None:
        lines.append(line)
        original(line)
        if marker in line:
            seen.set()

    monkeypatch.setattr(module, "say", say)
    return lines, seen


def index_state(database: Database, encoder: Any) -> tuple[bool, int]:
    with database.connect(autocommit=True) as conn:
        model = registered_model(conn, encoder.architecture, "none")
        assert model is not None
        return model_index_state(conn, model)


@pytest.fixture
def short_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPDB_LOCK_WAIT", "0.05")


@pytest.fixture
def indexed(database: Database, tiny_encoder, image_factory, tmp_path) -> Any:
    """Three images indexed, then the model's HNSW index gone (as an interrupted bulk run
    leaves it): the next ingest, with nothing to encode, builds it."""
    image_factory(tmp_path, 3)
    assert ingest([tmp_path], database=database, encoder=tiny_encoder, workers=0).new == 3
    with database.connect(autocommit=True) as conn:
        model = registered_model(conn, tiny_encoder.architecture, "none")
        assert model is not None
        drop_model_index(conn, model)
    return lambda **options: ingest(
        [tmp_path], database=database, encoder=tiny_encoder, workers=0, **options
    )


def test_reader_snapshot_is_ended_when_it_holds_up_an_index_build(
    database: Database, tiny_encoder, indexed, short_wait, capsys
) -> None:
    with open_snapshot(reader_url(database), "SELECT 1 FROM clipdb.models") as reader:
        pid = reader.info.backend_pid
        run = Runner(indexed)
        assert run.join(), "the index build waited for the reader"
        assert run.error is None and run.result.unchanged == 3
        assert not alive(reader)
    assert index_state(database, tiny_encoder) == (True, 3)
    err = capsys.readouterr().err
    assert f"building index images_hnsw_model_1 waited 0.05 s for pid {pid} (clipdb_reader, " in err
    assert "ending it (the read-only role)" in err


def test_reader_lock_is_ended_when_it_holds_up_the_bulk_drop(
    database: Database, tiny_encoder, image_factory, tmp_path, short_wait, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(bulk, "BULK_MIN_ROWS", 1)
    image_factory(tmp_path / "a", 3)
    assert ingest([tmp_path], database=database, encoder=tiny_encoder, workers=0).new == 3
    image_factory(tmp_path / "b", 3, seed=1)  # as many again: the bulk path drops the index
    with open_snapshot(reader_url(database), "SELECT count(*) FROM clipdb.images") as reader:
        run = Runner(lambda: ingest([tmp_path], database=database, encoder=tiny_encoder, workers=0))
        assert run.join(), "dropping the index waited for the reader"
        assert run.error is None and run.result.new == 3
        assert not alive(reader)
    assert index_state(database, tiny_encoder) == (True, 6)
    assert "dropping index images_hnsw_model_1 waited 0.05 s for pid" in capsys.readouterr().err


def test_own_role_session_is_named_not_ended(
    database: Database, tiny_encoder, indexed, short_wait, monkeypatch
) -> None:
    lines, named = said_lines(monkeypatch, blockers, "is waiting for pid")
    with open_snapshot(database.url, "SELECT 1 FROM clipdb.models") as own:
        pid = own.info.backend_pid
        run = Runner(indexed)
        while not named.is_set() and run.thread.is_alive():
            named.wait(0.05)
        assert named.is_set(), lines
        assert alive(own)  # still there: only named
        own.execute("COMMIT")  # the user ends it; the build goes on
        assert run.join() and run.error is None
    assert index_state(database, tiny_encoder) == (True, 3)
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"building index images_hnsw_model_1 is waiting for pid {pid} "
        "(postgres, in a transaction for "
    )
    assert lines[0].endswith("(or run ingest with --terminate-blockers to end it)")


def test_terminate_blockers_ends_a_session_of_any_role(
    database: Database, tiny_encoder, indexed, short_wait, capsys
) -> None:
    assert build_parser().parse_args(["x", "--terminate-blockers"]).terminate_blockers
    with open_snapshot(database.url, "SELECT 1 FROM clipdb.models") as own:
        run = Runner(lambda: indexed(terminate_blockers=True))
        assert run.join() and run.error is None
        assert not alive(own)
    assert index_state(database, tiny_encoder) == (True, 3)
    assert "ending it (--terminate-blockers)" in capsys.readouterr().err


def test_lock_wait_setting(monkeypatch) -> None:
    monkeypatch.delenv("CLIPDB_LOCK_WAIT", raising=False)
    assert lock_wait_seconds() == 30.0
    for bad in ("abc", "0", "-1", "nan", "inf"):
        monkeypatch.setenv("CLIPDB_LOCK_WAIT", bad)
        with pytest.raises(UsageError, match="CLIPDB_LOCK_WAIT"):
            lock_wait_seconds()


class GatedEncoder:
    """The real tiny encoder, parked at its first batch until released."""

    def __init__(self, inner: Any, entered: threading.Event, release: threading.Event) -> None:
        self._inner, self._entered, self._release = inner, entered, release

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _park(self) -> None:
        self._entered.set()
        assert self._release.wait(DEADLINE_S)

    def encode_images(self, pixels: Any) -> Any:
        self._park()
        return self._inner.encode_images(pixels)

    def start_encode_images(self, pixels: Any) -> Any:
        self._park()
        return self._inner.start_encode_images(pixels)


def test_second_ingest_of_a_root_waits_for_the_first_and_finds_its_rows(
    database: Database, tiny_encoder, image_factory, tmp_path, monkeypatch
) -> None:
    image_factory(tmp_path, 6)
    lines, waiting = said_lines(monkeypatch, ingest_lock, "waiting for another ingest")
    entered, release = threading.Event(), threading.Event()
    gated = GatedEncoder(tiny_encoder, entered, release)
    try:
        first = Runner(lambda: ingest([tmp_path], database=database, encoder=gated, workers=0))
        while not entered.is_set() and first.thread.is_alive():
            entered.wait(0.05)
        assert entered.is_set(), first.error  # the first holds the lock, parked before writing
        second = Runner(
            lambda: ingest([tmp_path], database=database, encoder=tiny_encoder, workers=0)
        )
        while not waiting.is_set() and second.thread.is_alive():
            waiting.wait(0.05)
    finally:
        release.set()
    assert first.join() and second.join()
    assert first.error is None and second.error is None
    assert waiting.is_set(), "the second ingest did not wait"
    assert (first.result.new, second.result.new, second.result.unchanged) == (6, 0, 6)
    assert lines == [
        f"waiting for another ingest of {tmp_path} with {TINY_MODEL}/none (pid {os.getpid()}) "
        "to finish"
    ]


def test_reader_holding_the_ingest_lock_is_ended(
    database: Database, tiny_encoder, image_factory, tmp_path, short_wait, capsys
) -> None:
    image_factory(tmp_path, 2)
    key = "hashtextextended('clipdb ingest' || chr(10) || %s || chr(10) || %s, 0)"
    with psycopg.connect(reader_url(database), autocommit=True) as reader:
        pid = reader.info.backend_pid
        reader.execute(f"SELECT pg_advisory_lock({key})", (f"{TINY_MODEL}/none", str(tmp_path)))
        run = Runner(lambda: ingest([tmp_path], database=database, encoder=tiny_encoder, workers=0))
        assert run.join() and run.error is None and run.result.new == 2
        assert not alive(reader)
    err = capsys.readouterr().err
    assert f"is held by pid {pid} (clipdb_reader, " in err and "which cannot ingest" in err
