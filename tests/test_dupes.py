"""clipdb dupes: pHash at ingest and backfill, tiers, keep-best, output, the move script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_MODEL
from PIL import Image

from clipdb import phash
from clipdb.db.registry import models_with_rows
from clipdb.dupes import find_duplicates
from clipdb.dupes.__main__ import main as dupes_main
from clipdb.dupes.script import quote
from clipdb.ingest import ingest

MODEL_ARGS = ["--model", TINY_MODEL, "--pretrained", "none"]


def run_ingest(database, encoder, root, **kwargs):
    return ingest([str(root)], database=database, encoder=encoder, workers=0, progress=False,
                  **kwargs)  # fmt: skip


def run_dupes(capsys, *args):
    code = dupes_main([*args, *MODEL_ARGS])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def photo(path: Path, seed: int = 0, size=(160, 120)) -> Path:
    """A smooth random picture (low frequencies dominate, like a photo)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path, quality=92)
    return path


def test_phash_keeps_copies_close_and_unrelated_pictures_far(tmp_path):
    original = Image.open(photo(tmp_path / "a.jpg"))
    half = original.resize((80, 60), Image.Resampling.LANCZOS)
    original.save(tmp_path / "q40.jpg", quality=40)
    requality = Image.open(tmp_path / "q40.jpg")
    other = Image.open(photo(tmp_path / "b.jpg", seed=1))
    base = phash.phash(original)
    assert phash.distance(base, phash.phash(half)) <= 4
    assert phash.distance(base, phash.phash(requality)) <= 4
    assert phash.distance(base, phash.phash(other)) > 12
    assert -(2**63) <= base < 2**63  # fits bigint::bit(64)


