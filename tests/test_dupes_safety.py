"""clipdb dupes acting safely: the camera original is kept, two names of one file are one
file, and the move script re-checks each group when it runs (real files, real /bin/sh)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import TINY_MODEL, make_images
from PIL import ExifTags, Image

from clipdb.dupes.__main__ import main as dupes_main
from clipdb.ingest import ingest

MODEL_ARGS = ["--model", TINY_MODEL, "--pretrained", "none"]


def run_ingest(database, encoder, root):
    ingest([str(root)], database=database, encoder=encoder, workers=0, progress=False)


def run_dupes(capsys, *args):
    code = dupes_main([*args, *MODEL_ARGS])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def camera_exif(*, gps: bool = True) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Make], exif[ExifTags.Base.Model] = "NIKON", "COOLPIX P6000"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2008:10:22 16:28:39"
    if gps:
        exif.get_ifd(ExifTags.IFD.GPSInfo).update(
            {1: "N", 2: (43.0, 28.0, 2.8), 3: "E", 4: (11.0, 53.0, 6.5)}
        )
    return exif


def camera_photo(path: Path, *, seed: int = 4, exif: Image.Exif | None = None) -> Image.Image:
    (source,) = make_images(path.parent / f".src{seed}", 1, size=(320, 240), seed=seed)
    pixels = Image.open(source).convert("RGB")
    pixels.save(path, quality=92, exif=exif if exif is not None else camera_exif())
    shutil.rmtree(source.parent)
    return pixels


def groups_json(capsys, *args):
    code, out, err = run_dupes(capsys, "--json", *args)
    assert code == 0, err
    return json.loads(out)


def test_the_camera_original_is_kept_over_bigger_copies_and_says_why(
    database, tiny_encoder, tmp_path, capsys
):
    """A PNG conversion (same pixels, more bytes, no EXIF) and a later upscaled copy that
    kept the EXIF (more pixels) are copies: the camera's JPEG is kept."""
    root = tmp_path / "lib"
    root.mkdir()
    pixels = camera_photo(root / "DSCN0010.jpg")
    pixels.save(root / "a.png")  # a conversion: more bytes, no EXIF
    pixels.resize((480, 360), Image.Resampling.LANCZOS).save(  # upscaled, EXIF kept
        root / "b_bigger.jpg", quality=95, exif=camera_exif()
    )
    run_ingest(database, tiny_encoder, root)
    [group] = groups_json(capsys, "--tier", "exact,near")
    assert {Path(m["image_path"]).name for m in group["images"]} == {
        "DSCN0010.jpg", "a.png", "b_bigger.jpg"
    }  # fmt: skip
    kept = [m for m in group["images"] if m["keep"]]
    assert [Path(m["image_path"]).name for m in kept] == ["DSCN0010.jpg"]
    assert kept[0]["reason"] == "oldest of the files with camera metadata"
    assert kept[0]["metadata"] == ["date", "camera", "GPS"]
    code, out, _ = run_dupes(capsys, "--tier", "exact,near")
    assert "kept: oldest of the files with camera metadata" in out
    # without the upscaled copy: the PNG loses on metadata
    (root / "b_bigger.jpg").unlink()
    run_ingest_prune(database, tiny_encoder, root)
    [group] = groups_json(capsys, "--tier", "exact,near")
    [kept] = [m for m in group["images"] if m["keep"]]
    assert kept["reason"] == "has camera metadata (date, camera, GPS)"


def run_ingest_prune(database, encoder, root):
    ingest([str(root)], database=database, encoder=encoder, workers=0, progress=False,
           prune=True)  # fmt: skip


def test_a_dupe_with_metadata_the_kept_file_lacks_is_flagged(
    database, tiny_encoder, tmp_path, capsys
):
    root = tmp_path / "lib"
    root.mkdir()
    pixels = camera_photo(root / "original.jpg", exif=camera_exif(gps=False))
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.GPSInfo).update(
        {1: "N", 2: (43.0, 28.0, 2.8), 3: "E", 4: (11.0, 53.0, 6.5)}
    )
    pixels.save(root / "geotagged copy.jpg", quality=80, exif=exif)
    run_ingest(database, tiny_encoder, root)
    [group] = groups_json(capsys, "--tier", "near")
    [dupe] = [m for m in group["images"] if not m["keep"]]
    assert dupe["extra_metadata"] == ["GPS"]
    code, out, _ = run_dupes(capsys, "--tier", "near")
    assert "note: has GPS that the kept file lacks" in out
    script = tmp_path / "move.sh"
    code, _, err = run_dupes(capsys, "--tier", "near", "--script", str(script),
                             "--move-to", str(tmp_path / "review"))  # fmt: skip
    assert code == 0, err
    assert b"has GPS that the kept file lacks" in script.read_bytes()


