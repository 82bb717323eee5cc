"""Wall time of the whole ``clipdb search --like PATH --json`` process, start-up included.

    python bench/cli_start.py --home H [--database NAME] [--like PATH] [--runs 15]
    python bench/cli_start.py --home H --make 10000     # first: a database of N synthetic rows

Each round runs, one after the other (so a burst of load on a shared machine hits every
command alike): ``python -c pass``, ``python -c "import psycopg, pgvector.psycopg"`` (what any
search must import) and ``python -c "import clipdb.cli"`` (baselines); the ``clipdb`` console
script and ``python -m clipdb`` with ``search --like PATH --json``; the same with clipdb
compiled from source every run (a copy of the tree, PYTHONDONTWRITEBYTECODE=1: every other
child may cache bytecode, as an installed package has it); and a child that runs the same
search in phases (imports, argument parsing, the embedded server check, the schema check, the
connection, the model choice, the stored embedding, the top-k, the JSON) with a clock between
them (what ``python -c pass`` takes is the interpreter's own start and exit); and the whole
search timed inside a process that imported everything first, its first call and the
median of five more (``--compare``'s tree too: two versions compared without the noise of
their imports). Prints p50/min wall time and p50 CPU
time of each, the ratio to ``python -c pass``, the phases' p50 and the slowest imports of one
``-X importtime`` run; writes bench/results/cli_start.json.

``--database NAME``: a database of the embedded server in --home other than clipdb's own
(bench/bench_filters.py loads ``clipdb_bench_filters``); the CLI then gets it as
``--database-url``, which skips the server check (timed apart, as the ``server`` phase).
``--like``: default the path of the table's first row (the rows' paths need not exist: an
indexed path is looked up in the database, the file is never opened).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

from clipdb.db.embedded import DATABASE_NAME, ensure_server  # noqa: E402

RESULTS = BENCH / "results"

# The --like search of clipdb/search/__main__.py, step by step, a clock between the steps.
PHASES = r"""
import time
start = time.perf_counter()
marks = []
def mark(name):
    marks.append((name, time.perf_counter()))
import sys
from clipdb.search.__main__ import (
    build_parser, check_arguments, one_connection, search_options, searcher,
)
from clipdb.search.output import format_json
from clipdb.config import Settings
from clipdb.db import Database, libpq_url, resolve_database
from clipdb.db.migrate import upgrade
from clipdb.query import Query
mark("imports")
args = build_parser().parse_args(sys.argv[1:])
check_arguments(args)
settings = Settings.from_args(args)
mark("parse")
from clipdb.db.embedded import ensure_server
server = ensure_server(settings.home)
database = resolve_database(settings)
mark("server")
upgrade(database, implicit=True)
mark("schema")
with one_connection(database) as connect:
    mark("connect")
    pipeline = searcher(args, settings, connect)
    model = pipeline.model(args.like)
    mark("model")
    vector = pipeline.vector(Query(like=args.like), model)
    mark("embedding")
    hits = pipeline.top_k(vector, search_options(args), model)
    mark("top-k")
sys.stdout.write(format_json(hits) + "\n")
sys.stdout.flush()
mark("print")
before = start
for name, at in marks:
    print(f"PHASE {name} {at - before:.6f}", file=sys.stderr)
    before = at
"""


# The whole search in a process that has already imported everything it needs: what is left
# once imports are paid (the server and schema checks, connections, queries, printing). The
# first call also pays for what a process does once (first connection, adapters); the next
# ones show the database work alone. Run for --compare's tree too: two versions compared
# without the noise of their imports.
AFTER_IMPORTS = r"""
import contextlib, io, json, statistics, sys, time
import clipdb.db.embedded, clipdb.db.migrate, clipdb.search.__main__, pgvector.psycopg
from clipdb.__main__ import main
took = []
for _ in range(6):
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["search", *sys.argv[1:]]) == 0
    took.append(time.perf_counter() - start)
