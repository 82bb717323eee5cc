"""A file's identity is the exact bytes of its name: a UTF-8 name that spells another name's
display form (``a\\xff.png``, a backslash then "xff", beside ``a<0xFF>.png``) is another file
in ingest, re-runs, moves, prune, ``--like``, ``--under``, skipped files and the export."""

from __future__ import annotations

import json
import os
from pathlib import Path

from helpers import TINY_MODEL, make_images

from clipdb.db import Database
from clipdb.db.registry import list_models, register_model
from clipdb.export import export_index, import_index
from clipdb.ingest import IngestSummary, ingest
from clipdb.search.__main__ import main as search_main

TINY = ["--model", TINY_MODEL, "--pretrained", "none"]


def run(paths, database, encoder, **kwargs) -> IngestSummary:
    kwargs.setdefault("workers", 0)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("on_skip", lambda path, reason: None)
    return ingest([str(p) for p in paths], database=database, encoder=encoder, **kwargs)


def look_alikes(directory: Path, content: list[bytes]) -> tuple[str, str]:
    """Two files in ``directory``: the UTF-8 name ``a\\xff.png`` and the name a<0xFF>.png."""
    directory.mkdir(parents=True, exist_ok=True)
    literal = str(directory / "a\\xff.png")
    raw = os.fsdecode(os.fsencode(str(directory)) + b"/a\xff.png")
    for name, data in zip((literal, raw), content, strict=True):
        with open(name, "wb") as handle:
            handle.write(data)
    return literal, raw


def pictures(tmp_path: Path, count: int, seed: int = 0) -> list[bytes]:
    return [p.read_bytes() for p in make_images(tmp_path / f"src{seed}", count, seed=seed)]


def rows(database: Database, table: str = "images") -> dict[bytes, int]:
    """Exact name bytes -> row id (0 for skipped files)."""
    column = "id" if table == "images" else "0"
    with database.connect() as conn:
        found = conn.execute(f"SELECT path, path_bytes, {column} FROM clipdb.{table}").fetchall()
    return {bytes(raw) if raw else path.encode(): row_id for path, raw, row_id in found}


def test_look_alike_names_are_two_rows_that_stay_unchanged_and_each_is_found_by_like(
    database, tiny_encoder, tmp_path, capsys
):
    literal, raw = look_alikes(tmp_path / "lib", pictures(tmp_path, 2))
    first = run([tmp_path / "lib"], database, tiny_encoder)
    assert (first.new, first.updated) == (2, 0)
    found = rows(database)
    assert sorted(found) == sorted([os.fsencode(literal), os.fsencode(raw)])
    again = run([tmp_path / "lib"], database, tiny_encoder)
    assert (again.new, again.updated, again.unchanged) == (0, 0, 2)
    assert rows(database) == found  # no row flipped to the other file
    for name in (literal, raw):
        assert search_main(["--like", name, "-k", "1", "--json", *TINY]) == 0
        (hit,) = json.loads(capsys.readouterr().out)
        assert hit["image_id"] == found[os.fsencode(name)]


def test_a_move_onto_a_look_alike_name_keeps_both_rows(database, tiny_encoder, tmp_path):
    first, second = pictures(tmp_path, 2)
    literal, raw = look_alikes(tmp_path / "lib", [first, second])
    os.rename(raw, tmp_path / "lib" / "b.png")
    assert run([tmp_path / "lib"], database, tiny_encoder).new == 2
    os.rename(tmp_path / "lib" / "b.png", raw)  # its content is now under the look-alike name
    summary = run([tmp_path / "lib"], database, tiny_encoder)
    assert (summary.moved, summary.new, summary.unchanged) == (1, 0, 1)
    assert sorted(rows(database)) == sorted([os.fsencode(literal), os.fsencode(raw)])


