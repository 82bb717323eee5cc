"""``clipdb dupes --script FILE``: the script is always a new file of the caller's, never one
another user made at that name, never written through a link; bad names fail in one line."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import TINY_MODEL, make_images

from clipdb.dupes.__main__ import main as dupes_main
from clipdb.ingest import ingest

MODEL_ARGS = ["--model", TINY_MODEL, "--pretrained", "none"]


def run_dupes(capsys, *args: str) -> tuple[int, str]:
    code = dupes_main([*args, *MODEL_ARGS])
    return code, capsys.readouterr().err


@pytest.fixture
def library(database, tiny_encoder, tmp_path) -> Path:
    """An index with one exact duplicate pair; returns a --move-to folder outside it."""
    (picture,) = make_images(tmp_path / "lib", 1)
    shutil.copyfile(picture, tmp_path / "lib" / "copy.jpg")
    ingest([str(tmp_path / "lib")], database=database, encoder=tiny_encoder, workers=0,
           progress=False)  # fmt: skip
    return tmp_path / "moved"


@pytest.fixture
def other_user() -> Iterator[tuple[str, int]]:
    """A real second OS user (name, uid), removed afterwards; the tests run as root."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd")
    name = f"clipdbother{os.getpid() % 100000}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True)
    try:
        yield name, int(subprocess.run(["id", "-u", name], capture_output=True,
                                       check=True, text=True).stdout)  # fmt: skip
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder every user may write in, sticky like /tmp."""
    folder = Path(tempfile.mkdtemp(prefix="clipdb-shared-", dir="/tmp"))
    folder.chmod(0o1777)
    yield folder
    shutil.rmtree(folder)


def as_user(user: str, command: str, cwd: Path) -> None:
    subprocess.run(["runuser", "-u", user, "--", "sh", "-c", command], cwd=cwd, check=True)


def test_a_script_another_user_created_is_refused_and_left_as_it_was(
    library, other_user, shared, capsys
):
    user, uid = other_user
    as_user(user, "umask 0; echo 'their content' > move.sh", shared)
    script = shared / "move.sh"
    before = script.stat()
    assert (before.st_uid, stat.S_IMODE(before.st_mode)) == (uid, 0o666)
    code, err = run_dupes(capsys, "--script", str(script), "--move-to", str(library))
    assert code == 1 and "exists; pass --force" in err and len(err.splitlines()) == 1
    after = script.stat()
    assert (after.st_ino, after.st_uid, stat.S_IMODE(after.st_mode)) == (
        before.st_ino, uid, 0o666
    )  # fmt: skip
    assert script.read_text() == "their content\n"


def test_a_link_at_the_script_name_is_refused_even_with_force(
    library, other_user, shared, tmp_path, capsys
):
    user, _ = other_user
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    as_user(user, f"ln -s '{target}' move.sh", shared)
    for extra in ([], ["--force"]):
        code, err = run_dupes(
            capsys, "--script", str(shared / "move.sh"), "--move-to", str(library), *extra
        )
        assert code == 1 and "symbolic link" in err and len(err.splitlines()) == 1
        assert (shared / "move.sh").is_symlink() and target.read_text() == "keep me\n"


def test_force_replaces_the_callers_file_with_a_new_private_inode(library, tmp_path, capsys):
    script = tmp_path / "move.sh"
    script.write_text("old\n")
    script.chmod(0o666)
    old_inode = script.stat().st_ino
    code, err = run_dupes(capsys, "--script", str(script), "--move-to", str(library), "--force")
    assert code == 0, err
    info = script.stat()
    assert info.st_ino != old_inode and info.st_uid == os.geteuid()
    assert stat.S_IMODE(info.st_mode) == 0o755
    assert script.read_bytes().startswith(b"#!/bin/sh") and b"copy.jpg" in script.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize(
    ("name", "extra", "message"),
    [
        ("/nonexistent/x.sh", [], "no folder /nonexistent"),
        ("/proc/version", [], "exists; pass --force"),
        ("/proc/version", ["--force"], "cannot write --script /proc/version"),
        ("/dev/full", [], "not a regular file"),
    ],
)
def test_unwritable_script_names_fail_in_one_line(library, capsys, name, extra, message):
    code, err = run_dupes(capsys, "--script", name, "--move-to", str(library), *extra)
    assert code == 1 and message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
