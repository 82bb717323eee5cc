"""Fixtures: a real embedded PostgreSQL + pgvector, a fresh database per test, tiny CLIP models."""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).parent
MODEL_CONFIGS = TESTS_DIR / "model_configs"
TINY_MODEL = "clipdb-tiny"  # tests/model_configs/clipdb-tiny.json, 32-d
TINY_WIDE_MODEL = "clipdb-tiny-wide"  # 48-d: a second model of another dimension

# Before anything imports clipdb: never touch the user's data dir or real settings.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="clipdb-test-home-"))
os.environ["CLIPDB_HOME"] = str(_SESSION_HOME)
os.environ["CLIPDB_MODEL_CONFIGS"] = str(MODEL_CONFIGS)
for _name in ("CLIPDB_DATABASE_URL", "CLIPDB_MODEL", "CLIPDB_PRETRAINED"):
    os.environ.pop(_name, None)

from clipdb.db import Database, upgrade  # noqa: E402
from clipdb.embedded import EmbeddedServer, ensure_server, stop_server  # noqa: E402

TEMPLATE_DB = "clipdb_test_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedServer]:
    """The embedded server every test database lives on (its own CLIPDB_HOME)."""
    server = ensure_server(_SESSION_HOME)
    yield server
    stop_server(_SESSION_HOME)


def _admin(server: EmbeddedServer):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(server.url(database="postgres"), autocommit=True)


@pytest.fixture(scope="session")
def template_database(pg_server: EmbeddedServer) -> str:
    """A database migrated to head once; each test copies it."""
    with _admin(pg_server) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    upgrade(Database(url=pg_server.url(database=TEMPLATE_DB)))
    return TEMPLATE_DB


@pytest.fixture
def empty_database(pg_server: EmbeddedServer) -> Iterator[Database]:
    """A fresh database with no schema at all (for migration tests)."""
    name = f"clipdb_test_{os.getpid()}_{next(_counter)}"
    with _admin(pg_server) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield Database(url=pg_server.url(database=name))
    with _admin(pg_server) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def database(
    pg_server: EmbeddedServer, template_database: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Database]:
    """A fresh, migrated database; CLIPDB_DATABASE_URL points at it for CLI calls."""
    name = f"clipdb_test_{os.getpid()}_{next(_counter)}"
    with _admin(pg_server) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_database}")
    db = Database(url=pg_server.url(database=name))
    monkeypatch.setenv("CLIPDB_DATABASE_URL", db.url)
    yield db
    with _admin(pg_server) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def tiny_encoder():  # type: ignore[no-untyped-def]
    """A real open_clip model with a tiny config and seeded random weights, on the CPU."""
    from clipdb.encoder import load_encoder

    return load_encoder(TINY_MODEL, "none", device="cpu", precision="fp32")


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
    import numpy as np
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


@pytest.fixture
def image_factory():  # type: ignore[no-untyped-def]
    return make_images


def run_module(module: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
    """Run ``python -m module args`` end to end; returns the CompletedProcess."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