def test_a_symlink_and_its_target_are_one_file_and_never_stranded(
    database, tiny_encoder, tmp_path, capsys
):
    root = tmp_path / "lib"
    root.mkdir()
    pixels = camera_photo(root / "chelsea_original.jpg")
    (root / "c.jpg").symlink_to("chelsea_original.jpg")
    run_ingest(database, tiny_encoder, root)
    assert groups_json(capsys) == []  # a link and its target: not duplicates
    # A PNG conversion, and a link to it: the conversion is a dupe, but moving it would leave
    # the link dangling, so the script leaves it.
    pixels.save(root / "converted.png")
    (root / "a.png").symlink_to("converted.png")
    run_ingest(database, tiny_encoder, root)
    [group] = groups_json(capsys, "--tier", "near")
    names = {Path(m["image_path"]).name: m for m in group["images"]}
    assert set(names) == {"chelsea_original.jpg", "converted.png"}  # one name per file
    assert names["chelsea_original.jpg"]["keep"] and not names["converted.png"]["keep"]
    assert [Path(a).name for a in names["converted.png"]["aliases"]] == ["a.png"]
    script, review = tmp_path / "move.sh", tmp_path / "review"
    code, _, err = run_dupes(capsys, "--tier", "near", "--script", str(script),
                             "--move-to", str(review))  # fmt: skip
    assert code == 0 and "0 moves" in err
    run = subprocess.run(["/bin/sh", str(script)], capture_output=True, check=True)
    assert b"moved 0" in run.stdout
    assert (root / "a.png").resolve().is_file() and (root / "c.jpg").resolve().is_file()


def test_a_link_is_never_kept_over_a_real_copy(database, tiny_encoder, tmp_path, capsys):
    root, elsewhere = tmp_path / "lib", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    camera_photo(elsewhere / "IMG_1.jpg")  # not indexed: only the link to it is
    (root / "a.jpg").symlink_to(elsewhere / "IMG_1.jpg")
    shutil.copy2(elsewhere / "IMG_1.jpg", root / "real copy with a long name.jpg")
    run_ingest(database, tiny_encoder, root)
    [group] = groups_json(capsys, "--tier", "exact")
    [kept] = [m for m in group["images"] if m["keep"]]
    assert Path(kept["image_path"]).name == "real copy with a long name.jpg"
    assert kept["reason"] == "a real file, not a link"


def test_hard_links_are_one_file(database, tiny_encoder, tmp_path, capsys):
    root = tmp_path / "lib"
    root.mkdir()
    camera_photo(root / "photo.jpg")
    os.link(root / "photo.jpg", root / "p.jpg")
    run_ingest(database, tiny_encoder, root)
    assert groups_json(capsys) == []


@pytest.fixture
def pair(database, tiny_encoder, tmp_path, capsys) -> tuple[Path, Path, Path]:
    """An exact pair (the original, a later copy) and a move script for it: (kept, dupe,
    script)."""
    root = tmp_path / "lib"
    root.mkdir()
    camera_photo(root / "photo.jpg")
    shutil.copyfile(root / "photo.jpg", root / "photo copy.jpg")
    run_ingest(database, tiny_encoder, root)
    script = tmp_path / "move.sh"
    code, out, err = run_dupes(capsys, "--script", str(script), "--move-to",
                               str(tmp_path / "review"))  # fmt: skip
    assert code == 0 and out == "" and "1 moves" in err  # only what it wrote is said
    return root / "photo.jpg", root / "photo copy.jpg", script


def run_script(script: Path) -> subprocess.CompletedProcess[bytes]:
    run = subprocess.run(["/bin/sh", str(script)], capture_output=True)
    assert run.returncode == 0, run.stderr
    return run


def test_the_script_moves_an_unchanged_pair(pair, tmp_path):
    kept, dupe, script = pair
    run = run_script(script)
    assert b"moved 1" in run.stdout
    assert kept.exists() and not dupe.exists()
    assert (tmp_path / "review" / dupe.name).exists()


def test_the_script_skips_a_group_whose_kept_file_was_deleted(pair):
    kept, dupe, script = pair
    kept.unlink()
    run = run_script(script)
    assert b"skipped group 1: the kept file is gone" in run.stderr
    assert dupe.exists()  # the last copy stays


def test_the_script_skips_a_group_whose_dupe_was_replaced(pair, tmp_path):
    kept, dupe, script = pair
    recorded = dupe.stat()
    camera_photo(tmp_path / "new.jpg", seed=11)
    os.replace(tmp_path / "new.jpg", dupe)  # a new photo saved under the dupe's name
    run = run_script(script)
    assert b"skipped group 1: a duplicate changed since clipdb dupes ran" in run.stderr
    assert dupe.exists()
    # the same size and time but other bytes: cmp catches it (exact tier)
    data = bytearray(kept.read_bytes())
    data[-3] ^= 0xFF
    dupe.write_bytes(bytes(data))
    os.utime(dupe, ns=(recorded.st_atime_ns, recorded.st_mtime_ns))
    run = run_script(script)
    assert b"no longer has the kept file's bytes" in run.stderr and dupe.exists()


def test_the_script_skips_a_group_whose_dupe_was_touched(pair):
    _, dupe, script = pair
    os.utime(dupe, (1_000_000_000, 1_000_000_000))
    run = run_script(script)
    assert b"changed since clipdb dupes ran (time)" in run.stderr and dupe.exists()


def test_table_columns_stay_aligned_and_csv_says_true_false(
    database, tiny_encoder, tmp_path, capsys
):
    root = tmp_path / "lib"
    root.mkdir()
    pixels = camera_photo(root / "big.jpg")
    pixels.resize((32, 24)).save(root / "tiny.png")
    pixels.save(root / "huge.png")
    run_ingest(database, tiny_encoder, root)
    code, out, _ = run_dupes(capsys, "--tier", "near")
    rows = [line for line in out.splitlines() if line.startswith(("  keep", "  dupe"))]
    assert len(rows) >= 2
    starts = {line.index("/") for line in rows}  # every path starts in the same column
    assert len(starts) == 1
    code, out, _ = run_dupes(capsys, "--csv", "--tier", "near")
    header, *lines = out.splitlines()
    keep = header.split(",").index("keep")
    assert {line.split(",")[keep] for line in lines} == {"true", "false"}
    assert "True" not in out and "False" not in out
