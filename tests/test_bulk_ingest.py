"""The bulk write path (clipdb.ingest.bulk): big runs write without the HNSW index and build
it once at the end; small runs keep upserting into the live index."""

from __future__ import annotations

import os

from helpers import insert_rows, unit_vectors

from clipdb.db import Database
from clipdb.db.model_index import drop_model_index, model_index_state
from clipdb.db.queries import search_vector
from clipdb.db.registry import register_model
from clipdb.ingest import bulk, ingest


def _index_oid(database: Database, name: str) -> int | None:
    with database.connect(autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass(%s)::oid", (f"clipdb.{name}",)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def test_switch_point() -> None:
    assert bulk.use_bulk(2000, 0)  # a first load
    assert bulk.use_bulk(500_000, 1_000_000)  # a backfill of half again
    assert bulk.use_bulk(250_000, 1_000_000)  # 2.5x the measured break-even (0.1 E)
    assert not bulk.use_bulk(200_000, 1_000_000)
    assert not bulk.use_bulk(100_000, 1_000_000)  # an everyday run
    assert not bulk.use_bulk(500, 0)  # too few for the DDL to matter


def test_first_load_goes_bulk_and_leaves_a_valid_index(
    database: Database, tiny_encoder, image_factory, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(bulk, "BULK_MIN_ROWS", 1)
    image_factory(tmp_path, 5)
    summary = ingest([tmp_path], database=database, encoder=tiny_encoder)
    assert summary.new == 5
    assert "bulk load: 5 new rows into 0" in capsys.readouterr().err
    with database.connect(autocommit=True) as conn:
        model = register_model(conn, tiny_encoder.architecture, "none", tiny_encoder.dim)
        assert model_index_state(conn, model) == (True, 5)


def test_small_run_keeps_the_live_index_and_a_lost_index_is_rebuilt(
    database: Database, tiny_encoder, image_factory, tmp_path, capsys
) -> None:
    with database.connect() as conn:
        model, _, _ = insert_rows(conn, tiny_encoder.architecture, tiny_encoder.dim, 100)
    before = _index_oid(database, model.index_name)
    image_factory(tmp_path, 3)
    assert ingest([tmp_path], database=database, encoder=tiny_encoder).new == 3
    assert "bulk load" not in capsys.readouterr().err
    assert _index_oid(database, model.index_name) == before  # never dropped
    # An interrupted bulk run leaves no index; the next run, with nothing to encode, heals it.
    with database.connect(autocommit=True) as conn:
        drop_model_index(conn, model)
        assert model_index_state(conn, model) == (False, 103)
    assert ingest([tmp_path], database=database, encoder=tiny_encoder).new == 0
    with database.connect(autocommit=True) as conn:
        assert model_index_state(conn, model) == (True, 103)


def test_exact_scan_while_the_index_is_missing_is_correct(database: Database) -> None:

    with database.connect() as conn:
        model, vectors, paths = insert_rows(conn, "exact", 16, 300, seed=4)
    query = unit_vectors(1, 16, seed=8)[0]
    with database.connect(autocommit=True) as conn:
        drop_model_index(conn, model)
        hits = search_vector(conn, model, query, 10)
    expected = [paths[i] for i in (vectors @ query).argsort()[::-1][:10]]
    assert [hit.image_path for hit in hits] == expected


def test_rebuild_raises_maintenance_work_mem_to_fit_the_graph(database, monkeypatch) -> None:
    from clipdb.db import model_index

    with database.connect() as conn:
        model, _, _ = insert_rows(conn, "mwm-model", 16, 20, prefix="/mwm")
        conn.commit()
    # 20 rows at a pretend 100 MB each: a 2.2 GB graph, over the server's 1 GB default.
    monkeypatch.setattr(model_index, "BUILD_BYTES_PER_ROW_BASE", 100 * 2**20)
    cap = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    with database.connect(autocommit=True) as conn:
        before = conn.execute("SELECT setting::bigint FROM pg_settings WHERE name = %s",
                              ("maintenance_work_mem",)).fetchone()[0]  # fmt: skip
        model_index.build_model_index(conn, model)
        after = conn.execute("SELECT setting::bigint FROM pg_settings WHERE name = %s",
                             ("maintenance_work_mem",)).fetchone()[0]  # fmt: skip
        assert model_index.model_index_state(conn, model) == (True, 20)
    wanted = min(20 * (100 * 2**20 + 32) * 11 // 10, cap) // 1024
    assert after == max(before, wanted) and after > before
    monkeypatch.setattr(model_index, "BUILD_BYTES_PER_ROW_BASE", 1)  # tiny: never lowered
    with database.connect(autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '64MB'")
        model_index.build_model_index(conn, model)
        assert conn.execute("SHOW maintenance_work_mem").fetchone()[0] == "64MB"
