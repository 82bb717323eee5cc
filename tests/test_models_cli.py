"""``clipdb models``: presets, the models side by side, the default stored in the database
(every client follows it: the CLI's policy, ClipDB, SQL with no ``model =>``), dropping one."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import psycopg
import pytest
from helpers import TINY_MODEL, insert_rows

from clipdb.config import Settings
from clipdb.db import Database
from clipdb.db.model_admin import default_model
from clipdb.db.registry import Model, register_model
from clipdb.models_cli.__main__ import main
from clipdb.search import choose_model

OTHER = "file:sha256:0123456789abcdef"  # the same architecture, other weights


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def two_models(database: Database, covered: int) -> tuple[Model, Model]:
    """TINY_MODEL with random weights on 6 files, and other weights on ``covered`` of them."""
    with database.connect() as conn:
        first, _, paths = insert_rows(conn, TINY_MODEL, 32, 6, prefix="/lib")
        second = register_model(conn, TINY_MODEL, OTHER, 32)
        conn.execute(
            "INSERT INTO clipdb.images (model_id, path, sha256, size, mtime_ns, width, height,"
            " embedding) SELECT %s, path, sha256, size, mtime_ns, width, height, embedding"
            " FROM clipdb.images WHERE model_id = %s AND path = ANY(%s)",
            (second.model_id, first.model_id, paths[:covered]),
        )
        conn.commit()
    return first, second


def sql_search_model(database: Database, role: str = "postgres") -> Any:
    """Which model's rows ``clipdb.search(query)`` answers from, no ``model =>`` given."""
    url = database.url.replace("postgres@", f"{role}@", 1)
    with Database(url=url).connect() as conn:
        query = np.ones(32, dtype=np.float32)
        row = conn.execute(
            "SELECT (clipdb.choose_model(NULL, NULL, %s, NULL)).pretrained, "
            "(SELECT count(*) FROM clipdb.search(%s, 3))",
            (32, query),
        ).fetchone()
    return row


def test_presets_name_open_clip_models_and_show_non_commercial_licences(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import open_clip

    code, out, _ = run(capsys, "presets", "--json")
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)}
    for name in ("ViT-B-32", "ViT-B-32-SigLIP2-256", "ViT-B-16-SigLIP2", "ViT-L-14"):
        assert name in rows
    assert rows["xlm-roberta-base-ViT-B-32"]["pretrained"] == "laion5b_s13b_b90k"
    assert rows["xlm-roberta-base-ViT-B-32"]["licence"] == "MIT"
    for row in rows.values():  # the names and tags are open_clip's own
        assert row["pretrained"] in open_clip.list_pretrained_tags_by_model(row["architecture"])
        assert row["dim"] == open_clip.get_model_config(row["architecture"])["embed_dim"]
        assert isinstance(row["cached"], bool)
    assert [r["name"] for r in rows.values() if not r["commercial_use"]] == [
        "nllb-clip-base-siglip"
    ]
    code, table, _ = run(capsys, "presets")
    assert "CC-BY-NC-4.0 (non-commercial)" in table


