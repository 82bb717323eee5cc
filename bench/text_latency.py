"""Text search latency at scale: synthetic words loaded fast, each query kind timed and planned.

Used by ``bench/bench_ocr.py --part latency``. Rows come from one of two places:

- a fresh database (``--n``): image rows written by one ``INSERT ... SELECT`` from
  ``generate_series`` (8-dimensional vectors and no HNSW index under ``--text-only``: the
  text side never reads them), with a date (uniform over 2015..2024) and a camera (Canon 50%,
  Sony 49%, Leica 1%) like bench/bench_filters.py's rows;
- an existing database (``--database``, e.g. a copy of bench/bench_filters.py's 1M rows):
  its rows are used as they are, and hybrid queries use its HNSW index.

Either way each image row gets a synthetic text row: 8 words from a 50,000-word vocabulary
(``w0`` .. ``w49999``, Zipf-like: ``floor(50000 * random()^2)``, so low ids are common), with
the text indexes dropped during the insert and built once after it (a GIN index built
over loaded rows is far cheaper than one maintained row by row).

Query kinds: a rare word (the vocabulary's upper half), a common word (``w1`` .. ``w49``), a
part-string (4 digits from inside a word), a quoted phrase (two words adjacent in a row), a
word with a 1% camera filter and with a 50% date filter; and hybrid (CLIP + words) where the
rows carry real vectors. For each: p50/p95 over the queries, and the plans of the
statements inside the SQL functions (``auto_explain``), checked for sequential scans.
"""

from __future__ import annotations

import random
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg

K = 10
VOCABULARY = 50_000
WORDS_PER_ROW = 8
TEXT_INDEXES = ("image_text_document", "image_text_haystack", "text_words_trgm")
_TEXT_ROWS = (
    "SELECT count(*) FROM clipdb.search_text_rows(%(model)s::smallint, %(text)s, %(k)s, "
    "after => %(after)s, camera => %(camera)s)"
)
_HYBRID = (
    "SELECT count(*) FROM clipdb.search_hybrid(%(model)s::smallint, %(vector)s::vector, "
    "%(text)s, %(k)s, after => %(after)s, camera => %(camera)s)"
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_images(conn: psycopg.Connection[Any], model_id: int, n: int, dim: int) -> float:
    """``n`` image rows in one statement (seconds taken). Vectors are all alike: the text
    side never reads them."""
    started = time.perf_counter()
    conn.execute("SELECT setseed(0.11)")
    conn.execute(
        "INSERT INTO clipdb.images (model_id, path, sha256, size, mtime_ns, width, height, "
        "embedding, taken_at, taken_at_naive, camera) "
        "SELECT %(model)s, p.path, sha256(convert_to(p.path, 'UTF8')), 1, 1, 1, 1, "
        "%(vector)s, %(start)s::timestamptz + make_interval(days => (g * 7919) %% 3652), "
        "false, CASE WHEN r < 0.50 THEN 'Canon EOS R5' WHEN r < 0.99 THEN 'Sony ILCE-7M4' "
        "ELSE 'Leica M11' END "
        "FROM generate_series(0, %(n)s - 1) g, "
        "LATERAL (SELECT '/bench/f' || g %% 10 || '/' || g || '.jpg' AS path, "
        "random() + 0 * g AS r) p",
        {
            "model": model_id,
            "n": n,
            "vector": "[" + ",".join(["1"] * dim) + "]",
            "start": datetime(2015, 1, 1, 12, tzinfo=UTC),
        },
    )
    return time.perf_counter() - started


def add_text(conn: psycopg.Connection[Any], model_id: int) -> tuple[int, float]:
    """A synthetic text row for each of the model's image rows lacking one: (rows, seconds).
    The text indexes are rebuilt once after the insert, with their own definitions."""
    started = time.perf_counter()
    missing = conn.execute(
        "SELECT EXISTS (SELECT FROM clipdb.images i WHERE i.model_id = %s AND NOT EXISTS "
        "(SELECT FROM clipdb.image_text t WHERE t.image_id = i.id))",
        (model_id,),
    ).fetchone()
    if not (missing and missing[0]):  # loaded by an earlier run
        return 0, 0.0
    definitions = [
        row[0]
        for row in conn.execute(
            "SELECT pg_get_indexdef(format('clipdb.%%I', name)::regclass) "
            "FROM unnest(%s::text[]) name",
            (list(TEXT_INDEXES),),
        )
    ]
    for name in TEXT_INDEXES:
        conn.execute(f"DROP INDEX clipdb.{name}")
    conn.execute("SELECT setseed(0.11)")
    inserted = conn.execute(
        "INSERT INTO clipdb.image_text (image_id, sha256, path_key, engine, ocr_text, "
        "name_text) SELECT i.id, i.sha256, convert_to(i.path, 'UTF8'), 'synthetic', "
        "(SELECT string_agg('w' || floor(%(vocabulary)s * random() ^ 2)::int, ' ') "
        "FROM generate_series(1, %(words)s) WHERE i.id > 0), i.path FROM clipdb.images i "
        "WHERE i.model_id = %(model)s AND NOT EXISTS "
        "(SELECT FROM clipdb.image_text t WHERE t.image_id = i.id)",
        {"vocabulary": VOCABULARY, "words": WORDS_PER_ROW, "model": model_id},
    ).rowcount
    log(f"text rows: {inserted} in {time.perf_counter() - started:.0f} s; building indexes")
    conn.execute("SET maintenance_work_mem = '1GB'")
    for ddl in definitions:
        conn.execute(ddl)
    conn.execute("ANALYZE clipdb.images, clipdb.image_text")
    return inserted, time.perf_counter() - started


def query_kinds(
    conn: psycopg.Connection[Any], model_id: int, count: int, seed: int
) -> dict[str, list[dict[str, Any]]]:
    """``count`` queries of each kind, drawn with ``seed``."""
    rng = random.Random(seed)
    plain = {"after": None, "camera": None}
    rows = conn.execute(
        "SELECT t.ocr_text FROM clipdb.image_text t JOIN clipdb.images i ON i.id = t.image_id "
        "WHERE i.model_id = %s AND t.engine = 'synthetic' ORDER BY t.image_id LIMIT 5000",
        (model_id,),
    ).fetchall()
    phrases = [" ".join(str(row[0]).split()[:2]) for row in rows]
    kinds: dict[str, list[dict[str, Any]]] = {}
    kinds["word (rare)"] = [
        {**plain, "text": f"w{rng.randrange(VOCABULARY // 2, VOCABULARY)}"} for _ in range(count)
    ]
    kinds["word (common)"] = [{**plain, "text": f"w{rng.randrange(1, 50)}"} for _ in range(count)]
    pieces = []
    for _ in range(count):
        digits = str(rng.randrange(10_000, VOCABULARY))
        start = rng.randrange(0, 2)
        pieces.append({**plain, "text": digits[start : start + 4]})
    kinds["part-string (4 digits)"] = pieces
    kinds["quoted phrase"] = [{**plain, "text": f'"{rng.choice(phrases)}"'} for _ in range(count)]
    rare = [q["text"] for q in kinds["word (rare)"]]
    kinds["word + camera 1%"] = [{**plain, "text": w, "camera": "leica"} for w in rare]
    kinds["word + date 50%"] = [
        {**plain, "text": w, "after": datetime(2020, 1, 1, tzinfo=UTC)} for w in rare
    ]
    return kinds


def _plans(conn: psycopg.Connection[Any], run: Callable[[], object]) -> str:
    """Every statement's plan (nested ones too), analysed, with buffers."""
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    with conn.transaction():
        conn.execute("LOAD 'auto_explain'")
        for name, value in (
            ("auto_explain.log_min_duration", "0"),
            ("auto_explain.log_nested_statements", "on"),
            ("auto_explain.log_analyze", "on"),
            ("auto_explain.log_buffers", "on"),
            ("auto_explain.log_timing", "on"),
            ("auto_explain.log_level", "notice"),
        ):
            conn.execute("SELECT set_config(%s, %s, true)", (name, value))
        run()
    # The statements that read the tables (not the function's own checks and assignments).
    return "\n".join(n for n in notices if "clipdb.image" in n or "clipdb.text_words" in n)


def _scans(plans: str) -> dict[str, Any]:
    """Which text indexes served the plans, and any sequential scan of a large table."""
    return {
        "text_indexes": sorted(set(re.findall(r"Index Scan on (image_text_\w+)", plans))),
        "seq_scans": sorted(set(re.findall(r"Seq Scan on (\w+)", plans))),
    }


def measure(
    conn: psycopg.Connection[Any],
    model_id: int,
    kinds: dict[str, list[dict[str, Any]]],
    vectors: np.ndarray | None,
    warm: int = 10,
) -> dict[str, Any]:
    """p50/p95 (ms) and plans of every query kind; hybrid ones when ``vectors`` are given."""
    result: dict[str, Any] = {}
    statements = [("text", _TEXT_ROWS)] + ([("hybrid", _HYBRID)] if vectors is not None else [])
    for kind, queries in kinds.items():
        for side, statement in statements:
            name = f"{side}: {kind}"
            times, found = [], []
            for n, query in enumerate(queries):
                params = {**query, "model": model_id, "k": K}
                if vectors is not None:
                    params["vector"] = vectors[n % len(vectors)]
                t = time.perf_counter()
                row = conn.execute(statement, params).fetchone()
                if n >= warm:  # the first ones warm the caches
                    times.append(time.perf_counter() - t)
                found.append(int(row[0]) if row else 0)
            sample = {**queries[len(queries) // 2], "model": model_id, "k": K}
            if vectors is not None:
                sample["vector"] = vectors[0]
            plans = _plans(conn, lambda s=statement, p=sample: conn.execute(s, p).fetchall())
            result[name] = {
                "p50_ms": round(float(np.median(times)) * 1000, 2),
                "p95_ms": round(float(np.percentile(times, 95)) * 1000, 2),
                "mean_hits": round(float(np.mean(found)), 1),
                "example": sample["text"],
                **_scans(plans),
                "plans": plans,
            }
            log(f"{name}: { ({k: v for k, v in result[name].items() if k != 'plans'}) }")
    return result
