"""Does storing halfvec(512) instead of vector(512) keep rows inline, and what does it do to
exact similarities? Two scratch tables of the same N clustered vectors (bench/datagen.py) in
a fresh database on the embedded server under --home; sizes from pg_relation_size (heap),
the TOAST relation and pg_total_relation_size; similarity error = |cos_half - cos_float| over
the exact top 10 of 50 queries, and whether the exact top-10 order changes.

    python bench/halfvec_storage.py --n 20000 --home /tmp/clipdb-bench-halfvec
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import fresh_database  # noqa: E402
from datagen import ClusteredSphere  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--home", default="/tmp/clipdb-bench-halfvec")
    args = parser.parse_args(argv)
    gen = ClusteredSphere(clusters=1000)
    data, queries = gen.sample(args.n), gen.sample(50, stream=1)
    database = fresh_database(args.home, "bench_halfvec")
    result: dict[str, object] = {"n": args.n}
    with database.connect() as conn:
        for kind in ("vector", "halfvec"):
            conn.execute(f"CREATE TABLE scratch_{kind} (id int, e {kind}(512))")
            with conn.cursor() as cur, cur.copy(f"COPY scratch_{kind} (id, e) FROM STDIN") as copy:
                for i, v in enumerate(data):
                    copy.write_row((i, "[" + ",".join(f"{x:.7g}" for x in v) + "]"))
            conn.commit()
            conn.execute(f"ANALYZE scratch_{kind}")
            row = conn.execute(
                "SELECT pg_relation_size(c.oid), coalesce(pg_relation_size(c.reltoastrelid), 0),"
                " pg_total_relation_size(c.oid) FROM pg_class c WHERE relname = %s",
                (f"scratch_{kind}",),
            ).fetchone()
            assert row is not None
            per_m = 1_000_000 / args.n / 2**20
            result[kind] = {
                "heap_mb_per_1m": round(row[0] * per_m), "toast_mb_per_1m": round(row[1] * per_m),
                "total_mb_per_1m": round(row[2] * per_m),
            }  # fmt: skip
        errors, reordered = [], 0
        for q in queries:
            literal = "[" + ",".join(f"{x:.7g}" for x in q) + "]"
            full = conn.execute(
                "SELECT id, 1 - (e <=> %s::vector) FROM scratch_vector ORDER BY e <=> %s::vector"
                " LIMIT 10", (literal, literal),
            ).fetchall()  # fmt: skip
            half = conn.execute(
                "SELECT id, 1 - (e <=> %s::halfvec) FROM scratch_halfvec "
                "ORDER BY e <=> %s::halfvec LIMIT 10", (literal, literal),
            ).fetchall()  # fmt: skip
            by_id = dict(half)
            errors += [abs(by_id[i] - s) for i, s in full if i in by_id]
            reordered += [i for i, _ in full] != [i for i, _ in half]
        result["similarity_abs_error_max"] = float(np.max(errors))
        result["similarity_abs_error_mean"] = float(np.mean(errors))
        result["queries_with_different_top10_order"] = f"{reordered}/50"
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
