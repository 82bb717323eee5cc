"""Everything tests share that is not a fixture: tiny model names, pictures, rows, subprocesses.

Imported as ``helpers`` (pytest puts tests/ on sys.path); conftest.py holds only fixtures.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from clipdb import decode
from clipdb.db import Database
from clipdb.db.embedded import EmbeddedServer, ensure_server, stop_server
from clipdb.db.migrate import upgrade
from clipdb.db.registry import Model, register_model
from clipdb.db.store import ImageRecord, upsert_images
from clipdb.encoders import Encoder

TESTS_DIR = Path(__file__).parent
CHECKOUT = TESTS_DIR.parent
MODEL_CONFIGS = TESTS_DIR / "model_configs"
TINY_MODEL = "clipdb-tiny"  # tests/model_configs/clipdb-tiny.json, 32-d
TINY_WIDE_MODEL = "clipdb-tiny-wide"  # 48-d: a second model of another dimension


@contextmanager
def private_home(prefix: str = "clipdb-test-own-") -> Iterator[Path]:
    """A CLIPDB_HOME for a server of a test's own; its server is stopped and the folder removed
    afterwards. Not under tmp_path: pytest makes that 0700, which the server user (as root)
    cannot enter, and clipdb loosens no directory it did not create."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o711)
    home = base / "home"
    try:
        yield home
    finally:
        stop_server(home)
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def other_user() -> Iterator[Any]:
    """A real second local account (useradd, own group, no home), deleted afterwards: the
    "another local user" of the security tests. Needs root. Yields its pwd entry."""
    import pwd
    import secrets

    name = f"clipdb-other-{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home",
         "--shell", "/usr/sbin/nologin", name],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@contextmanager
def own_server(prefix: str, *, migrate: bool = True) -> Iterator[EmbeddedServer]:
    """A running embedded server in a :func:`private_home`, so stopping or restarting it
    disturbs no other test; migrated to head unless ``migrate`` is False."""
    with private_home(prefix) as home:
        server = ensure_server(home)
        if migrate:
            upgrade(Database(url=server.url()))
        yield server


