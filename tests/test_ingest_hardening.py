"""One bad file never stops a tree: hostile decoders, odd names, files swapped after the scan,
prune that cannot tell, known-bad files on re-runs, a full disk."""

from __future__ import annotations

import io
import struct

import pytest
from helpers import make_images
from PIL import Image

from clipdb import decode, files
from clipdb.ingest import IngestSummary, ingest


def run(paths, database, encoder, **kwargs) -> IngestSummary:
    kwargs.setdefault("workers", 0)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("on_skip", lambda path, reason: None)
    return ingest([str(p) for p in paths], database=database, encoder=encoder, **kwargs)


def stored_paths(database) -> list[str]:
    with database.connect() as conn:
        return [row[0] for row in conn.execute("SELECT path FROM clipdb.images ORDER BY path")]


def dds_with_unknown_pixel_format() -> bytes:
    """A DDS header Pillow's DDS plugin accepts and then raises NotImplementedError on."""
    header = struct.pack("<7I", 124, 0x1007, 4, 4, 0, 0, 0) + bytes(44)
    pixel_format = struct.pack("<2I", 32, 4) + b"ZZZZ" + bytes(20)
    return b"DDS " + header + pixel_format + bytes(20) + bytes(64)


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"


def test_files_pillow_would_hand_to_other_decoders_are_skipped_and_the_rest_indexed(
    database, tiny_encoder, tmp_path
):
    good = make_images(tmp_path, 2)
    (tmp_path / "fuzzed.png").write_bytes(dds_with_unknown_pixel_format())
    (tmp_path / "vector.jpg").write_bytes(EPS)  # never handed to Ghostscript
    skips: list[tuple[str, str]] = []
    summary = run([tmp_path], database, tiny_encoder, on_skip=lambda p, r: skips.append((p, r)))
    assert sorted(skips) == [
        (str(tmp_path / "fuzzed.png"), files.NOT_IMAGE),
        (str(tmp_path / "vector.jpg"), files.NOT_IMAGE),
    ]
    assert summary.new == 2 and stored_paths(database) == [str(p) for p in good]


def test_any_exception_inside_a_decoder_is_a_corrupt_skip(monkeypatch):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")

    def broken_load(self):
        raise AttributeError("'NoneType' object has no attribute 'read'")  # as fuzzers find

    monkeypatch.setattr("PIL.PngImagePlugin.PngImageFile.load", broken_load)
    with pytest.raises(decode.ImageError, match=files.CORRUPT):
        decode.open_image(buffer.getvalue())


def test_a_name_that_is_not_utf8_is_indexed_searchable_printed_escaped_and_pruned(
    database, tmp_path
):
    import json
    import os

    from helpers import TINY_MODEL, run_module

    good = make_images(tmp_path, 2)
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.jpg"  # Latin-1, as old Windows/zip trees have
    with open(raw, "wb") as handle:
        handle.write(make_images(tmp_path / "src", 1, seed=7)[0].read_bytes())
    (tmp_path / "src" / "img_0000.jpg").unlink()
    name = os.fsdecode(raw)
    shown = f"{tmp_path}/caf\\xe9.jpg"
    cli = ("clipdb.ingest", "--model", TINY_MODEL, "--pretrained", "none", "--workers", "0",
           "--json")  # fmt: skip
    first = run_module(*cli, str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "skipping" not in first.stderr and "Traceback" not in first.stderr
    assert json.loads(first.stdout)["new"] == 3
    assert stored_paths(database) == sorted([shown, *(str(p) for p in good)])

    again = run_module(*cli, str(tmp_path))
    assert (json.loads(again.stdout)["new"], json.loads(again.stdout)["unchanged"]) == (0, 3)

    like = run_module("clipdb.search", "--like", name, "-k", "1")
    assert like.returncode == 0, like.stderr
    assert shown in like.stdout

    os.unlink(raw)
    pruned = run_module(*cli, "--prune", str(tmp_path))
    assert json.loads(pruned.stdout)["pruned"] == 1, pruned.stderr
    assert stored_paths(database) == [str(p) for p in good]
