"""One bad file never stops a tree: hostile decoders, odd names, files swapped after the scan,
prune that cannot tell, known-bad files on re-runs, a full disk."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from helpers import make_images
from PIL import Image

from clipdb import decode, files, pixels, thumbnail
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


@pytest.mark.slow
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

    from clipdb.db.queries import image_file

    with database.connect() as conn:  # what serve reads to make a thumbnail
        (row_id,) = conn.execute(
            "SELECT id FROM clipdb.images WHERE path = %s", (shown,)
        ).fetchone()
        found = image_file(conn, row_id)
        assert found is not None and found[0] == name  # what the server opens: the real name
    assert thumbnail.make_thumbnail(name, 16).startswith(b"\xff\xd8")

    again = run_module(*cli, str(tmp_path))
    assert (json.loads(again.stdout)["new"], json.loads(again.stdout)["unchanged"]) == (0, 3)

    like = run_module("clipdb.search", "--like", name, "-k", "1")
    assert like.returncode == 0, like.stderr
    assert shown in like.stdout

    os.unlink(raw)
    pruned = run_module(*cli, "--prune", str(tmp_path))
    assert json.loads(pruned.stdout)["pruned"] == 1, pruned.stderr
    assert stored_paths(database) == [str(p) for p in good]


def swap_after_scan(monkeypatch, swap) -> None:
    """Run ``swap()`` between the scan and everything that reads the scanned files."""
    real_scan = files.scan

    def scan_then_swap(*args, **kwargs):
        result = real_scan(*args, **kwargs)
        swap()
        return result

    monkeypatch.setattr("clipdb.files.scan", scan_then_swap)


def replace_with(path: Path, make) -> None:
    path.unlink()
    make(path)


def test_files_swapped_after_the_scan_are_skipped_quickly_and_the_rest_indexed(
    database, tiny_encoder, tmp_path, monkeypatch
):
    import os
    import time

    good = make_images(tmp_path, 6)
    fifo, zero, other, sparse, kept = good[:5]
    kept.rename(tmp_path / "kept.jpg")
    kept = tmp_path / "kept.jpg"
    sparse = sparse.rename(tmp_path / "sparse.png")

    def swap() -> None:
        replace_with(fifo, os.mkfifo)  # reading a FIFO would block forever
        replace_with(zero, lambda p: p.symlink_to("/dev/zero"))  # endless bytes
        replace_with(other, lambda p: p.symlink_to(kept))  # another file's content
        with open(sparse, "r+b") as handle:  # 300 MiB of nothing, read whole before
            handle.truncate(300 * 1024 * 1024)

    swap_after_scan(monkeypatch, swap)
    skips: dict[str, str] = {}
    started = time.monotonic()
    summary = run([tmp_path], database, tiny_encoder, on_skip=skips.__setitem__)
    assert time.monotonic() - started < 60
    assert skips == {
        str(fifo): files.NOT_REGULAR,
        str(zero): files.CHANGED,
        str(other): files.CHANGED,
        str(sparse): files.TOO_BIG,
    }
    assert stored_paths(database) == sorted([str(good[5]), str(kept)])
    assert summary.new == 2


def test_the_hash_step_refuses_a_link_swapped_in_after_the_scan(
    database, tiny_encoder, tmp_path, monkeypatch
):
    indexed = make_images(tmp_path, 2)
    run([tmp_path], database, tiny_encoder)  # rows exist: new files are hashed (moves)
    added = make_images(tmp_path, 1, seed=5, prefix="new")[0]
    swap_after_scan(monkeypatch, lambda: replace_with(added, lambda p: p.symlink_to("/dev/zero")))
    skips: dict[str, str] = {}
    summary = run([tmp_path], database, tiny_encoder, on_skip=skips.__setitem__)
    assert skips == {str(added): files.CHANGED}
    assert summary.unchanged == 2 and stored_paths(database) == [str(p) for p in indexed]


def test_prune_keeps_rows_of_files_under_a_directory_it_cannot_read(database, tiny_encoder):
    import json
    import shutil
    import tempfile

    from test_hostile import ingest_cli

    root = Path(tempfile.mkdtemp(prefix="clipdb-prune-"))  # not tmp_path: 0700
    try:
        root.chmod(0o755)
        make_images(root / "open", 2)
        make_images(root / "private", 2, seed=3)
        run([root], database, tiny_encoder)
        (root / "private").chmod(0o700)  # root's; the unprivileged ingest cannot look inside
        result = ingest_cli(root, "--prune")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["pruned"] == 0
        assert len(stored_paths(database)) == 4
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_prune_leaves_a_root_that_yields_no_files_alone_unless_told(
    database, tiny_encoder, tmp_path, capsys
):
    volume = tmp_path / "volume"
    make_images(volume, 3)
    make_images(tmp_path / "other", 1)
    run([volume, tmp_path / "other"], database, tiny_encoder)
    for path in volume.iterdir():  # an unmounted volume: the mount point is empty
        path.unlink()
    summary = run([volume], database, tiny_encoder, prune=True)
    assert summary.pruned == 0 and len(stored_paths(database)) == 4
    assert capsys.readouterr().err == (
        f"{volume}: no files found but 3 rows indexed under it; not pruning (offline?)\n"
    )
    summary = run([volume], database, tiny_encoder, prune=True, prune_missing_roots=True)
    assert summary.pruned == 3 and stored_paths(database) == [str(tmp_path / "other/img_0000.jpg")]


def skipped_rows(database) -> dict[str, str]:
    with database.connect() as conn:
        return dict(conn.execute("SELECT path, reason FROM clipdb.skipped_files").fetchall())


def test_a_rerun_with_known_bad_files_loads_no_model_and_counts_the_same_skips(
    database, tiny_encoder, tmp_path, monkeypatch
):
    import numpy as np
    from helpers import TINY_MODEL

    good = make_images(tmp_path, 24, size=(40, 30))
    data = good[0].read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "random.png").write_bytes(np.random.default_rng(1).bytes(4096))
    (tmp_path / "text.jpg").write_text("not a picture")
    (tmp_path / "fuzzed.png").write_bytes(dds_with_unknown_pixel_format())
    first = run([tmp_path], database, tiny_encoder)
    assert first.new == 24 and sum(first.skipped.values()) == 5
    assert len(skipped_rows(database)) == 5

    def refuse(*args, **kwargs):
        raise AssertionError("model loaded for files known to be bad")

    monkeypatch.setattr("clipdb.encoders.load_encoder", refuse)
    skips: list[str] = []
    again = ingest([str(tmp_path)], database=database, model=TINY_MODEL, pretrained="none",
                   workers=0, progress=False, on_skip=lambda p, r: skips.append(p))  # fmt: skip
    assert (again.unchanged, again.new, again.skipped) == (24, 0, first.skipped)
    assert (again.known_bad, skips) == (5, [])  # counted, not reported again
    listed = ingest(
        [str(tmp_path)],
        database=database,
        model=TINY_MODEL,
        pretrained="none",
        workers=0,
        progress=False,
        verbose=True,
        on_skip=lambda p, r: skips.append(p),
    )
    assert (listed.known_bad, len(skips)) == (5, 5)

    # A bad file that changes (still bad) is retried, still without loading a model.
    (tmp_path / "text.jpg").write_text("still not a picture")
    touched = ingest([str(tmp_path)], database=database, model=TINY_MODEL, pretrained="none",
                     workers=0, progress=False, on_skip=lambda p, r: None)  # fmt: skip
    assert touched.skipped == first.skipped

    # Fixed or gone: retried, indexed, forgotten.
    monkeypatch.undo()
    (tmp_path / "truncated.jpg").write_bytes(data)
    (tmp_path / "empty.jpg").unlink()
    fixed = run([tmp_path], database, tiny_encoder)
    assert fixed.new == 1 and sum(fixed.skipped.values()) == 3
    assert sorted(skipped_rows(database)) == sorted(
        str(tmp_path / name) for name in ("random.png", "text.jpg", "fuzzed.png")
    )


def test_a_rerun_says_once_how_many_known_bad_files_and_verbose_lists_them(
    database, tiny_encoder, tmp_path, capsys
):
    from helpers import TINY_MODEL

    from clipdb.ingest.__main__ import main

    make_images(tmp_path, 2, size=(40, 30))
    (tmp_path / "a.jpg").write_text("not a picture")
    (tmp_path / "b.png").write_bytes(b"")
    run([tmp_path], database, tiny_encoder)
    flags = [str(tmp_path), "--model", TINY_MODEL, "--pretrained", "none", "--workers", "0"]
    capsys.readouterr()
    assert main(flags) == 0
    err = capsys.readouterr().err
    assert err == "2 known bad files, unchanged; --verbose lists them\n"
    assert main([*flags, "--verbose"]) == 0
    assert sorted(capsys.readouterr().err.splitlines()) == [
        f"skipping {tmp_path / 'a.jpg'}: not an image",
        f"skipping {tmp_path / 'b.png'}: empty file",
    ]


def test_watch_does_not_repeat_known_bad_files(database, tiny_encoder, tmp_path):
    import threading

    from clipdb.ingest import watch

    make_images(tmp_path, 1, size=(40, 30))
    (tmp_path / "a.jpg").write_text("not a picture")
    run([tmp_path], database, tiny_encoder)
    stop, passes, skips = threading.Event(), [], []

    def on_pass(summary):
        passes.append(summary.known_bad)
        if len(passes) == 3:
            stop.set()

    watch(
        [tmp_path],
        database=database,
        encoder=tiny_encoder,
        interval=0,
        stop=stop,
        workers=0,
        progress=False,
        on_pass=on_pass,
        on_skip=lambda p, r: skips.append(p),
    )
    assert (passes, skips) == ([1, 0, 0], [])


def test_a_full_disk_is_one_line_that_says_so_and_where(database, tmp_path, monkeypatch, capsys):
    import psycopg
    from helpers import TINY_MODEL

    from clipdb.ingest.__main__ import main

    make_images(tmp_path, 2)

    def full(*args, **kwargs):
        raise psycopg.errors.DiskFull('could not extend file "base/5/1249": No space left')

    monkeypatch.setattr("clipdb.ingest.writer.upsert_images", full)
    code = main([str(tmp_path), "--model", TINY_MODEL, "--pretrained", "none", "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.splitlines()[-1].startswith(
        "error: no space left on device: the database server's data directory "
        '(could not extend file "base/5/1249"'
    ), err


def test_enospc_from_a_file_names_the_file(capsys):
    import argparse
    import errno

    from clipdb.cli import run_command

    def body(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/results.json")

    assert run_command(argparse.ArgumentParser(), [], body) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on device: /data/out/results.json ("), err


class CrashingTransform:
    """A preprocess stand-in that kills its (worker) process on images of one size, as a
    decoder segfault or the OOM killer would; picklable, so decode workers can run it."""

    def __init__(self, deadly_size: tuple[int, int], input_size: int = 8) -> None:
        self.deadly_size, self.input_size = deadly_size, input_size

    def __call__(self, image):
        import os

        if image.size == self.deadly_size:
            os._exit(70)
        import torch

        return torch.zeros(3, self.input_size, self.input_size)


def test_a_file_that_kills_a_decode_worker_is_skipped_and_the_rest_decode(tmp_path):
    from clipdb.ingest.pipeline import MIN_FILES_FOR_POOL, decoded_images

    paths = [str(p) for p in make_images(tmp_path, MIN_FILES_FOR_POOL + 4, size=(40, 30))]
    deadly = make_images(tmp_path, 1, size=(22, 18), prefix="deadly")[0]
    paths.insert(5, str(deadly))
    pipeline = pixels.PixelPipeline(input_size=8, whole=CrashingTransform((22, 18)))
    results = list(decoded_images(paths, {}, pipeline, workers=2, read_ahead=4, max_pixels=None))
    assert [r.path for r in results] == paths
    assert {r.path: r.reason for r in results if r.reason} == {str(deadly): files.CRASHED}


def test_watch_prune_keeps_rows_and_runs_on_when_a_root_disappears(
    database, tiny_encoder, tmp_path, capsys
):
    import threading

    from clipdb.ingest import watch

    volume = tmp_path / "volume"
    make_images(volume, 2)
    passes: list[IngestSummary] = []
    stop = threading.Event()
    moved_away = threading.Event()

    def on_pass(summary: IngestSummary) -> None:
        passes.append(summary)
        if len(passes) == 1:
            volume.rename(tmp_path / "unmounted")  # the mount point itself is gone
            moved_away.set()
        elif len(passes) == 3:
            stop.set()

    errors: list[BaseException] = []

    def target() -> None:
        try:
            watch([volume], database=database, encoder=tiny_encoder, interval=0.05, prune=True,
                  workers=0, progress=False, on_pass=on_pass, stop=stop)  # fmt: skip
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    stop.set()
    assert not errors and len(passes) == 3
    assert [p.pruned for p in passes] == [0, 0, 0] and len(stored_paths(database)) == 2
    assert capsys.readouterr().err.count("not pruning (offline?)") == 1
