"""Streaming standbys made by ``clipdb db replicate``: real primaries and standbys on this
machine (each in a private home, Unix sockets, peer auth), never a fake."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import TINY_MODEL, index_images, insert_rows, own_server, private_home, run_module
from helpers import unit_vectors as vectors_for

from clipdb.db import Database
from clipdb.db.embedded import EmbeddedServer, running_server
from clipdb.db.explain import nested_plans
from clipdb.db.queries import search_vector
from clipdb.db.registry import register_model
from clipdb.db.replica import replicate, wait_for_replicas
from clipdb.errors import ClipdbError

# Each test runs against a primary and a streaming standby (two servers): the slow tier.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[EmbeddedServer, EmbeddedServer]]:
    """A migrated primary and an asynchronous standby of it (module-wide: ~2 s to make)."""
    with own_server("clipdb-test-primary-") as primary, private_home("clipdb-test-sb-") as home:
        standby = replicate(Database(url=primary.url()), home)
        yield primary, standby


REPO = Path(__file__).resolve().parent.parent


def _run(home: Path, module: str, *args: str) -> tuple[int, str, str]:
    # This checkout's clipdb, whatever the working directory an earlier test left.
    env = {"CLIPDB_HOME": str(home), "PYTHONPATH": str(REPO)}
    result = run_module(module, *args, env=env)
    return result.returncode, result.stdout, result.stderr


def test_standby_answers_searches_with_the_models_hnsw_index(pair) -> None:
    primary, standby = pair
    with Database(url=primary.url()).connect() as conn:
        model, _, _ = insert_rows(conn, "replicated", 32, 1500, prefix="/r", seed=3)
        conn.execute("ANALYZE clipdb.images")
        conn.commit()
    wait_for_replicas(Database(url=primary.url()), standby.url())
    query = vectors_for(1, 32, seed=5)[0]
    with Database(url=standby.url()).connect(autocommit=True) as conn:
        plan = nested_plans(conn, lambda: search_vector(conn, model, query, 10, ef_search=40))
        assert f"Index Scan using {model.index_name}" in plan, plan
        on_standby = [hit.image_path for hit in search_vector(conn, model, query, 10)]
    with Database(url=primary.url()).connect(autocommit=True) as conn:
        on_primary = [hit.image_path for hit in search_vector(conn, model, query, 10)]
    assert on_standby == on_primary and len(on_standby) == 10


def test_new_image_is_found_through_the_read_url(pair, tiny_encoder, image_factory, tmp_path):
    primary, standby = pair
    [first, second] = image_factory(tmp_path / "imgs", 2, seed=11)
    index_images(Database(url=primary.url()), tiny_encoder, [first])
    code, out, err = _run(
        primary.home, "clipdb.ingest", str(second), "--model", TINY_MODEL, "--pretrained",
        "none", "--wait-replicas", "--read-database-url", standby.url(),
    )  # fmt: skip
    assert code == 0, err
    assert "replica(s) caught up" in err
    code, out, err = _run(
        primary.home, "clipdb.search", "--like", str(second.resolve()), "--json",
        "--read-database-url", standby.url(),
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)[0]["image_path"] == str(second.resolve())


def test_writes_and_upgrade_on_a_standby_are_refused(pair, image_factory, tmp_path) -> None:
    _, standby = pair
    [image] = image_factory(tmp_path, 1)
    code, _, err = _run(
        standby.home, "clipdb.ingest", str(image), "--model", TINY_MODEL, "--pretrained", "none"
    )
    assert code == 1
    assert err.strip().count("\n") == 0 and "read-only standby" in err, err
    code, _, err = _run(standby.home, "clipdb.db", "upgrade")
    assert code == 1
    assert err.strip().count("\n") == 0 and "read-only standby" in err, err
    code, out, err = _run(standby.home, "clipdb.db", "status")  # a read: no migration tried
    assert code == 0, err
    assert "role:      standby" in out


def test_status_shows_roles_and_lag(pair) -> None:
    primary, standby = pair
    code, out, err = _run(primary.home, "clipdb.db", "status", "--json")
    assert code == 0, err
    status = json.loads(out)
    assert status["role"] == "primary"
    [replica] = status["replication"]["replicas"]
    assert replica["state"] == "streaming" and replica["replay_lag_bytes"] is not None
    code, out, _ = _run(standby.home, "clipdb.db", "status", "--json")
    assert json.loads(out)["role"] == "standby"


def test_paused_replay_is_a_stale_read_until_resumed(pair) -> None:
    primary, standby = pair
    reader = Database(url=standby.url())
    with reader.connect(autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    try:
        with Database(url=primary.url()).connect() as conn:
            model = register_model(conn, "stale", "none", 16)
            conn.commit()
        with pytest.raises(ClipdbError, match="not caught up"):
            wait_for_replicas(Database(url=primary.url()), standby.url(), timeout=1)
        with reader.connect(autocommit=True) as conn:
            seen = conn.execute(
                "SELECT count(*) FROM clipdb.models WHERE id = %s", (model.model_id,)
            ).fetchone()
            assert seen == (0,)  # the stale read
            assert "replay PAUSED" in _run(standby.home, "clipdb.db", "status")[1]
    finally:
        with reader.connect(autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")
    wait_for_replicas(Database(url=primary.url()), standby.url())
    with reader.connect(autocommit=True) as conn:
        seen = conn.execute(
            "SELECT count(*) FROM clipdb.models WHERE id = %s", (model.model_id,)
        ).fetchone()
        assert seen == (1,)


def test_sync_standby_reads_its_writes_and_promotes() -> None:
    with own_server("clipdb-test-sync-") as primary, private_home("clipdb-test-sync-sb-") as home:
        code, out, err = _run(primary.home, "clipdb.db", "replicate", "--to", str(home), "--sync")
        assert code == 0, err
        standby_url = out.strip().splitlines()[-1]
        assert running_server(home) is not None
        with Database(url=primary.url()).connect() as conn:
            model, _, paths = insert_rows(conn, "sync", 16, 5, prefix="/s")
        # remote_apply: the commit returned only once the standby had applied it.
        with Database(url=standby_url).connect(autocommit=True) as conn:
            count = conn.execute(
                "SELECT count(*) FROM clipdb.images WHERE model_id = %s", (model.model_id,)
            ).fetchone()
            assert count == (5,)
        code, out, err = _run(home, "clipdb.db", "promote")
        assert code == 0, err
        with Database(url=standby_url).connect() as conn:  # now it takes writes
            insert_rows(conn, "after-promotion", 16, 3, prefix="/p")
        code, out, _ = _run(home, "clipdb.db", "status", "--json")
        assert json.loads(out)["role"] == "primary"


def test_replicate_refuses_a_non_empty_dir_and_leaves_it_alone(pair, tmp_path) -> None:
    primary, _ = pair
    (tmp_path / "keep.txt").write_text("mine")
    code, _, err = _run(primary.home, "clipdb.db", "replicate", "--to", str(tmp_path))
    assert code == 1
    assert "not an empty directory" in err and err.strip().count("\n") == 0
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_replicate_from_a_role_without_replication_or_a_dead_primary(pair, tmp_path) -> None:
    primary, _ = pair
    reader_url = primary.url().replace("postgres@", "clipdb_reader@")
    code, _, err = _run(
        primary.home, "clipdb.db", "replicate", "--to", str(tmp_path / "a"), "--from", reader_url
    )
    assert code == 1
    assert "role clipdb_reader has no REPLICATION privilege" in err, err
    assert str(primary.socket_dir) in err and err.strip().count("\n") == 0
    dead = "postgresql://postgres@127.0.0.1:1/clipdb"
    code, _, err = _run(
        primary.home, "clipdb.db", "replicate", "--to", str(tmp_path / "b"), "--from", dead
    )
    assert code == 1
    assert "127.0.0.1:1" in err and "refused" in err.lower(), err
    assert err.strip().count("\n") == 0
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_clipdb_api_reads_from_the_read_url(pair) -> None:
    from clipdb.api import ClipDB

    primary, standby = pair
    with Database(url=primary.url()).connect() as conn:
        insert_rows(conn, TINY_MODEL, 32, 3, prefix="/api")
    wait_for_replicas(Database(url=primary.url()), standby.url())
    db = ClipDB(TINY_MODEL, "none", database_url=primary.url(), read_database_url=standby.url())
    assert db.read_database.url == standby.url()
    assert db._searched_model().architecture == TINY_MODEL  # chosen on the standby
    assert ClipDB(TINY_MODEL, "none", database_url=primary.url()).read_database.url == (
        primary.url()
    )


def test_multi_host_read_url_picks_the_standby(pair, tmp_path) -> None:
    """A libpq multi-host read URL: the primary listed first, a dead host, then the standby;
    ``target_session_attrs=standby`` must land every read on the standby."""
    from clipdb.api import ClipDB

    primary, standby = pair
    dead = tmp_path / "no-server-here"
    dead.mkdir()
    user, rest = primary.url().split("://", 1)[1].split("@/", 1)
    name = rest.split("?", 1)[0]
    hosts = f"{primary.socket_dir},{dead},{standby.socket_dir}"
    ports = f"{primary.port},{primary.port},{standby.port}"
    url = (
        f"postgresql://{user}@/{name}?host={hosts}&port={ports}"
        "&target_session_attrs=standby&load_balance_hosts=disable&connect_timeout=5"
    )
    with Database(url=primary.url()).connect() as conn:
        insert_rows(conn, TINY_MODEL, 32, 3, prefix="/multi", seed=7)
    wait_for_replicas(Database(url=primary.url()), standby.url())
    with Database(url=url).connect(autocommit=True) as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        assert row is not None and row[0] is True
    db = ClipDB(TINY_MODEL, "none", database_url=primary.url(), read_database_url=url)
    assert db._searched_model().architecture == TINY_MODEL
    code, out, err = _run(
        primary.home, "clipdb.search", "--like", "/multi/img_00001.jpg", "--json", "-k", "3",
        "--model", TINY_MODEL, "--read-database-url", url,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)[0]["image_path"] == "/multi/img_00001.jpg"
