"""Settings shared by every command: flags > environment (CLIPDB_*) > defaults."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from clipdb.errors import UsageError
from clipdb.models import canonical_model_name

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_TOP_K = 5
# Smallest hnsw.ef_search with recall@10 >= 0.95 at 1M clustered 512-d vectors (0.973; 160 gave
# 0.947; 40 gave 0.767): bench/results/SCALE.md.
DEFAULT_EF_SEARCH = 320
# The most results one search returns, the same in the CLI, Python, HTTP and SQL. Beyond
# pgvector's ef_search maximum (1000) the HNSW scan continues iteratively until k rows came.
MAX_RESULTS = 10_000
# The longest text query (characters): clipdb.search_text_rows refuses longer ones too.
MAX_QUERY_TEXT = 1000

# How long ingest lets another session hold up its index DDL (or hold its ingest lock without
# being an ingest) before it names that session, and ends it when it is clipdb_reader's. 30 s
# is the reader's statement timeout: a single reader statement within it is never ended.
DEFAULT_LOCK_WAIT_S = 30.0

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")  # int8: OpenVINO weights only
# auto: OpenVINO on CPU, torch on CUDA/MPS.
BACKENDS = ("auto", "torch", "openvino")
# As root the embedded server runs as another user, who cannot enter /root (0700), and clipdb
# will not loosen it; /var/lib is open to pass through.
ROOT_DEFAULT_HOME = Path("/var/lib/clipdb")
# The web server's limit on each database statement: a request that would hold a pooled
# connection longer (say a duplicates scan of a big library) is cancelled and answered 504,
# so a few of them cannot keep every connection from the searches. 0: no limit.
DEFAULT_STATEMENT_TIMEOUT_S = 30.0
STATEMENT_TIMEOUT_ENV = "CLIPDB_SERVE_STATEMENT_TIMEOUT"


def default_home() -> Path:
    """The per-user data dir; as root /var/lib/clipdb, unless 0.1.0 already put a database in
    root's per-user dir (then that one, so no data seems to vanish)."""
    user_dir = Path(platformdirs.user_data_dir("clipdb"))
    if os.geteuid() == 0 and not (user_dir / "pgdata").exists():
        return ROOT_DEFAULT_HOME
    return user_dir


def lock_wait_seconds() -> float:
    """CLIPDB_LOCK_WAIT (seconds, more than 0), else :data:`DEFAULT_LOCK_WAIT_S`."""
    value = os.environ.get("CLIPDB_LOCK_WAIT") or ""
    if not value:
        return DEFAULT_LOCK_WAIT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (0 < seconds <= 86_400):
        raise UsageError(f"CLIPDB_LOCK_WAIT={value!r}: use seconds, more than 0 (e.g. 30)")
    return seconds


@dataclass(frozen=True)
class Settings:
    """Where the database is and which model's rows a command works on."""

    database_url: str | None
    home: Path
    model: str
    pretrained: str | None  # None: the model's standard weights
    # Where searches go (a streaming standby, or a libpq multi-host URL); writes stay on
    # database_url. None: reads go to the same database as writes.
    read_database_url: str | None = None
    # Whether the model was named (--model, CLIPDB_MODEL, ClipDB's model_name) rather than
    # defaulted: a search by an indexed image follows that image's model only when it was not.
    model_explicit: bool = False

    @classmethod
    def resolve(
        cls,
        database_url: str | None = None,
        home: str | os.PathLike[str] | None = None,
        model: str | None = None,
        pretrained: str | None = None,
        read_database_url: str | None = None,
    ) -> Settings:
        """Explicit values win over CLIPDB_* environment variables, which win over defaults."""
        env = os.environ
        home_value = home or env.get("CLIPDB_HOME") or default_home()
        return cls(
            database_url=database_url or env.get("CLIPDB_DATABASE_URL") or None,
            home=Path(home_value).expanduser(),
            model=canonical_model_name(model or env.get("CLIPDB_MODEL") or DEFAULT_MODEL),
            pretrained=pretrained or env.get("CLIPDB_PRETRAINED") or None,
            read_database_url=read_database_url or env.get("CLIPDB_READ_DATABASE_URL") or None,
            model_explicit=bool(model or env.get("CLIPDB_MODEL")),
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        return cls.resolve(
            database_url=getattr(args, "database_url", None),
            model=getattr(args, "model", None),
            pretrained=getattr(args, "pretrained", None),
            read_database_url=getattr(args, "read_database_url", None),
        )


def statement_timeout_s(value: float | None = None) -> float:
    """The server's statement timeout in seconds: ``value`` (a flag), else
    CLIPDB_SERVE_STATEMENT_TIMEOUT, else the default; 0 means none. UsageError when the
    environment holds no number >= 0."""
    if value is not None:
        return value
    text = os.environ.get(STATEMENT_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_STATEMENT_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise UsageError(f"{STATEMENT_TIMEOUT_ENV} must be seconds >= 0 (0: none), got {text!r}")
    return seconds


def add_common_arguments(parser: argparse.ArgumentParser, *, with_model: bool = True) -> None:
    """The flags every command takes."""
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL URL (env CLIPDB_DATABASE_URL; default: the embedded server in "
        "CLIPDB_HOME)",
    )
    if with_model:
        parser.add_argument(
            "--model",
            metavar="NAME",
            help=f"open_clip architecture or ViT-B/32-style name (env CLIPDB_MODEL; "
            f"default {DEFAULT_MODEL})",
        )
        parser.add_argument(
            "--pretrained",
            metavar="TAG|FILE|none",
            help="open_clip pretrained tag, a local checkpoint file, or 'none' for seeded "
            "random weights (env CLIPDB_PRETRAINED; default: the model's standard weights)",
        )


def add_read_url_argument(parser: argparse.ArgumentParser) -> None:
    """--read-database-url, for the commands that only search."""
    parser.add_argument(
        "--read-database-url",
        metavar="URL",
        help="send searches here, e.g. a standby made by 'clipdb db replicate' or a libpq "
        "multi-host URL with target_session_attrs/load_balance_hosts "
        "(env CLIPDB_READ_DATABASE_URL; default: the database itself)",
    )


# --- settings of one component each (read here, like every CLIPDB_* variable) ----------------


def model_config_dirs() -> list[str]:
    """``CLIPDB_MODEL_CONFIGS``: folders of extra open_clip JSON configs (os.pathsep-separated)."""
    return [part for part in os.environ.get("CLIPDB_MODEL_CONFIGS", "").split(os.pathsep) if part]


def allowed_hosts_env() -> list[str]:
    """``CLIPDB_ALLOWED_HOSTS``: comma-separated Host names the server accepts besides its own."""
    return [name.strip() for name in os.environ.get("CLIPDB_ALLOWED_HOSTS", "").split(",")]


def pg_shared_buffers_override() -> str | None:
    """``CLIPDB_PG_SHARED_BUFFERS``: the embedded server's shared_buffers (e.g. ``2GB``)."""
    return os.environ.get("CLIPDB_PG_SHARED_BUFFERS") or None


def openvino_cache_root() -> Path:
    """``CLIPDB_OPENVINO_CACHE`` (one cache shared by several homes; the tests use it), else
    ``CLIPDB_HOME/openvino``."""
    root = os.environ.get("CLIPDB_OPENVINO_CACHE")
    return Path(root) if root else Settings.resolve().home / "openvino"