def test_default_is_refused_below_full_coverage_and_forced_says_what_is_missing(
    database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    two_models(database, covered=4)
    code, _, err = run(capsys, "default", f"{TINY_MODEL}/{OTHER}")
    assert code == 1
    assert "covers 4 of 6 files (2 missing)" in err and "--force" in err
    assert "Traceback" not in err
    code, out, err = run(capsys, "default", f"{TINY_MODEL}/{OTHER}", "--force")
    assert code == 0, err
    assert "searches will miss 2 of 6 files" in err
    assert "/lib/img_00004.jpg" in err and "/lib/img_00005.jpg" in err
    assert f"default model: {TINY_MODEL}/{OTHER}" in out


def test_every_client_follows_the_stored_default(
    database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    two_models(database, covered=6)
    settings = Settings.resolve(database_url=database.url, model=None)
    # Before: two weights of one architecture, neither the standard ones: SQL cannot pick.
    with pytest.raises(psycopg.errors.RaiseException, match="several clipdb models match"):
        sql_search_model(database)
    code, _, err = run(capsys, "default", f"{TINY_MODEL}/{OTHER}")
    assert code == 0, err
    assert sql_search_model(database) == (OTHER, 3)
    assert sql_search_model(database, "clipdb_reader") == (OTHER, 3)  # readers see it too
    with database.connect() as conn:
        assert choose_model(conn, settings).pretrained == OTHER
        named = Settings.resolve(database_url=database.url, model=TINY_MODEL, pretrained="none")
        assert choose_model(conn, named).pretrained == "none"  # a named model still wins
    from clipdb import ClipDB

    assert ClipDB(database_url=database.url)._searched_model().pretrained == OTHER


def test_list_shows_coverage_index_and_default(
    database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    two_models(database, covered=3)
    code, out, _ = run(capsys, "--json")
    assert code == 0
    rows = {row["pretrained"]: row for row in json.loads(out)}
    assert (rows["none"]["covered"], rows["none"]["known_files"]) == (6, 6)
    assert (rows[OTHER]["covered"], rows[OTHER]["coverage_percent"]) == (3, 50.0)
    assert rows["none"]["index_bytes"] > 0 and rows["none"]["last_ingest"]
    assert not any(row["default"] for row in rows.values())
    code, table, _ = run(capsys)
    assert "3 of 6 (50%)" in table and "no default stored" in table


def test_drop_asks_then_deletes_rows_index_and_default(
    database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = two_models(database, covered=6)
    assert run(capsys, "default", f"{TINY_MODEL}/{OTHER}")[0] == 0
    code, _, err = run(capsys, "drop", f"{TINY_MODEL}/{OTHER}")  # stdin is not a terminal
    assert code == 2 and "pass --yes" in err
    code, out, _ = run(capsys, "drop", f"{TINY_MODEL}/{OTHER}", "--yes")
    assert (code, out) == (0, f"dropped {TINY_MODEL}/{OTHER}: 6 images\n")
    with database.connect() as conn:
        assert default_model(conn) is None
        left = conn.execute("SELECT DISTINCT model_id FROM clipdb.images").fetchall()
        index = conn.execute("SELECT to_regclass(%s)", (f"clipdb.{second.index_name}",))
        assert (left, index.fetchone()) == ([(first.model_id,)], (None,))
    code, _, err = run(capsys, "drop", "nonsense", "--yes")
    assert code == 1 and "no model nonsense" in err


def test_top_roots_keep_only_the_topmost_folders() -> None:
    from clipdb.ingest.all_roots import top_roots

    folders = ["/a", "/a/b", "/a/b/c", "/ab", "/data/x", "/data/x/y", "/data/z"]
    assert top_roots(folders) == ["/a", "/ab", "/data/x", "/data/z"]


@pytest.mark.slow
def test_ingest_all_indexes_every_known_root_with_a_new_model_and_keeps_an_offline_one(
    database: Database, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from helpers import TINY_WIDE_MODEL, make_images

    from clipdb.ingest.__main__ import main as ingest_main

    tiny = ["--model", TINY_MODEL, "--pretrained", "none", "--backend", "torch"]
    wide = ["--model", TINY_WIDE_MODEL, "--pretrained", "none", "--backend", "torch"]
    make_images(tmp_path / "one", 3)
    make_images(tmp_path / "two" / "deep", 2, seed=1)
    for root in ("one", "two"):
        assert ingest_main([str(tmp_path / root), *tiny]) == 0
    assert main(["default", f"{TINY_MODEL}/none"]) == 0
    capsys.readouterr()
    # Searches keep the default model while the new one covers part of the library.
    assert ingest_main([str(tmp_path / "one"), *wide]) == 0
    with database.connect() as conn:
        assert choose_model(conn, Settings.resolve(database_url=database.url)).dim == 32
    capsys.readouterr()
    moved = shutil.move(tmp_path / "two", tmp_path / "unplugged")
    assert ingest_main(["--all", *wide]) == 1  # a root was not reachable
    err = capsys.readouterr().err
    assert f"[1/2] {tmp_path / 'one'}" in err
    assert f"[2/2] {tmp_path / 'two' / 'deep'}: not reachable; skipped, rows kept" in err
    assert "make it the default" not in err  # 3 of 5 files
    with database.connect() as conn:
        counts = conn.execute(
            "SELECT m.dim, count(*) FROM clipdb.images i JOIN clipdb.models m "
            "ON m.id = i.model_id GROUP BY m.dim"
        ).fetchall()
    rows = dict(counts)
    assert rows == {32: 5, 48: 3}  # nothing pruned
    shutil.move(moved, tmp_path / "two")
    assert ingest_main(["--all", *wide, "--json"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["new"] for line in out.splitlines()] == [0, 2]  # resumed
    suggestion = "now covers all 5 files; make it the default for every client: clipdb models"
    assert f"{suggestion} default {TINY_WIDE_MODEL}/none" in err
    assert ingest_main(["--all", str(tmp_path)]) == 2


@pytest.mark.slow
def test_help_and_presets_import_nothing_heavy() -> None:
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from clipdb.__main__ import main\n"
        "codes = [main(['models', '--help']), main(['models', 'presets'])]\n"
        "heavy = sorted(m for m in ('torch', 'open_clip', 'fastapi') if m in sys.modules)\n"
        "print('HEAVY', heavy, 'CODES', codes, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert "HEAVY [] CODES [0, 0]" in result.stderr, result.stderr
    assert "usage: clipdb models" in result.stdout


@pytest.mark.slow
def test_plain_ingest_encodes_with_the_stored_default(
    database: Database, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers import TINY_WIDE_MODEL, make_images

    from clipdb.ingest.__main__ import main as ingest_main

    make_images(tmp_path / "old", 2)
    wide = ["--model", TINY_WIDE_MODEL, "--pretrained", "none", "--backend", "torch"]
    assert ingest_main([str(tmp_path / "old"), *wide]) == 0
    assert main(["default", f"{TINY_WIDE_MODEL}/none"]) == 0
    make_images(tmp_path / "new", 1, seed=3)
    assert ingest_main([str(tmp_path / "new"), "--backend", "torch"]) == 0  # no model named
    with database.connect() as conn:
        dims = conn.execute(
            "SELECT DISTINCT m.dim FROM clipdb.images i JOIN clipdb.models m ON m.id = i.model_id"
        ).fetchall()
    assert dims == [(48,)]  # the default covers the new file; ViT-B-32 was never loaded
    from clipdb import ClipDB

    assert ClipDB(database_url=database.url, backend="torch").encoder.dim == 48  # as ingest
