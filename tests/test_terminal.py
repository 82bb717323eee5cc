"""Terminal safety: crafted file names cannot drive the terminal or forge output lines."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TINY_MODEL, index_images, make_images

from clipdb.db import Database
from clipdb.search.__main__ import main
from clipdb.terminal import printable

TINY = ["--model", TINY_MODEL, "--pretrained", "none"]


def test_printable_escapes_controls_bidi_and_undecodable_bytes() -> None:
    assert printable("ünï cödé 😀👍🏽.jpg") == "ünï cödé 😀👍🏽.jpg"
    assert printable("a\x1b]0;owned\x07b") == "a\\x1b]0;owned\\x07b"
    assert printable("x\n/etc/passwd") == "x\\x0a/etc/passwd"
    assert printable("evil\u202egpj.exe") == "evil\\u202egpj.exe"
    assert printable("caf\udce9.png") == "caf\\xe9.png"  # surrogateescape of byte 0xE9


@pytest.fixture
def crafted(database: Database, tiny_encoder, tmp_path: Path) -> Path:
    (good,) = make_images(tmp_path / "lib", 1)
    # Printed raw, ".../lib\x1b[2J\n" + "/etc/passwd" would be a line of its own.
    crafted = tmp_path / "lib\x1b[2J\n" / "etc" / "passwd"
    crafted.parent.mkdir(parents=True)
    good.rename(crafted)
    index_images(database, tiny_encoder, [crafted])
    return crafted


def test_paths_and_table_escape_a_crafted_name(
    crafted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--like", str(crafted), *TINY, "--paths"]) == 0
    out = capsys.readouterr().out
    assert "/etc/passwd" not in out.splitlines() and "\x1b" not in out
    assert out == printable(str(crafted)) + "\n"
    assert main(["--like", str(crafted), *TINY]) == 0
    table = capsys.readouterr().out
    assert "\x1b" not in table and len(table.splitlines()) == 2


def test_null_gives_the_exact_bytes(
    crafted: Path, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    assert main(["--like", str(crafted), *TINY, "--paths", "--null"]) == 0
    assert capfdbinary.readouterr().out == bytes(crafted) + b"\0"


@pytest.mark.parametrize(
    "args", [["--text", ""], ["--text", "   "], ["--text", "x", "--minus", ""]]
)
def test_empty_texts_are_usage_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*args, *TINY]) == 2
    assert "is empty" in capsys.readouterr().err


def test_null_needs_paths(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--text", "x", "--null", *TINY]) == 2
    assert "--null goes with --paths" in capsys.readouterr().err
