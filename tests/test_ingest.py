"""Ingest against a real database with a tiny random open_clip model (clipdb-tiny, 32-d)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_MODEL, as_stored
from PIL import Image, ImageOps

from clipdb import decode, files
from clipdb.db.queries import search_vector
from clipdb.db.registry import Model
from clipdb.ingest import IngestSummary, ingest
from clipdb.ingest.__main__ import main

SUMMARY_KEYS = [
    "found", "new", "updated", "moved", "unchanged", "skipped", "pruned", "seconds", "images_per_s",
    "metadata_read", "known_bad", "text_stored", "ocr_read", "similar_checked", "ignored",
    "live_photos",
]  # fmt: skip
# Fast decode path (JPEG draft at >= 2x the input size) vs full decode, as a cosine distance.
DRAFT_TOLERANCE = 1e-4


def _vec(value) -> np.ndarray:
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, dtype=np.float32)


def rows(database) -> dict[str, tuple]:
    with database.connect() as conn:
        return {
            path: (row_id, bytes(sha), size, mtime_ns, width, height, _vec(emb))
            for row_id, path, sha, size, mtime_ns, width, height, emb in conn.execute(
                "SELECT id, path, sha256, size, mtime_ns, width, height, embedding "
                "FROM clipdb.images ORDER BY path"
            )
        }


def run(paths, database, encoder, **kwargs) -> IngestSummary:
    kwargs.setdefault("workers", 0)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("on_skip", lambda path, reason: None)
    return ingest([str(p) for p in paths], database=database, encoder=encoder, **kwargs)


def reference(encoder, path: Path) -> np.ndarray:
    """normalize(model.encode_image(preprocess(image))) with a plain full decode."""
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    return encoder.encode_pil([image])[0]


class NoEncode:
    """An encoder stand-in whose use fails the test: for runs that must not encode."""

    def __init__(self, real) -> None:
        self.spec, self.architecture, self.pretrained = (
            real.spec,
            real.architecture,
            real.pretrained,
        )

    def __getattr__(self, name: str):
        raise AssertionError(f"encoder.{name} used in a run that has nothing to encode")


def test_stored_rows_equal_model_of_preprocess(database, tiny_encoder, image_factory, tmp_path):
    paths = image_factory(tmp_path / "pics", 5)
    summary = run([tmp_path / "pics"], database, tiny_encoder, batch_size=2)
    assert (summary.found, summary.new, summary.updated, summary.unchanged) == (5, 5, 0, 0)
    stored = rows(database)
    assert list(stored) == [str(p) for p in paths]
    for path in paths:
        _, sha, size, mtime_ns, width, height, embedding = stored[str(path)]
        assert sha == files.sha256_file(str(path))
        assert (size, mtime_ns) == (path.stat().st_size, path.stat().st_mtime_ns)
        assert (width, height) == (96, 72)
        np.testing.assert_allclose(embedding, as_stored(reference(tiny_encoder, path)), atol=1e-6)
    with database.connect() as conn:
        assert conn.execute(
            "SELECT architecture, pretrained, dim FROM clipdb.models"
        ).fetchall() == [(TINY_MODEL, "none", 32)]


def test_draft_decoded_jpegs_stay_within_tolerance(database, tiny_encoder, image_factory, tmp_path):
    paths = image_factory(tmp_path, 4, size=(400, 300), seed=5)  # decoded at 1/4 scale
    run([tmp_path], database, tiny_encoder)
    stored = rows(database)
    for path in paths:
        assert stored[str(path)][4:6] == (400, 300)
        vector = stored[str(path)][6]  # halfvec: its norm is 1 within half precision
        cosine = float(vector @ reference(tiny_encoder, path) / np.linalg.norm(vector))
        assert cosine >= 1 - DRAFT_TOLERANCE


def test_worker_processes_give_identical_rows(database, tiny_encoder, image_factory, tmp_path):
    image_factory(tmp_path / "pics", 20, seed=2)
    summary = run([tmp_path / "pics"], database, tiny_encoder, workers=2, batch_size=8)
    assert summary.new == 20
    pooled = rows(database)
    inline = {p: tiny_encoder.encode_pil([Image.open(p).convert("RGB")])[0] for p in pooled}
    for path, row in pooled.items():
        # Batches of 8 and of 1 differ below 1e-6 in float32, which may round to the next
        # half (one ulp: 2**-10 relative).
        np.testing.assert_allclose(row[6], as_stored(inline[path]), rtol=2**-10, atol=1e-6)


def test_unchanged_rerun_loads_no_model(
    database, tiny_encoder, image_factory, tmp_path, monkeypatch
):
    image_factory(tmp_path, 6)
    run([tmp_path], database, tiny_encoder)
    before = rows(database)

    def refuse(*args, **kwargs):
        raise AssertionError("model loaded on an unchanged tree")

    monkeypatch.setattr("clipdb.encoders.load_encoder", refuse)
    summary = ingest([tmp_path], database=database, model=TINY_MODEL, pretrained="none",
                     progress=False)  # fmt: skip
    assert (summary.found, summary.unchanged, summary.new, summary.images_per_s) == (6, 6, 0, 0)
    assert {p: r[:6] for p, r in rows(database).items()} == {p: r[:6] for p, r in before.items()}


def test_moved_file_is_repointed_without_encoding(database, tiny_encoder, image_factory, tmp_path):
    paths = image_factory(tmp_path / "a", 3)
    run([tmp_path], database, tiny_encoder)
    before = rows(database)
    target = tmp_path / "b" / "renamed.jpg"
    target.parent.mkdir()
    shutil.move(paths[0], target)
    summary = run([tmp_path], database, NoEncode(tiny_encoder))
    assert (summary.moved, summary.new, summary.unchanged) == (1, 0, 2)
    after = rows(database)
    assert str(paths[0]) not in after
    assert after[str(target)][0] == before[str(paths[0])][0]  # same row, same id
    np.testing.assert_array_equal(after[str(target)][6], before[str(paths[0])][6])


def test_copy_of_an_existing_file_is_encoded_not_moved(
    database, tiny_encoder, image_factory, tmp_path
):
    paths = image_factory(tmp_path, 2)
    run([tmp_path], database, tiny_encoder)
    shutil.copy(paths[0], tmp_path / "copy.jpg")
    summary = run([tmp_path], database, tiny_encoder)
    assert (summary.new, summary.moved) == (1, 0)
    assert len(rows(database)) == 3


def test_changed_file_is_reencoded_and_touched_file_is_not(
    database, tiny_encoder, image_factory, tmp_path
):
    paths = image_factory(tmp_path, 3)
    run([tmp_path], database, tiny_encoder)
    before = rows(database)
    os.utime(paths[1], ns=(1, 1_000_000_000))  # new mtime, same bytes
    summary = run([tmp_path], database, NoEncode(tiny_encoder))
    assert (summary.unchanged, summary.updated) == (3, 0)
    assert rows(database)[str(paths[1])][3] == 1_000_000_000

    image_factory(tmp_path, 1, seed=99, prefix="img", size=(80, 80))  # overwrites img_0000
    summary = run([tmp_path], database, tiny_encoder)
    assert (summary.updated, summary.new, summary.unchanged) == (1, 0, 2)
    after = rows(database)
    assert after[str(paths[0])][0] == before[str(paths[0])][0]
    assert after[str(paths[0])][4:6] == (80, 80)
    np.testing.assert_allclose(
        after[str(paths[0])][6], as_stored(reference(tiny_encoder, paths[0])), atol=1e-6
    )


def test_prune_deletes_rows_of_vanished_files_only_when_asked(
    database, tiny_encoder, image_factory, tmp_path
):
    inside = image_factory(tmp_path / "tree", 3)
    outside = image_factory(tmp_path / "elsewhere", 1)
    run([tmp_path / "tree", tmp_path / "elsewhere"], database, tiny_encoder)
    inside[0].unlink()
    outside[0].unlink()
    summary = run([tmp_path / "tree"], database, NoEncode(tiny_encoder))
    assert summary.pruned == 0 and len(rows(database)) == 4
    summary = run([tmp_path / "tree"], database, NoEncode(tiny_encoder), prune=True)
    assert summary.pruned == 1
    assert sorted(rows(database)) == sorted([str(inside[1]), str(inside[2]), str(outside[0])])


def test_bad_files_are_skipped_with_reasons_and_counted(
    database, tiny_encoder, image_factory, tmp_path, capsys
):
    good = image_factory(tmp_path, 2)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "random.png").write_bytes(np.random.default_rng(0).bytes(3000))
    (tmp_path / "text.jpg").write_text("this is not a picture")
    data = good[0].read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (300, 300)).save(tmp_path / "bomb.png")  # over --max-pixels below
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "parent").symlink_to(tmp_path)
    os.mkfifo(tmp_path / "fifo.jpg")
    image_factory(tmp_path / "folder.jpg", 1, prefix="inside")  # a directory named like an image
    summary = ingest([str(tmp_path)], database=database, encoder=tiny_encoder, workers=0,
                     progress=False, max_pixels=200 * 200)  # fmt: skip
    assert summary.skipped == {
        files.EMPTY: 1,
        files.NOT_IMAGE: 2,
        files.CORRUPT: 1,
        files.TOO_LARGE: 1,
        files.BROKEN_SYMLINK: 1,
        files.SYMLINK_LOOP: 1,
        files.NOT_REGULAR: 1,
    }
    assert summary.new == 3  # the two good files and the one inside folder.jpg/
    total = summary.new + summary.updated + summary.moved + summary.unchanged
    assert summary.found == total + sum(summary.skipped.values())
    err = capsys.readouterr().err
    assert f"skipping {tmp_path / 'empty.jpg'}: empty file\n" in err
    assert f"skipping {tmp_path / 'truncated.jpg'}: {files.CORRUPT}\n" in err
    assert err.count("skipping ") == 8


def test_unreadable_file_is_skipped_simulated(
    database, tiny_encoder, image_factory, tmp_path, monkeypatch
):
    """As root nothing is unreadable; a PermissionError from os.open() stands in for mode 000
    (test_files.py checks the real thing as user nobody)."""
    paths = image_factory(tmp_path, 2)
    real_open = os.open

    def guarded_open(path, *args, **kwargs):
        if str(path) == str(paths[0]):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("os.open", guarded_open)
    summary = run([tmp_path], database, tiny_encoder)
    assert summary.skipped == {files.PERMISSION_DENIED: 1} and summary.new == 1


def test_special_images_are_handled_not_skipped(database, tiny_encoder, tmp_path):
    folder = tmp_path / "ünïcode dir with spaces"
    folder.mkdir()
    base = Image.radial_gradient("L").resize((64, 48)).convert("RGB")
    exif = Image.Exif()
    exif[decode.ORIENTATION_TAG] = 6
    base.save(folder / "rotated.jpg", exif=exif)
    base.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257).save(folder / "deep.png")
    base.convert("RGBA").save(folder / "alpha.png")
    base.convert("P").save(folder / "palette.gif")
    base.convert("L").save(folder / "gray.png")
    frames = [base, base.rotate(90)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    base.save(folder / "smile 😀.png")
    summary = run([folder], database, tiny_encoder)
    assert summary.skipped == {} and summary.new == 8
    stored = rows(database)
    assert stored[str(folder / "rotated.jpg")][4:6] == (48, 64)
    for name in ("rotated.jpg", "cmyk.jpg", "palette.gif", "gray.png", "smile 😀.png"):
        path = folder / name
        np.testing.assert_allclose(
            stored[str(path)][6], as_stored(reference(tiny_encoder, path)), atol=1e-5
        )
    gray = reference(tiny_encoder, folder / "gray.png")
    for name in ("deep.png", "alpha.png"):  # 16-bit scaled to 8-bit; opaque alpha over white
        assert float(stored[str(folder / name)][6] @ gray) > 0.999


def test_search_sees_each_batch_as_it_commits(database, tiny_encoder, image_factory, tmp_path):
    image_factory(tmp_path, 12)
    first_batch_written = threading.Event()
    release = threading.Event()
    encode = tiny_encoder.encode_images
    calls = []

    def slow_encode(pixels):
        calls.append(len(pixels))
        if len(calls) == 2:  # the first batch is with the writer: hold the second one
            first_batch_written.wait(10)
            release.wait(10)
        return encode(pixels)

    encoder = dataclasses.replace(tiny_encoder)
    object.__setattr__(encoder, "encode_images", slow_encode)
    worker = threading.Thread(target=lambda: run([tmp_path], database, encoder, batch_size=4))
    worker.start()
    try:
        seen = 0
        with database.connect(autocommit=True) as conn:
            deadline = time.monotonic() + 20
            while seen == 0 and time.monotonic() < deadline:
                models = conn.execute("SELECT id, architecture, pretrained, dim FROM clipdb.models")
                for row in models.fetchall():
                    hits = search_vector(conn, Model(*row), np.ones(32, np.float32), k=50)
                    seen = len(hits)
                time.sleep(0.05)
            first_batch_written.set()
            assert seen == 4  # one whole batch, searchable while ingest is still running
            release.set()
            worker.join(30)
            model = Model(
                *conn.execute(
                    "SELECT id, architecture, pretrained, dim FROM clipdb.models"
                ).fetchone()
            )
            assert len(search_vector(conn, model, np.ones(32, np.float32), k=50)) == 12
    finally:
        first_batch_written.set()
        release.set()
        worker.join(30)


def test_concurrent_ingesters_never_duplicate_rows(database, tiny_encoder, image_factory, tmp_path):
    image_factory(tmp_path / "a", 10, seed=1)
    image_factory(tmp_path / "b", 10, seed=2)
    errors: list[BaseException] = []

    def go(paths) -> None:
        try:
            run(paths, database, tiny_encoder, batch_size=3)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [
        threading.Thread(target=go, args=([tmp_path],)),
        threading.Thread(target=go, args=([tmp_path / "a", tmp_path / "b"],)),
        threading.Thread(target=go, args=([tmp_path / "b"],)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    with database.connect() as conn:
        assert conn.execute(
            "SELECT count(*), count(DISTINCT path) FROM clipdb.images"
        ).fetchone() == (20, 20)


def test_interrupted_run_keeps_whole_batches_and_rerun_completes(
    database, tiny_encoder, image_factory, tmp_path
):
    image_factory(tmp_path, 10)
    encode = tiny_encoder.encode_images
    calls = []

    def interrupted(pixels):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return encode(pixels)

    encoder = dataclasses.replace(tiny_encoder)
    object.__setattr__(encoder, "encode_images", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run([tmp_path], database, encoder, batch_size=3)
    assert len(rows(database)) == 6  # two whole batches
    summary = run([tmp_path], database, tiny_encoder, batch_size=3)
    assert (summary.new, summary.unchanged) == (4, 6)


def test_cli_json_summary_and_text_summary(database, image_factory, tmp_path, capsys):
    image_factory(tmp_path, 3)
    args = [str(tmp_path), "--model", TINY_MODEL, "--pretrained", "none", "--workers", "0"]
    assert main([*args, "--json"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out)
    assert list(summary) == SUMMARY_KEYS and out.count("\n") == 1
    assert (summary["found"], summary["new"], summary["skipped"]) == (3, 3, {})
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("found 3, new 0, updated 0, moved 0, unchanged 3, skipped 0, pruned 0, ")
    assert out.endswith(" s\n") and "images/s" not in out  # nothing encoded: no rate


def test_the_bar_is_labelled_and_shows_the_summarys_rate(monkeypatch) -> None:
    import io
    import time

    from clipdb.ingest.options import images_per_s, rate_text
    from clipdb.ingest.pipeline import EncodingBar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    bar = EncodingBar(2000, True, started=time.perf_counter() - 1000)
    bar.update(1000, written=1000)
    bar.close()
    assert images_per_s(1000, 1000.0) == 1.0
    assert screen.getvalue().rstrip().endswith(f", {rate_text(1.0)}]")
    assert "encoding:  50%|" in screen.getvalue()


def test_cli_usage_errors_exit_2(database, tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "--model", TINY_MODEL, "--pretrained", "none"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(tmp_path), "--model", "no-such-model", "--pretrained", "none"]) == 2
    assert main([]) == 2


@pytest.mark.slow
def test_cli_end_to_end_subprocess(database, image_factory, tmp_path):
    from helpers import run_module

    image_factory(tmp_path, 4)
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    result = run_module("clipdb.ingest", str(tmp_path), "--model", TINY_MODEL,
                        "--pretrained", "none", "--json", "--workers", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["new"], summary["skipped"]) == (4, {files.NOT_IMAGE: 1})
    assert f"skipping {tmp_path / 'bad.jpg'}: not an image" in result.stderr


# `python -m clipdb.ingest` with Ctrl-C handled as at a terminal: a test run started in the
# background of a shell without job control (`tests &`, nohup) ignores SIGINT, and Python
# keeps an inherited SIG_IGN, so SIGINT would never reach the watch loop.
WITH_CTRL_C = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('clipdb.ingest', run_name='__main__', alter_sys=True)"
)


@pytest.mark.slow
def test_watch_indexes_new_files_and_stops_cleanly_on_ctrl_c(database, image_factory, tmp_path):
    image_factory(tmp_path, 1)
    process = subprocess.Popen(
        [sys.executable, "-c", WITH_CTRL_C, str(tmp_path), "--watch", "--prune",
         "--interval", "0.3", "--model", TINY_MODEL, "--pretrained", "none", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip
    try:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        assert first["new"] == 1
        added = image_factory(tmp_path, 1, seed=8, prefix="later")[0]
        appeared = time.monotonic()
        second = json.loads(process.stdout.readline())
        assert second["new"] == 1 and time.monotonic() - appeared < 10
        assert str(added) in rows(database)
        added.unlink()
        third = json.loads(process.stdout.readline())
        assert third["pruned"] == 1
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 0
        assert process.stderr is not None
        err = process.stderr.read()
        assert f"watching {tmp_path} for changes every 0.3 s (pruning deleted files)" in err
        assert "press Ctrl-C to stop" in err and "stopped watching" in err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
