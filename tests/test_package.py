"""The distribution: the wheel carries the migrations, and an installed clipdb migrates."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from clipdb.db import Database
from clipdb.db.migrate import head_from_files

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (found,) = out.glob("clipdb_pg-*.whl")
    return found


@pytest.mark.slow
def test_wheel_holds_migrations_static_files_and_the_command(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "clipdb/migrations/env.py" in names
    assert "clipdb/migrations/script.py.mako" in names
    for revision in (ROOT / "migrations" / "versions").glob("0*.py"):
        assert f"clipdb/migrations/versions/{revision.name}" in names
    assert "clipdb/static/index.html" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "clipdb = clipdb.__main__:main" in text


@pytest.mark.slow
def test_installed_wheel_migrates_a_fresh_database(
    wheel: Path, empty_database: Database, tmp_path: Path
) -> None:
    """Not editable: the installed package alone (no checkout on the path) migrates."""
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
         str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    code = (
        "import clipdb, sys\n"
        "from clipdb.db import Database\n"
        "from clipdb.db.migrate import migrations_dir, upgrade\n"
        "print(clipdb.__file__)\nprint(migrations_dir())\n"
        "print(upgrade(Database(url=sys.argv[1])))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", code, empty_database.url],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    module_file, migrations, revision = result.stdout.split()
    assert module_file.startswith(str(site)) and migrations.startswith(str(site))
    assert revision == head_from_files()