def make_library(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    big = photo(root / "big.png", seed=3, size=(320, 240))
    paths = {"big": big}
    paths["copy"] = root / "copy of big.png"
    shutil.copyfile(big, paths["copy"])
    (root / "sub").mkdir()
    paths["small"] = root / "sub" / "small.jpg"
    Image.open(big).resize((160, 120), Image.Resampling.LANCZOS).save(paths["small"], quality=80)
    paths["other"] = photo(root / "other.jpg", seed=9)
    return paths


def test_ingest_stores_phash_and_groups_exact_and_near_copies_keeping_the_biggest(
    database, tiny_encoder, tmp_path, capsys
):
    paths = make_library(tmp_path / "lib")
    run_ingest(database, tiny_encoder, tmp_path / "lib")
    with database.connect() as conn:
        hashes = conn.execute("SELECT count(*) FROM clipdb.images WHERE phash IS NULL").fetchone()
        assert hashes == (0,)
        model = models_with_rows(conn)[0]
        result = find_duplicates(conn, model, tiers=("exact", "near"))
    assert len(result.groups) == 1
    group = result.groups[0]
    assert group.tier == "near"
    assert {m.image_path for m in group.images} == {str(paths[k]) for k in ("big", "copy", "small")}
    # most pixels, then most bytes, then the shortest path: big.png over its byte copy
    assert group.kept.image_path == str(paths["big"])
    code, out, _ = run_dupes(capsys, "--json", "--tier", "exact")
    assert code == 0
    groups = json.loads(out)
    assert [g["tier"] for g in groups] == ["exact"]
    assert {m["keep"] for m in groups[0]["images"]} == {True, False}
    assert set(groups[0]["images"][0]) >= {"image_path", "image_id", "width", "height", "size",
                                           "keep", "distance"}  # fmt: skip
    code, out, _ = run_dupes(capsys, "--csv", "--tier", "exact,near")
    assert code == 0 and out.splitlines()[0].startswith("group,tier,image_path")
    assert len(out.splitlines()) == 4
    code, out, _ = run_dupes(capsys, "--tier", "near")
    assert code == 0 and "keep" in out and "small.jpg" in out


def test_rows_from_before_phash_get_it_without_reencoding(database, tiny_encoder, tmp_path):
    make_library(tmp_path / "lib")
    run_ingest(database, tiny_encoder, tmp_path / "lib")
    with database.connect() as conn:
        before = conn.execute(
            "SELECT path, embedding::text, phash::text FROM clipdb.images ORDER BY path"
        ).fetchall()
        conn.execute("UPDATE clipdb.images SET phash = NULL")
        conn.commit()

    class NoEncoding:
        def __getattr__(self, name):
            return getattr(tiny_encoder, name)

        def encode_images(self, *_):
            raise AssertionError("the backfill must not encode")

    summary = run_ingest(database, NoEncoding(), tmp_path / "lib")
    assert summary.new == summary.updated == 0
    with database.connect() as conn:
        after = conn.execute(
            "SELECT path, embedding::text, phash::text FROM clipdb.images ORDER BY path"
        ).fetchall()
    assert after == before  # embeddings byte-identical, hashes equal to ingest's


def test_hash_backfill_in_worker_processes(database, tiny_encoder, tmp_path):
    """Enough hashless rows for the backfill's process pool (16+): every hash comes back."""
    from helpers import make_images

    make_images(tmp_path / "many", 20)
    run_ingest(database, tiny_encoder, tmp_path / "many")
    with database.connect() as conn:
        before = conn.execute(
            "SELECT path, phash::text FROM clipdb.images ORDER BY path"
        ).fetchall()
        conn.execute("UPDATE clipdb.images SET phash = NULL")
        conn.commit()
    ingest([str(tmp_path / "many")], database=database, encoder=tiny_encoder, workers=1,
           progress=False)  # fmt: skip
    with database.connect() as conn:
        after = conn.execute("SELECT path, phash::text FROM clipdb.images ORDER BY path").fetchall()
    assert len(after) == 20 and after == before


def test_changed_files_are_stale_not_grouped(database, tiny_encoder, tmp_path, capsys):
    paths = make_library(tmp_path / "lib")
    run_ingest(database, tiny_encoder, tmp_path / "lib")
    with open(paths["copy"], "ab") as handle:
        handle.write(b"x")
    code, out, err = run_dupes(capsys, "--json", "--tier", "exact")
    assert code == 0 and json.loads(out) == []
    assert "stale" in err and "copy of big.png" in err


def test_empty_database_and_unindexed_path_give_no_groups(database, tmp_path, capsys):
    code, out, err = run_dupes(capsys, "--json")
    assert (code, json.loads(out)) == (0, [])
    assert "no indexed images" in err
    code, out, err = run_dupes(capsys, str(tmp_path), "--tier", "exact")
    assert code == 0 and out == ""


def test_path_shows_groups_with_a_member_under_it_and_marks_the_others_outside(
    database, tiny_encoder, tmp_path, capsys
):
    """DIR: the groups with at least one member under DIR, members found anywhere (every
    tier, by index hops from DIR's rows), those outside DIR marked ``outside``."""
    paths = make_library(tmp_path / "lib")
    run_ingest(database, tiny_encoder, tmp_path / "lib")
    code, out, err = run_dupes(capsys, "--json", str(tmp_path / "lib" / "sub"))
    [group] = json.loads(out)
    outside = {m["image_path"]: m["outside"] for m in group["images"]}
    assert outside == {str(paths["big"]): True, str(paths["copy"]): True,
                       str(paths["small"]): False}  # fmt: skip
    # exact only: small.jpg has no exact twin; big.png's twin lies outside sub/ but is found
    code, out, _ = run_dupes(capsys, "--json", str(tmp_path / "lib" / "sub"), "--tier", "exact")
    assert json.loads(out) == []
    (tmp_path / "elsewhere").mkdir()
    shutil.copyfile(paths["big"], tmp_path / "elsewhere" / "twin.png")
    run_ingest(database, tiny_encoder, tmp_path / "elsewhere")
    with database.connect() as conn:  # a row without a pHash is still an exact copy
        conn.execute("UPDATE clipdb.images SET phash = NULL WHERE path LIKE '%twin.png'")
        conn.commit()
    code, out, _ = run_dupes(capsys, "--json", str(tmp_path / "elsewhere"), "--tier", "exact")
    [group] = json.loads(out)
    assert {(Path(m["image_path"]).name, m["outside"]) for m in group["images"]} == {
        ("big.png", True), ("copy of big.png", True), ("twin.png", False)
    }  # fmt: skip
    code, out, _ = run_dupes(capsys, "--json", str(tmp_path / "lib"), "--tier", "exact,near")
    assert len(json.loads(out)) == 1


def test_move_to_inside_the_tree_or_a_file_is_a_usage_error(
    database, tiny_encoder, tmp_path, capsys
):
    make_library(tmp_path / "lib")
    run_ingest(database, tiny_encoder, tmp_path / "lib")
    script = tmp_path / "move.sh"
    code, _, err = run_dupes(
        capsys, "--script", str(script), "--move-to", str(tmp_path / "lib" / "d")
    )
    assert code == 2 and "inside the indexed tree" in err
    (tmp_path / "afile").write_text("x")
    code, _, err = run_dupes(capsys, "--script", str(script), "--move-to", str(tmp_path / "afile"))
    assert code == 2 and "not a directory" in err
    code, _, err = run_dupes(capsys, "--script", str(script))
    assert code == 2
    assert not script.exists()


NASTY = [
    "a b.png",
    "it's.png",
    "new\nline.png",
    "$HOME `x`.png",
    'back\\slash "q".png',
    os.fsdecode(b"caf\xe9.png"),
    "-dash.png",
]


def test_quote_survives_sh_for_nasty_names():
    for name in NASTY:
        out = subprocess.run(
            [b"sh", b"-c", b"printf %s " + quote(name)], capture_output=True, check=True
        ).stdout
        assert out == os.fsencode(name)


def test_move_script_moves_every_non_kept_file_and_prune_leaves_a_consistent_index(
    database, tiny_encoder, tmp_path, capsys
):
    root = tmp_path / "lib"
    paths = make_library(root)
    for name in NASTY:
        shutil.copyfile(paths["big"], root / "sub" / name)
    run_ingest(database, tiny_encoder, root)
    target = tmp_path / "moved here"
    (target / "sub").mkdir(parents=True)
    shutil.copyfile(paths["other"], target / "sub" / "a b.png")  # an existing target: kept
    script = tmp_path / "move.sh"
    code, _, err = run_dupes(capsys, "--script", str(script), "--move-to", str(target),
                             "--tier", "exact,near")  # fmt: skip
    assert code == 0, err
    run = subprocess.run(["sh", str(script)], capture_output=True)
    assert run.returncode == 0, run.stderr
    assert b"skipped (target exists)" in run.stderr
    assert paths["big"].exists() and paths["other"].exists()  # kept and unrelated stay
    assert (root / "sub" / "a b.png").exists()  # its target existed: not overwritten, skipped
    assert (target / "sub" / "a b.png").read_bytes() == paths["other"].read_bytes()
    for name in NASTY[1:]:
        assert not (root / "sub" / name).exists()
        assert (target / "sub" / name).read_bytes() == paths["big"].read_bytes()
    assert (target / "copy of big.png").exists() and (target / "sub" / "small.jpg").exists()
    summary = run_ingest(database, tiny_encoder, root, prune=True)
    assert summary.pruned == len(NASTY) - 1 + 2
    with database.connect() as conn:
        model = models_with_rows(conn)[0]
        left = find_duplicates(conn, model)
    # what is left: big.png and the one copy the script would not overwrite
    assert [sorted(Path(m.image_path).name for m in g.images) for g in left.groups] == [
        ["a b.png", "big.png"]
    ]
    assert not left.stale


def test_sql_function_duplicates_for_other_apps(database, tiny_encoder, tmp_path):
    paths = make_library(tmp_path / "lib")
    run_ingest(database, tiny_encoder, tmp_path / "lib")
    with database.connect() as conn:
        ids = dict(conn.execute("SELECT path, id FROM clipdb.images").fetchall())
        near = conn.execute("SELECT image_id, other_id, distance FROM clipdb.duplicates('near', 6)")
        pairs = {(a, b) for a, b, d in near.fetchall()}
        big, copy, small = (ids[str(paths[k])] for k in ("big", "copy", "small"))
        assert (min(big, copy), max(big, copy)) in pairs
        assert (min(big, small), max(big, small)) in pairs
        assert all(ids[str(paths["other"])] not in pair for pair in pairs)
        wide = conn.execute("SELECT count(*) FROM clipdb.duplicates('near', 8)").fetchone()
        assert wide[0] >= len(pairs)  # radius 2 per band: still answered
        with pytest.raises(Exception, match="max_distance"):
            conn.execute("SELECT * FROM clipdb.duplicates('near', 9)")


def test_hide_duplicates_collapses_copies_to_the_kept_image(
    database, tiny_encoder, tmp_path, capsys
):
    from clipdb.db.queries import embedding_by_id
    from clipdb.search import SearchOptions, search

    paths = make_library(tmp_path / "lib")
    run_ingest(database, tiny_encoder, tmp_path / "lib")
    with database.connect() as conn:
        model = models_with_rows(conn)[0]
        ids = dict(conn.execute("SELECT path, id FROM clipdb.images").fetchall())
        query = embedding_by_id(conn, model, ids[str(paths["small"])])
        plain = search(conn, model, query, SearchOptions(k=4))
        hidden = search(conn, model, query, SearchOptions(k=4, hide_duplicates=True))
    assert len(plain) == 4
    # the three copies collapse into big.png (kept), which takes the best copy's place
    assert [h.image_path for h in hidden] == [str(paths["big"]), str(paths["other"])]
    assert [h.rank for h in hidden] == [1, 2]
    assert hidden[0].similarity == pytest.approx(
        next(h.similarity for h in plain if h.image_path == str(paths["big"])), abs=1e-6
    )
    code = __import__("clipdb.search.__main__", fromlist=["main"]).main(
        ["--like", str(paths["small"]), "--hide-duplicates", "--json", "-k", "4", *MODEL_ARGS]
    )
    out = capsys.readouterr().out
    assert code == 0 and [r["image_path"] for r in json.loads(out)] == [
        str(paths["big"]), str(paths["other"])
    ]  # fmt: skip


def test_api_duplicates_and_hide_duplicates_over_http(database, tiny_encoder, tmp_path):
    from fastapi.testclient import TestClient

    from clipdb.api import ClipDB
    from clipdb.serve import create_app

    paths = make_library(tmp_path / "lib")
    run_ingest(database, tiny_encoder, tmp_path / "lib")
    with TestClient(create_app(database, encoder=tiny_encoder), base_url="http://127.0.0.1") as c:
        groups = c.get("/api/duplicates").json()
        assert [g["tier"] for g in groups] == ["near"]
        kept = [m["image_path"] for m in groups[0]["images"] if m["keep"]]
        assert kept == [str(paths["big"])]
        assert c.get("/api/duplicates", params={"tier": "bogus"}).status_code == 422
        image_id = groups[0]["images"][1]["image_id"]
        similar = c.get(f"/api/similar/{image_id}", params={"k": 4}).json()
        assert len(similar) == 4
        text = c.get("/api/search", params={"text": "x", "k": 4, "hide_duplicates": True})
        assert len(text.json()) == 2
    db = ClipDB(TINY_MODEL, pretrained="none", database_url=database.url)
    db._searcher.encoder = tiny_encoder
    assert len(db.search_by_text("x", top_k=4, hide_duplicates=True)) == 2
    assert len(db.search_by_text("x", top_k=4)) == 4


@pytest.mark.browser
@pytest.mark.skipif(not os.access("/usr/bin/chromium", os.X_OK), reason="needs /usr/bin/chromium")
def test_duplicates_view_in_the_browser(database, tiny_encoder, tmp_path):
    from playwright.sync_api import expect, sync_playwright
    from test_browser import CHROMIUM, CHROMIUM_ARGS

    from clipdb.serve import create_app, running

    paths = make_library(tmp_path / "lib")
    run_ingest(database, tiny_encoder, tmp_path / "lib")
    with running(create_app(database, encoder=tiny_encoder)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            page.click("#dupes-button")
            expect(page.locator("#status")).to_contain_text("1 duplicate group")
            expect(page.locator(".dupe-group .dupe")).to_have_count(3)
            kept = page.locator(".dupe.keep")
            expect(kept).to_have_count(1)
            expect(kept.locator(".dupe-note")).to_contain_text("kept: ")
            assert kept.get_attribute("title") == str(paths["big"])
            thumb = kept.locator("img")
            expect(thumb).to_have_js_property("complete", True)
            assert thumb.evaluate("img => img.naturalWidth") > 0
        finally:
            browser.close()


def test_keep_best_prefers_more_exif_fields_when_pixels_and_bytes_tie(
    database, tiny_encoder, tmp_path
):
    """Same pixels, same byte count: the copy with EXIF is kept over a shorter-named bare one."""
    from PIL import ExifTags

    from clipdb.db.dupes import dupe_rows

    root = tmp_path / "lib"
    root.mkdir()
    pixels = Image.open(photo(tmp_path / "src.png", seed=5))
    exif = Image.Exif()
    exif[ExifTags.Base.Make], exif[ExifTags.Base.Model] = "Canon", "Canon EOS R5"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2021:07:04 18:30:00"
    rich = root / "the copy with its camera data.jpg"
    pixels.save(rich, quality=90, exif=exif)
    bare = root / "b.jpg"
    pad = 10
    for _ in range(5):  # a JPEG comment pads the bare copy to exactly the same byte count
        pixels.save(bare, quality=90, comment=b"x" * pad)
        pad += rich.stat().st_size - bare.stat().st_size
    assert bare.stat().st_size == rich.stat().st_size
    run_ingest(database, tiny_encoder, root)
    with database.connect() as conn:
        model = models_with_rows(conn)[0]
        fields = {row.path: row.exif_fields for row in dupe_rows(conn, model)}
        result = find_duplicates(conn, model, tiers=("exact", "near"))
    assert fields == {str(rich): 2, str(bare): 0}  # date and camera
    [group] = result.groups
    assert group.kept.image_path == str(rich)


@pytest.mark.parametrize("output", [["--json"], ["--csv"], []])
def test_a_closed_pipe_ends_quietly(database, tiny_encoder, tmp_path, output):
    from helpers import run_into_closed_pipe

    make_library(tmp_path / "lib")
    run_ingest(database, tiny_encoder, tmp_path / "lib")
    done = run_into_closed_pipe("clipdb.dupes", *output, *MODEL_ARGS)
    assert (done.returncode, done.stderr) == (141, "")


def test_help_says_the_keep_rule_of_the_readme():
    from clipdb.dupes import __main__ as cli
    from clipdb.dupes.keep import RULE

    rule = " ".join(RULE.split())
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert rule in " ".join(cli.EXAMPLES.split())
    assert rule in " ".join(readme.split())
