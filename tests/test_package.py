"""The distribution: the wheel holds every module of the tree, its installed commands work
outside the checkout, and an editable install wins over a folder named clipdb."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest
from helpers import (
    CHECKOUT,
    TINY_MODEL,
    copy_checkout,
    fresh_venv,
    make_images,
    outside_env,
    pip_install,
)

from clipdb.__main__ import COMMANDS
from clipdb.db import Database
from clipdb.db.migrate import head_from_files


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a clean copy of the tree: a build/ folder left in the checkout by an earlier
    build would hand the wheel modules that the package list no longer names."""
    source = copy_checkout(tmp_path_factory.mktemp("source") / "clipdb-pg")
    out = tmp_path_factory.mktemp("wheel")
    build = ["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out)]
    subprocess.run(
        [sys.executable, *build, str(source)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (found,) = out.glob("clipdb_pg-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed (not editable): its bin folder."""
    venv = tmp_path_factory.mktemp("installed")
    pip_install(fresh_venv(venv), str(wheel))
    return venv / "bin"


def tree_modules() -> set[str]:
    """Every module of the tree, named as the wheel should hold it."""
    names = set()
    for folder, shipped_as in (("clipdb", "clipdb"), ("migrations", "clipdb/migrations")):
        for path in (CHECKOUT / folder).rglob("*.py"):
            names.add(f"{shipped_as}/{path.relative_to(CHECKOUT / folder).as_posix()}")
    return names


@pytest.mark.slow
def test_wheel_holds_every_module_static_file_and_the_command(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert sorted(tree_modules() - names) == []
    assert "clipdb/dupes/__init__.py" in names  # once left out of a hand-written list
    assert "clipdb/migrations/script.py.mako" in names
    assert "clipdb/static/index.html" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "clipdb = clipdb.__main__:main" in text


@pytest.mark.slow
def test_installed_wheel_migrates_a_fresh_database(
    installed: Path, empty_database: Database, tmp_path: Path
) -> None:
    """The installed package alone (no checkout on the path) migrates."""
    code = (
        "import clipdb, sys\n"
        "from clipdb.db import Database\n"
        "from clipdb.db.migrate import migrations_dir, upgrade\n"
        "print(clipdb.__file__)\nprint(migrations_dir())\n"
        "print(upgrade(Database(url=sys.argv[1])))\n"
    )
    result = subprocess.run(
        [str(installed / "python"), "-c", code, empty_database.url],
        capture_output=True,
        text=True,
        env=outside_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    module_file, migrations, revision = result.stdout.split()
    venv = installed.parent
    assert Path(module_file).is_relative_to(venv) and Path(migrations).is_relative_to(venv)
    assert revision == head_from_files()


@pytest.mark.slow
def test_every_command_runs_from_the_installed_wheel(
    installed: Path, database: Database, tmp_path: Path
) -> None:
    """Each command's --help and one real run of each, by the installed `clipdb` script in a
    folder outside the checkout, with the tiny model and random weights."""
    env = outside_env(
        CLIPDB_DATABASE_URL=database.url, CLIPDB_MODEL=TINY_MODEL, CLIPDB_PRETRAINED="none"
    )

    def clipdb(*args: str) -> str:
        result = subprocess.run(
            [str(installed / "clipdb"), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )
        assert result.returncode == 0, (args, result.stderr)
        return result.stdout

    where = subprocess.run(
        [str(installed / "python"), "-c", "import clipdb.dupes; print(clipdb.dupes.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert Path(where.stdout.strip()).is_relative_to(installed.parent), where.stderr
    assert all(f"\n  {command} " in clipdb("--help") for command in COMMANDS)
    for command in COMMANDS:
        assert clipdb(command, "--help").startswith(f"usage: clipdb {command} ")

    photos = make_images(tmp_path / "photos", 4)
    shutil.copy(photos[0], tmp_path / "photos" / "copy.jpg")
    assert json.loads(clipdb("ingest", str(tmp_path / "photos"), "--json"))["found"] == 5
    hits = clipdb("search", "--text", "a red car", "-k", "5", "--hide-duplicates", "--paths")
    assert len(hits.splitlines()) == 4  # the copy and its original are one result
    (group,) = json.loads(clipdb("dupes", "--tier", "exact", "--json"))
    assert len(group["images"]) == 2
    assert len(json.loads(clipdb("embed", "--text", "a red car", "--json"))) == 32
    assert f"{TINY_MODEL} (none), dim 32, 5 images" in clipdb("db", "status")

    server = subprocess.Popen(
        [str(installed / "clipdb"), "serve", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert server.stderr is not None
        banner = next(line for line in server.stderr if line.startswith("serving on "))
        url = banner.split()[2].rstrip("/")  # listening already when the banner is printed
        with urllib.request.urlopen(f"{url}/api/duplicates?tier=exact", timeout=60) as reply:
            (served,) = json.load(reply)
        assert len(served["images"]) == 2
    finally:
        server.terminate()
        server.communicate(timeout=60)


@pytest.mark.slow
def test_editable_install_wins_over_a_folder_named_clipdb(tmp_path: Path) -> None:
    """A checkout cloned as `clipdb/` and a script beside it: `pip install -e` of that checkout
    must import the package, not the checkout folder as an empty namespace package."""
    checkout = copy_checkout(tmp_path / "clipdb")
    python = fresh_venv(tmp_path / "venv")
    pip_install(python, "-e", str(checkout))
    script = tmp_path / "find_similar.py"
    script.write_text("import clipdb\nfrom clipdb import ClipDB\nprint(clipdb.__file__)\n")
    result = subprocess.run(
        [str(python), str(script)],
        capture_output=True,
        text=True,
        env=outside_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == checkout / "clipdb" / "__init__.py"