def test_under_and_prune_tell_look_alike_directories_apart(
    database, tiny_encoder, tmp_path, capsys
):
    literal_dir = tmp_path / "d\\xff"
    raw_dir = os.fsdecode(os.fsencode(str(tmp_path)) + b"/d\xff")
    (one,) = make_images(literal_dir, 1, seed=1)
    (other,) = make_images(Path(raw_dir), 1, seed=2)
    assert run([tmp_path], database, tiny_encoder).new == 2
    assert search_main(["--text", "x", "--under", str(literal_dir), "--json", *TINY]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["image_id"] for h in hits] == [rows(database)[os.fsencode(str(one))]]
    os.unlink(other)
    summary = run([tmp_path], database, tiny_encoder, prune=True)
    assert summary.pruned == 1
    assert list(rows(database)) == [os.fsencode(str(one))]


def test_look_alike_bad_files_are_two_remembered_skips(database, tiny_encoder, tmp_path):
    make_images(tmp_path / "lib", 1)  # so the model is registered
    literal, raw = look_alikes(tmp_path / "lib", [b"not an image", b"nor this"])
    skips: list[str] = []
    run([tmp_path / "lib"], database, tiny_encoder, on_skip=lambda p, r: skips.append(p))
    assert sorted(skips) == sorted([literal, raw])
    assert sorted(rows(database, "skipped_files")) == sorted(
        [os.fsencode(literal), os.fsencode(raw)]
    )


def test_export_keeps_exact_names_and_import_restores_them(database, tiny_encoder, tmp_path):
    (picture,) = pictures(tmp_path, 1)
    # Not UTF-8: an export once held only its display form, imported as another name.
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.jpg"
    Path(os.fsdecode(raw)).write_bytes(picture)
    run([os.fsdecode(raw)], database, tiny_encoder)
    assert list(rows(database)) == [raw]
    with database.connect() as conn:
        (model,) = list_models(conn)
        export_index(conn, model, tmp_path / "export.npz")
        conn.execute("DELETE FROM clipdb.images")
        conn.commit()
        import_index(conn, tmp_path / "export.npz")
        conn.commit()
    assert list(rows(database)) == [raw]


def test_rows_from_before_the_key_keep_their_identity_and_downgrade_keeps_one_look_alike(
    empty_database,
):
    from clipdb.db.migrate import downgrade, upgrade
    from clipdb.db.queries import file_rows

    upgrade(empty_database, "0007")
    raw = b"/lib/caf\xe9.png"
    with empty_database.connect() as conn:
        model = register_model(conn, "m", "none", 4)
        insert = (
            "INSERT INTO clipdb.images (model_id, path, path_bytes, sha256, size, mtime_ns,"
            " width, height, embedding) VALUES (%s, %s, %s, %s, 1, 1, 1, 1, '[1,0,0,0]')"
        )
        conn.execute(insert, (model.model_id, "/lib/ok.png", None, bytes(32)))
        conn.execute(insert, (model.model_id, "/lib/caf\\xe9.png", raw, bytes(32)))
        conn.commit()
    upgrade(empty_database)
    literal = "/lib/caf\\xe9.png"  # a UTF-8 name spelling the other's display form
    with empty_database.connect() as conn:
        found = file_rows(conn, model, ["/lib/ok.png", os.fsdecode(raw), literal])
        assert sorted(found) == sorted(["/lib/ok.png", os.fsdecode(raw)])
        conn.execute(insert, (model.model_id, literal, None, bytes(32)))
        conn.commit()
    assert sorted(rows(empty_database)) == sorted([b"/lib/ok.png", raw, literal.encode()])
    downgrade(empty_database, "0007")  # the old key holds one of the look-alikes
    with empty_database.connect() as conn:
        (count,) = conn.execute("SELECT count(*) FROM clipdb.images").fetchone()
    assert count == 2


def test_paths_null_gives_each_look_alike_its_own_bytes(
    database, tiny_encoder, tmp_path, capfdbinary
):
    literal, raw = look_alikes(tmp_path / "lib", pictures(tmp_path, 2))
    run([tmp_path / "lib"], database, tiny_encoder)
    for name in (literal, raw):
        assert search_main(["--like", name, "-k", "1", "--paths", "--null", *TINY]) == 0
        assert capfdbinary.readouterr().out == os.fsencode(name) + b"\0"