def make_images(
    directory: Path,
    count: int,
    *,
    size: tuple[int, int] = (96, 72),
    seed: int = 0,
    prefix: str = "img",
    fmt: str = "JPEG",
) -> list[Path]:
    """Distinct, deterministic pictures: coloured shapes on a random background."""
    from PIL import Image, ImageDraw

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    suffix = {"JPEG": ".jpg", "PNG": ".png"}[fmt]
    for index in range(count):
        background = tuple(int(c) for c in rng.integers(0, 256, 3))
        image = Image.new("RGB", size, background)
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, size[0] // 2)), int(rng.integers(0, size[1] // 2))
            x1, y1 = (
                x0 + int(rng.integers(8, size[0] // 2)),
                y0 + int(rng.integers(8, size[1] // 2)),
            )
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                draw.rectangle((x0, y0, x1, y1), fill=fill)
            else:
                draw.ellipse((x0, y0, x1, y1), fill=fill)
        path = directory / f"{prefix}_{index:04d}{suffix}"
        image.save(path, fmt, quality=90) if fmt == "JPEG" else image.save(path, fmt)
        paths.append(path)
    return paths


def run_module(
    module: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args`` end to end; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


def run_into_closed_pipe(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m module args | head`` where head has already gone: the read end of stdout
    is closed before the command starts, so its first write meets a broken pipe."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)


def unit_vectors(count: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def as_stored(vector: np.ndarray) -> np.ndarray:
    """A float32 embedding as clipdb.images stores it (halfvec), read back as float32."""
    return np.asarray(vector, dtype=np.float32).astype(np.float16).astype(np.float32)


def insert_rows(
    conn: Any, architecture: str, dim: int, count: int, *, prefix: str = "/data", seed: int = 0
) -> tuple[Model, np.ndarray, list[str]]:
    """Register a model and insert ``count`` random unit vectors as images under ``prefix``."""
    model = register_model(conn, architecture, "none", dim)
    vectors = unit_vectors(count, dim, seed)
    paths = [f"{prefix}/img_{i:05d}.jpg" for i in range(count)]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO clipdb.images (model_id, path, sha256, size, mtime_ns, width, height,"
            " embedding) VALUES (%s, %s, %s, 1, 1, 1, 1, %s)",
            [
                (model.model_id, path, hashlib.sha256(path.encode()).digest(), vector)
                for path, vector in zip(paths, vectors, strict=True)
            ],
        )
    conn.commit()
    return model, vectors, paths


def index_images(database: Database, encoder: Encoder, paths: list[Path]) -> dict[str, int]:
    """Index ``paths`` the way ingest stores them (absolute paths, the model's embeddings of
    the decoded images); returns {path: image id}."""
    images = [decode.open_image(str(path))[0] for path in paths]
    vectors = encoder.encode_pil(images)
    records = [
        ImageRecord(
            path=str(path.resolve()),
            sha256=hashlib.sha256(path.read_bytes()).digest(),
            size=path.stat().st_size,
            mtime_ns=path.stat().st_mtime_ns,
            width=image.width,
            height=image.height,
            embedding=vector,
        )
        for path, image, vector in zip(paths, images, vectors, strict=True)
    ]
    with database.connect() as conn:
        model = register_model(conn, encoder.architecture, encoder.pretrained, encoder.dim)
        upsert_images(conn, model, records)
        conn.commit()
        rows = conn.execute("SELECT path, id FROM clipdb.images").fetchall()
    return dict(rows)


def table(database: Database) -> dict[str, tuple[Any, ...]]:
    """path -> (sha256, size, mtime_ns, width, height, embedding); fails on duplicate paths."""
    with database.connect() as conn:
        found = conn.execute(
            "SELECT path, sha256, size, mtime_ns, width, height, embedding FROM clipdb.images"
        ).fetchall()
    result = {
        path: (bytes(sha), size, mtime, width, height, np.asarray(emb.to_numpy(), np.float32))
        for path, sha, size, mtime, width, height, emb in found
    }
    assert len(result) == len(found), "duplicate paths"
    return result


def row_count(database: Database) -> int:
    try:
        with database.connect() as conn:
            return int(conn.execute("SELECT count(*) FROM clipdb.images").fetchone()[0])
    except Exception:  # noqa: BLE001 - not migrated yet, or the server is restarting
        return 0


def assert_same_rows(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for path, row in expected.items():
        assert actual[path][:5] == row[:5], path
        # Stored as halfvec: two runs whose float32 encodings differ in the last bits may round
        # to neighbouring half-precision values, one half-precision ulp apart at that value.
        larger = np.maximum(np.abs(actual[path][5]), np.abs(row[5]))
        ulp = np.spacing(larger.astype(np.float16)).astype(np.float32)
        difference = np.abs(actual[path][5] - row[5])
        assert np.all(difference <= ulp + 1e-7), (path, float(np.max(difference - ulp)))


def copy_checkout(dest: Path) -> Path:
    """What a fresh clone holds of the checkout (top-level files, the package, migrations,
    scripts) at ``dest``: no .venv, no build/ or egg-info left by earlier builds."""
    dest.mkdir(parents=True)
    for item in CHECKOUT.iterdir():
        if item.is_file():
            shutil.copy2(item, dest / item.name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("clipdb", "migrations", "scripts"):
        shutil.copytree(CHECKOUT / folder, dest / folder, ignore=ignore)
    return dest


def fresh_venv(path: Path, *, with_packages: bool = True) -> Path:
    """A new virtual environment without pip or clipdb; returns its python. With
    ``with_packages`` it sees this test run's installed packages through a plain path entry,
    so their .pth files (clipdb's editable install among them) are not run there."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120
    )
    python = path / "bin" / "python"
    if with_packages:
        purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        found = subprocess.run(
            [str(python), "-c", purelib], check=True, capture_output=True, text=True, timeout=60
        )
        site = found.stdout.strip()
        Path(site, "test-run-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def pip_install(python: Path, *args: str) -> None:
    """``pip install --no-deps ARGS`` into ``python``'s environment, offline; --ignore-installed,
    as the run's own clipdb (seen through the path entry) is no reason to skip, nor to touch."""
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    offline = ["--no-deps", "--ignore-installed", "--no-index", "--no-build-isolation", "-q"]
    subprocess.run(
        [*pip, "install", *offline, *args], check=True, capture_output=True, text=True, timeout=300
    )


def outside_env(**extra: str) -> dict[str, str]:
    """This run's environment without PYTHONPATH (which may name a checkout), plus ``extra``."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    return {**env, **extra}


def refused_server(home: Path) -> str:
    """The one-line error ``ensure_server(home)`` refuses with (a server it did start is
    stopped: a test never leaves one running)."""
    import pytest

    from clipdb.errors import ClipdbError

    try:
        with pytest.raises(ClipdbError) as caught:
            ensure_server(home)
    finally:
        stop_server(home)
    message = str(caught.value)
    assert "\n" not in message
    return message