print(f"AFTER_IMPORTS first {took[0]:.6f}", file=sys.stderr)
print(f"AFTER_IMPORTS again {statistics.median(took[1:]):.6f}", file=sys.stderr)
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_database(home: Path, rows: int) -> None:
    """clipdb's own database in ``home``, emptied and filled with ``rows`` synthetic rows."""
    from benchutil import fresh_database
    from datagen import ClusteredSphere

    from clipdb.db.registry import register_model
    from clipdb.db.store import ImageRecord, bulk_load

    database = fresh_database(home, DATABASE_NAME)
    sphere = ClusteredSphere()
    data = sphere.sample(rows)
    with database.connect() as conn:
        model = register_model(conn, "bench-cli-start", "none", sphere.dim)
        records = (
            ImageRecord(f"/bench/cli/{i}.jpg", hashlib.sha256(b"%d" % i).digest(), 1, 1, 1, 1, v)
            for i, v in enumerate(data)
        )
        log(f"loaded {bulk_load(conn, model, records)}")
        conn.commit()


def first_path(url: str) -> str:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT path FROM clipdb.images ORDER BY id LIMIT 1").fetchone()
    if row is None:
        raise SystemExit("the database has no rows: load some first (--make N)")
    return str(row[0])


def tree_env(tree: Path, home: Path, *, bytecode: bool = True) -> dict[str, str]:
    """The environment of a child that imports clipdb from ``tree`` and searches ``home``.

    ``bytecode``: Python may cache compiled modules (``__pycache__``, as a pip install does
    at install time); without it, PYTHONDONTWRITEBYTECODE=1, set in some shells and CI
    images, makes a checkout with no ``__pycache__`` compile every clipdb module on every run.
    """
    env = {**os.environ, "CLIPDB_HOME": str(home)}
    for name in ("CLIPDB_DATABASE_URL", "CLIPDB_READ_DATABASE_URL", "CLIPDB_MODEL"):
        env.pop(name, None)  # the database searched is --home's (or --database's)
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    return env


def run(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system, the child alone: a busy machine stretches
    the wall time far more than the CPU time) and stderr of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)}: exit {done.returncode}: {done.stderr.strip()}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return elapsed, cpu, done.stderr


