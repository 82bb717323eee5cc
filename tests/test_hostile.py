"""One tree of hostile files among good ones, through ``python -m clipdb.ingest`` end to end.

tests/test_ingest.py covers the same skip reasons through the library with a lowered
``max_pixels`` and a simulated permission error; here the defaults are real (Pillow's
decompression-bomb limit), the file really is mode 000, and ingest runs as an unprivileged
user (as root it drops to the embedded server's system user, which can reach the socket).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_MODEL, make_images, table
from PIL import Image

from clipdb import decode, files
from clipdb.db.embedded_access import SYSTEM_USER_WHEN_ROOT

REPO = Path(__file__).parents[1]
CLI = [sys.executable, "-m", "clipdb.ingest", "--model", TINY_MODEL, "--pretrained", "none",
       "--workers", "0", "--json"]  # fmt: skip
BAD = {
    "truncated.jpg": files.CORRUPT,
    "empty.jpg": files.EMPTY,
    "random.png": files.NOT_IMAGE,
    "text.jpg": files.NOT_IMAGE,
    "bomb.png": files.TOO_LARGE,
    "30000x30000.png": files.TOO_LARGE,
    "broken.jpg": files.BROKEN_SYMLINK,
    "loop.jpg": files.SYMLINK_LOOP,
    "locked.jpg": files.PERMISSION_DENIED,
    "fifo.jpg": files.NOT_REGULAR,
    "vector.jpg": files.NOT_IMAGE,  # EPS content: never handed to Ghostscript
    "fuzzed.png": files.NOT_IMAGE,  # DDS content whose decoder raised NotImplementedError
}
GOOD = [
    "img_0000.jpg", "img_0001.jpg", "img_0002.jpg", "cmyk.jpg", "16bit.png", "animated.gif",
    "rotated.jpg", "ünï cödé 😀.jpg", "dir with spaces/ok.png", "x.jpg/inside.jpg",
    "latin-1 caf\\xe9.jpg",  # stored (and printed) with the byte that is not UTF-8 escaped
]  # fmt: skip


def png_claiming(width: int, height: int) -> bytes:
    """A tiny real PNG whose header says ``width`` x ``height`` (CRC fixed up)."""
    import io

    buffer = io.BytesIO()
    Image.new("L", (2, 2)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


@pytest.fixture
def hostile_tree() -> Iterator[Path]:
    """Good and bad files side by side, readable by an unprivileged user (not tmp_path: 0700)."""
    root = Path(tempfile.mkdtemp(prefix="clipdb-hostile-"))
    root.chmod(0o755)
    good = make_images(root, 3, size=(64, 48), seed=4)
    base = Image.open(good[0]).convert("RGB")
    base.convert("CMYK").save(root / "cmyk.jpg")
    gray = np.asarray(base.convert("L"), dtype=np.uint16) * 257
    Image.fromarray(gray).save(root / "16bit.png")
    base.save(root / "animated.gif", save_all=True, append_images=[base.rotate(90)])
    exif = Image.Exif()
    exif[decode.ORIENTATION_TAG] = 6
    base.save(root / "rotated.jpg", exif=exif)
    base.save(root / "ünï cödé 😀.jpg")
    base.save(os.fsdecode(os.fsencode(str(root)) + b"/latin-1 caf\xe9.jpg"), "JPEG")
    (root / "dir with spaces").mkdir()
    base.save(root / "dir with spaces" / "ok.png")
    (root / "x.jpg").mkdir()  # a directory named like an image: walked, not decoded
    base.save(root / "x.jpg" / "inside.jpg")

    data = good[0].read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "random.png").write_bytes(np.random.default_rng(1).bytes(4096))
    (root / "text.jpg").write_text("GIF89a? no: just text named like a picture\n")
    Image.new("1", (10_000, 10_000)).save(root / "bomb.png")  # 12 kB -> 100 megapixels
    (root / "30000x30000.png").write_bytes(png_claiming(30_000, 30_000))
    (root / "broken.jpg").symlink_to(root / "nowhere.jpg")
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    (root / "locked.jpg").write_bytes(data)
    (root / "locked.jpg").chmod(0o000)
    os.mkfifo(root / "fifo.jpg")
    (root / "vector.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n")
    dds = struct.pack("<7I", 124, 0x1007, 4, 4, 0, 0, 0) + bytes(44)
    dds += struct.pack("<2I", 32, 4) + b"ZZZZ" + bytes(40)
    (root / "fuzzed.png").write_bytes(b"DDS " + dds + bytes(64))
    assert (root / "bomb.png").stat().st_size < 100_000
    assert (root / "30000x30000.png").stat().st_size < 200
    yield root
    shutil.rmtree(root, ignore_errors=True)


def unprivileged() -> list[str]:
    """A command prefix that runs as a user for whom mode 000 really means unreadable."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root without setpriv: cannot drop privileges")
    user = pwd.getpwnam(SYSTEM_USER_WHEN_ROOT)
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]


def ingest_cli(tree: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(tree)}  # nothing of root's home is needed
    return subprocess.run(
        [*unprivileged(), *CLI, str(tree), *extra],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )  # fmt: skip


@pytest.mark.slow
def test_hostile_tree_skips_every_bad_file_with_its_reason_and_indexes_every_good_one(
    database, hostile_tree
):
    expected_skips: dict[str, int] = {}
    for reason in BAD.values():
        expected_skips[reason] = expected_skips.get(reason, 0) + 1

    # --strict: the good files are committed, every skip reported, then exit 1.
    strict = ingest_cli(hostile_tree, "--strict")
    assert strict.returncode == 1, strict.stderr
    summary = json.loads(strict.stdout)
    assert summary["skipped"] == expected_skips
    assert summary["new"] == len(GOOD)
    for name, reason in BAD.items():
        assert f"skipping {hostile_tree / name}: {reason}\n" in strict.stderr
    assert strict.stderr.count("skipping ") == len(BAD)
    assert strict.stderr.endswith(f"error: {len(BAD)} file(s) skipped (--strict)\n")
    assert "Traceback" not in strict.stderr
    stored = table(database)
    assert sorted(stored) == sorted(str(hostile_tree / name) for name in GOOD)
    assert stored[str(hostile_tree / "rotated.jpg")][3:5] == (48, 64)  # EXIF-rotated upright
    assert stored[str(hostile_tree / "16bit.png")][3:5] == (64, 48)

    # Without --strict the same tree is a success; nothing is re-encoded or lost.
    plain = ingest_cli(hostile_tree)
    assert plain.returncode == 0, plain.stderr
    summary = json.loads(plain.stdout)
    assert (summary["new"], summary["unchanged"]) == (0, len(GOOD))
    assert summary["skipped"] == expected_skips
    # Files remembered as bad are counted in one line; what the scan itself skips (links,
    # special files: no content to remember) is listed again.
    known = summary["known_bad"]
    assert known and plain.stderr.count("skipping ") == len(BAD) - known
    assert f"{known} known bad files, unchanged; --verbose lists them\n" in plain.stderr
    assert sorted(table(database)) == sorted(stored)


def test_strict_with_nothing_skipped_exits_0_and_strict_watch_is_a_usage_error(
    database, tmp_path, capsys
):
    from clipdb.ingest.__main__ import main

    make_images(tmp_path, 2)
    args = [str(tmp_path), "--model", TINY_MODEL, "--pretrained", "none", "--workers", "0"]
    assert main([*args, "--strict"]) == 0
    assert main([*args, "--strict", "--watch"]) == 2
    assert "--strict cannot be combined with --watch" in capsys.readouterr().err
