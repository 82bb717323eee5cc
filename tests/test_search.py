"""``python -m clipdb.search`` and its library functions, against a real database."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_MODEL, TINY_WIDE_MODEL, index_images, make_images, run_module
from PIL import Image

from clipdb import search, viz
from clipdb.errors import UsageError
from clipdb.query import Weights, combine_query
from clipdb.search.__main__ import main
from clipdb.search.output import result_dicts

TINY = ["--model", TINY_MODEL, "--pretrained", "none"]


@pytest.fixture
def indexed(database, tiny_encoder, tmp_path):
    """12 images in two folders, indexed with the tiny model."""
    paths = make_images(tmp_path / "lib" / "a", 6, seed=1) + make_images(
        tmp_path / "lib" / "b", 6, seed=2
    )
    index_images(database, tiny_encoder, paths)
    return paths


def table_rows(text: str) -> list[list[str]]:
    lines = text.strip().splitlines()
    assert lines[0] == f"{'rank':>4}  {'similarity':>10}  path"
    return [line.split(maxsplit=2) for line in lines[1:]]


def test_image_query_finds_itself_first(indexed, capsys) -> None:
    query = indexed[3]
    assert main([str(query), *TINY]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert [row[0] for row in rows] == ["1", "2", "3", "4", "5"]
    assert rows[0][2] == str(query.resolve())
    assert float(rows[0][1]) >= 0.999
    similarities = [float(row[1]) for row in rows]
    assert similarities == sorted(similarities, reverse=True)


def test_like_by_path_and_id_needs_no_model_flags(indexed, capsys, database) -> None:
    query = str(indexed[7].resolve())
    assert main(["--like", query, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results[0]["image_path"] == query
    assert results[0]["similarity"] >= 0.999
    assert main(["--like", str(results[0]["image_id"]), "--paths", "-k", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == query


def test_json_has_the_original_format(indexed, capsys) -> None:
    assert main([str(indexed[0]), *TINY, "--json", "-k", "3"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in results] == [1, 2, 3]
    for result in results:
        assert {"rank", "image_path", "similarity", "filename"} <= set(result)
        assert result["filename"] == os.path.basename(result["image_path"])
        assert isinstance(result["similarity"], float) and -1 <= result["similarity"] <= 1


def test_paths_output_is_bare(indexed, capsys) -> None:
    assert main(["--like", str(indexed[0]), "--paths", "-k", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(os.path.isabs(line) for line in lines)


def test_text_query_searches_the_chosen_model_only(indexed, database, tmp_path, capsys) -> None:
    from clipdb.encoders import load_encoder

    wide = load_encoder(TINY_WIDE_MODEL, "none", device="cpu", precision="fp32")
    others = make_images(tmp_path / "wide", 4, seed=9)
    index_images(database, wide, others)
    capsys.readouterr()
    assert main(["--text", "a red car", *TINY, "-k", "7", "--paths"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7
    assert {line for line in lines} <= {str(p.resolve()) for p in indexed}
    wide_args = ["--model", TINY_WIDE_MODEL, "--pretrained", "none"]
    assert main(["--text", "a red car", *wide_args, "-k", "7", "--paths"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert set(lines) == {str(p.resolve()) for p in others}


def test_under_and_threshold_filter(indexed, tmp_path, capsys) -> None:
    under = tmp_path / "lib" / "b"
    assert main([str(indexed[0]), *TINY, "--under", str(under), "-k", "10", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 6
    assert all(r["image_path"].startswith(str(under.resolve()) + os.sep) for r in results)
    assert main([str(indexed[0]), *TINY, "-k", "12", "--json"]) == 0
    everything = json.loads(capsys.readouterr().out)
    cut = everything[3]["similarity"] - 1e-6  # JSON similarities are rounded
    assert main([str(indexed[0]), *TINY, "-k", "12", "--threshold", str(cut), "--json"]) == 0
    kept = json.loads(capsys.readouterr().out)
    assert [r["image_path"] for r in kept] == [r["image_path"] for r in everything[:4]]
    assert main([str(indexed[0]), *TINY, "--threshold", "1", "--under", str(under)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.endswith("\nno results\n")


def test_combined_queries(indexed, tiny_encoder, capsys) -> None:
    args = [str(indexed[2]), "--text", "a blue square", *TINY, "--json", "-k", "12"]
    assert main([*args, "--weights", "1,0"]) == 0
    image_only = json.loads(capsys.readouterr().out)
    assert image_only[0]["image_path"] == str(indexed[2].resolve())
    assert main([*args, "--weights", "0,1"]) == 0
    text_only = json.loads(capsys.readouterr().out)
    assert main(["--text", "a blue square", *TINY, "--json", "-k", "12"]) == 0
    assert json.loads(capsys.readouterr().out) == text_only
    assert main(["--text", "a blue square", "--minus", "green", *TINY, "--json"]) == 0
    pushed = json.loads(capsys.readouterr().out)
    text, green = tiny_encoder.encode_texts(["a blue square", "green"])
    expected = combine_query(text=text, minus=[green])
    assert np.isclose(np.linalg.norm(expected), 1.0)
    paths = [r["image_path"] for r in pushed]
    assert paths == [r["image_path"] for r in _search_vector(expected)]


def _search_vector(vector: np.ndarray) -> list[dict]:
    from clipdb.config import Settings
    from clipdb.db import open_database

    database = open_database(Settings.resolve())
    with database.connect() as conn:
        model = search.choose_model(conn, Settings.resolve(model=TINY_MODEL, pretrained="none"))
        return result_dicts(search.search(conn, model, vector, search.SearchOptions()))


def test_combine_query_formula() -> None:
    image, text, minus = np.eye(3, dtype=np.float32)
    combined = combine_query(image * 3, text, [minus], Weights(2, 1, 1))
    expected = np.array([2, 1, -1], dtype=np.float32) / np.sqrt(6)
    assert np.allclose(combined, expected)
    assert Weights.parse("0.7,0.3") == Weights(0.7, 0.3, 0.5)
    for bad in ("1", "a,b", "1,-1", "1,2,3,4"):
        with pytest.raises(UsageError):
            Weights.parse(bad)


def test_plot_is_a_png_of_the_expected_size(indexed, tmp_path, capsys) -> None:
    plot = tmp_path / "grid.png"
    assert main([str(indexed[1]), *TINY, "-k", "4", "--plot", str(plot)]) == 0
    with Image.open(plot) as image:
        assert image.format == "PNG"
        assert image.size == viz.figure_pixels(4, with_query_image=True)
    text_plot = tmp_path / "text.png"
    assert main(["--text", "x" * 300, *TINY, "-k", "8", "--plot", str(text_plot)]) == 0
    with Image.open(text_plot) as image:
        assert image.size == viz.figure_pixels(8, with_query_image=False)


def test_batch_writes_json_and_grids_and_skips_unreadable(indexed, tmp_path, capsys) -> None:
    queries = make_images(tmp_path / "queries", 3, seed=1)  # same pictures as lib/a/img_000*
    (tmp_path / "queries" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "results"
    code = main(["--batch", str(tmp_path / "queries"), "--out", str(out), *TINY, "-k", "3"])
    captured = capsys.readouterr()
    assert code == 0
    assert f"skipping {tmp_path / 'queries' / 'broken.jpg'}: cannot read image" in captured.err
    assert captured.out == (
        f"searched 3 queries (1 skipped); results in {out / search.BATCH_RESULTS_FILE}\n"
    )
    results = json.loads((out / search.BATCH_RESULTS_FILE).read_text())
    assert sorted(results) == [str(p.resolve()) for p in queries]
    for query, hits in results.items():
        assert len(hits) == 3 and hits[0]["filename"] == os.path.basename(query)
        assert hits[0]["similarity"] >= 0.999
    grids = sorted(p.name for p in out.glob("*.png"))
    assert grids == [search.batch_plot_name(i, q) for i, q in enumerate(queries, start=2)]


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{broken}", *TINY], "error: cannot read image {broken}: "),
        (["--like", "{missing}"], "error: {missing} is not indexed\n"),
        (["--like", "{missing}", *TINY], "error: {missing} is not indexed with model clipdb-tiny"),
        (
            ["--text", "cat", "--model", "ViT-B-16"],
            "error: no images indexed with model ViT-B-16; indexed models: clipdb-tiny (none) "
            "[12 images]\n",
        ),
        (["--like", "{missing}", "--model", "nope"], "error: no images indexed with model nope"),
    ],
)
def test_bad_input_is_one_line_exit_1(indexed, tmp_path, capsys, args, message) -> None:
    names = {"missing": str(tmp_path / "missing.jpg"), "broken": str(tmp_path / "broken.png")}
    (tmp_path / "broken.png").write_bytes(b"\x89PNG truncated")
    assert main([arg.format(**names) for arg in args]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(message.format(**names))
    assert captured.err.count("\n") == 1


def test_empty_database(database, tmp_path, capsys) -> None:
    (query,) = make_images(tmp_path, 1)
    assert main([str(query), *TINY]) == 1
    assert capsys.readouterr().err == (
        "error: the database has no indexed images yet; run clipdb ingest\n"
    )
    assert main(["--like", str(query)]) == 1


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["a.jpg", "--like", "b.jpg"],
        ["--text", "x", "--json", "--paths"],
        ["--batch", "dir"],
        ["--batch", "dir", "--out", "o", "--text", "x"],
        ["a.jpg", "--out", "o"],
        ["a.jpg", "-k", "0"],
        ["a.jpg", "--threshold", "2"],
        ["a.jpg", "--weights", "1,x"],
        ["a.jpg", "--bogus"],
    ],
)
def test_bad_flag_combinations_exit_2_with_usage(args, capsys) -> None:
    assert main(args) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("python -m clipdb.search: error: ")
    assert lines[1] == "see python -m clipdb.search --help"


def test_like_imports_no_torch(indexed) -> None:
    script = (
        "import sys\n"
        "from clipdb.search.__main__ import main\n"
        f"code = main(['--like', {str(indexed[0])!r}, '--paths', '-k', '1'])\n"
        "print(code, *(name in sys.modules for name in ('torch', 'open_clip', 'alembic')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.splitlines() == [str(indexed[0].resolve()), "0 False False False"], (
        done.stderr
    )


@pytest.mark.slow
def test_end_to_end_after_ingest(database, tiny_encoder, tmp_path) -> None:
    from clipdb.ingest import ingest

    paths = make_images(tmp_path / "lib", 5, seed=4, size=(640, 480))  # big enough for drafts
    paths += make_images(tmp_path / "lib", 2, seed=5, prefix="png", fmt="PNG")
    ingest([tmp_path / "lib"], database=database, encoder=tiny_encoder, progress=False)
    plot = tmp_path / "e2e.png"
    done = run_module(
        "clipdb.search", str(paths[4]), *TINY, "--json", "-k", "2", "--plot", str(plot)
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results[0]["image_path"] == str(paths[4].resolve())
    assert results[0]["similarity"] >= 0.999
    assert _png_size(plot) == viz.figure_pixels(2, with_query_image=True)
    bad = run_module("clipdb.search", str(tmp_path / "nope.jpg"), *TINY)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.splitlines() == [
        f"python -m clipdb.search: error: query image {tmp_path / 'nope.jpg'} does not exist",
        "see python -m clipdb.search --help",
    ]


def test_like_still_migrates_a_database_without_schema(empty_database, monkeypatch, capsys) -> None:
    from clipdb.db.migrate import current_revision_of, head_from_files

    monkeypatch.setenv("CLIPDB_DATABASE_URL", empty_database.url)
    assert main(["--like", "/nowhere.jpg"]) == 1
    assert "no indexed images" in capsys.readouterr().err
    assert current_revision_of(empty_database) == head_from_files() == "0015"


@pytest.mark.parametrize("output", [["--json"], [], ["--paths"]])
def test_a_closed_pipe_ends_quietly(indexed, output) -> None:
    from helpers import run_into_closed_pipe

    done = run_into_closed_pipe("clipdb.search", "--like", str(indexed[0]), *output)
    assert (done.returncode, done.stderr) == (141, "")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("a dog", "no image file 'a dog'; to search by text use --text 'a dog'"),
        ("sunset", "no image file 'sunset'; to search by text use --text sunset"),
        ("gone.jpg", "query image gone.jpg does not exist"),
    ],
)
def test_a_missing_query_image_is_a_usage_error(query, message, capsys) -> None:
    assert main([query]) == 2
    prog = "python -m clipdb.search"
    assert capsys.readouterr().err == f"{prog}: error: {message}\nsee {prog} --help\n"