def slowest_imports(command: list[str], env: dict[str, str], top: int) -> list[dict[str, Any]]:
    """The top-level imports of one run by cumulative time (``-X importtime``)."""
    _, _, stderr = run([command[0], "-X", "importtime", *command[1:]], env)
    rows = []
    for line in stderr.splitlines():
        found = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)", line)
        if found and not found.group(3):  # no indentation: imported by the program itself
            rows.append({"module": found.group(4), "cumulative_ms": int(found.group(2)) / 1000})
    rows.sort(key=lambda row: -row["cumulative_ms"])
    total = sum(row["cumulative_ms"] for row in rows)
    return [{"module": "(all imports)", "cumulative_ms": total}, *rows[:top]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True, help="CLIPDB_HOME of the database to search")
    parser.add_argument("--database", default=DATABASE_NAME, help="database name in --home")
    parser.add_argument("--like", help="an indexed path (default: the first row's)")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--make", type=int, metavar="N", help="first load N synthetic rows")
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="TREE",
        help="another clipdb checkout (say, before a change): its python -m clipdb search "
        "--like runs in the same rounds",
    )
    parser.add_argument("--top-imports", type=int, default=12)
    parser.add_argument("--out", type=Path, default=RESULTS / "cli_start.json")
    args = parser.parse_args()

    home = Path(args.home).resolve()
    if args.make:
        make_database(home, args.make)
    server = ensure_server(home)
    url = server.url(database=args.database)
    like = args.like or first_path(url)
    env = tree_env(ROOT, home)
    search = ["search", "--like", like, "--json"]
    if args.database != DATABASE_NAME:
        search += ["--database-url", url]
    python = sys.executable
    script = shutil.which("clipdb", path=str(Path(python).parent)) or "clipdb"
    commands = {
        "python -c pass": [python, "-c", "pass"],
        # What any search must import: the driver, pgvector's types, numpy under them.
        "python -c 'import psycopg, pgvector.psycopg'": [
            python,
            "-c",
            "import psycopg, pgvector.psycopg",
        ],
        "python -c 'import clipdb.cli'": [python, "-c", "import clipdb.cli"],
        "clipdb search --like PATH --json": [script, *search],
        "python -m clipdb search --like PATH --json": [python, "-m", "clipdb", *search],
        "phases (in one process)": [python, "-c", PHASES, *search[1:]],
        "search after its imports (in one process)": [python, "-c", AFTER_IMPORTS, *search[1:]],
    }
    envs = {name: env for name in commands}
    # The same search with clipdb compiled from source every run: a copy of the tree that
    # never gets a __pycache__ (the installed packages keep theirs).
    source_tree = Path(tempfile.mkdtemp(prefix="clipdb-cli-start-"))
    for part in ("clipdb", "migrations"):
        shutil.copytree(
            ROOT / part, source_tree / part, ignore=shutil.ignore_patterns("__pycache__")
        )
    name = "python -m clipdb search --like PATH --json (clipdb compiled each run)"
    commands[name] = [python, "-m", "clipdb", *search]
    envs[name] = tree_env(source_tree, home, bytecode=False)
    if args.compare is not None:
        name = f"python -m clipdb search --like PATH --json ({args.compare})"
        commands[name] = [python, "-m", "clipdb", *search]
        envs[name] = tree_env(args.compare.resolve(), home)
        name = f"search after its imports (in one process) ({args.compare})"
        commands[name] = [python, "-c", AFTER_IMPORTS, *search[1:]]
        envs[name] = tree_env(args.compare.resolve(), home)
    times: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    phases: dict[str, list[float]] = {}
    after_imports: dict[str, list[float]] = {}
    for name, command in commands.items():  # warm: bytecode written, files in the OS cache
        run(command, envs[name])
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    for _ in range(args.runs):
        for name, command in commands.items():
            elapsed, seconds_cpu, stderr = run(command, envs[name])
            times[name].append(elapsed)
            cpu[name].append(seconds_cpu)
            for phase, seconds in re.findall(r"^PHASE (\S+) (\S+)$", stderr, re.MULTILINE):
                phases.setdefault(phase, []).append(float(seconds))
            for call, seconds in re.findall(r"^AFTER_IMPORTS (\S+) (\S+)$", stderr, re.MULTILINE):
                after_imports.setdefault(f"{name}, {call} call", []).append(float(seconds))
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    shutil.rmtree(source_tree)
    imports = slowest_imports(
        commands["python -m clipdb search --like PATH --json"], env, args.top_imports
    )

    base = statistics.median(times["python -c pass"])
    result = {
        "home": str(home),
        "database": args.database,
        "like": like,
        "compare": None if args.compare is None else str(args.compare),
        "runs": args.runs,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "commands": {
            name: {
                "p50_ms": 1000 * statistics.median(values),
                "min_ms": 1000 * min(values),
                "p50_over_pass": statistics.median(values) / base,
                "cpu_p50_ms": 1000 * statistics.median(cpu[name]),
            }
            for name, values in times.items()
        },
        "phases_p50_ms": {name: 1000 * statistics.median(v) for name, v in phases.items()},
        "after_imports_p50_ms": {
            name: 1000 * statistics.median(v) for name, v in after_imports.items()
        },
        "imports_one_run": imports,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"load average {' '.join(load_before)} -> {' '.join(load_after)}; {args.runs} runs")
    print("| command | p50 ms | min ms | p50 / `python -c pass` | CPU p50 ms |")
    print("|---|---|---|---|---|")
    for name, row in result["commands"].items():
        ratio = row["p50_over_pass"]
        print(
            f"| `{name}` | {row['p50_ms']:.0f} | {row['min_ms']:.0f} | {ratio:.1f} "
            f"| {row['cpu_p50_ms']:.0f} |"
        )
    print("\n| the search once imports are paid (p50) | ms |\n|---|---|")
    for name, ms in result["after_imports_p50_ms"].items():
        print(f"| `{name}` | {ms:.1f} |")
    print("\n| phase (p50) | ms |\n|---|---|")
    for name, ms in result["phases_p50_ms"].items():
        print(f"| {name} | {ms:.1f} |")
    print("\n| import (one `-X importtime` run, top level) | cumulative ms |\n|---|---|")
    for row in imports:
        print(f"| {row['module']} | {row['cumulative_ms']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
