"""Benchmarks end to end at tiny sizes, so CI keeps them runnable (their numbers not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Each runs a benchmark script end to end: seconds each (the slow tier).
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "scale.py"
GPU_STAGES = SCRIPT.with_name("gpu_stages.py")


def _stop_server(home: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from clipdb.db.embedded import stop_server; stop_server(Path(sys.argv[1]))",
         str(home)],
        check=False, timeout=60,
    )  # fmt: skip


def test_gpu_stages_benchmark_runs_on_the_cpu(tmp_path: Path, embedded_home: Path) -> None:
    """bench/gpu.sh's stage script, with the CPU as the device and the tiny model: every stage
    and both end-to-end passes run (the GPU itself is only at hand on a lent machine)."""
    from helpers import MODEL_CONFIGS

    photos = tmp_path / "photos"
    env = {**os.environ, "CLIPDB_MODEL_CONFIGS": str(MODEL_CONFIGS)}
    generate = [sys.executable, str(GPU_STAGES), "generate", str(photos), "--count", "24",
                "--distinct", "6"]  # fmt: skip
    subprocess.run(generate, check=True, timeout=120, env=env)
    assert len({(photos / f"photo_{i:05d}.jpg").read_bytes() for i in range(24)}) == 24
    measure = [sys.executable, str(GPU_STAGES), "measure", str(photos), "--model", "clipdb-tiny",
               "--device", "cpu", "--precision", "fp32", "--batch", "8", "--rows", "300",
               "--home", str(embedded_home)]  # fmt: skip
    try:
        done = subprocess.run(
            measure, check=True, capture_output=True, text=True, timeout=300, env=env
        )
    finally:
        _stop_server(embedded_home)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["ingest_device"]["new"] == found["ingest_cpu"]["new"] == 24
    assert all(found[stage] > 0 for stage in ("prepare", "cpu_decode", "dev_decode", "encode"))
    assert found["cpu_vs_device_min_cos"] > 0.99


def test_scale_benchmark_smoke(tmp_path: Path, embedded_home: Path) -> None:
    out = tmp_path / "results"
    command = [
        sys.executable, str(SCRIPT), "--n", "2000", "--queries", "50", "--ef", "20,40",
        "--qps-seconds", "0.3", "--insert-rows", "100", "--maintenance-work-mem", "128MB",
        "--label", "smoke", "--out", str(out), "--home", str(embedded_home),
    ]  # fmt: skip
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
    finally:
        _stop_server(embedded_home)
    result = json.loads((out / "scale_smoke.json").read_text())
    assert result["n"] == 2000 and result["load"]["rows"] == 2000
    assert result["plan_uses_index"]
    assert {(r["storage"], r["ef_search"]) for r in result["search"]} == {
        ("vector", 20), ("vector", 40), ("halfvec", 20), ("halfvec", 40),
    }  # fmt: skip
    assert all(0.5 <= r["recall10"] <= 1.0 for r in result["search"])
    assert result["insert_with_index"]["rows"] == 100
    assert (out / "scale_recall_qps.png").stat().st_size > 0


def test_media_benchmark_smoke() -> None:
    script = SCRIPT.with_name("bench_media.py")
    command = [sys.executable, str(script), "--count", "1", "--size", "320x240", "--seconds", "1"]
    done = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    assert "heic" in done.stdout and "s of video/s" in done.stdout


def test_models_benchmark_runs_at_tiny_size(tmp_path: Path) -> None:
    """bench/bench_models.py end to end on the tiny model: both backends, the index bytes per
    row and a re-index of a few images while searches run."""
    from helpers import MODEL_CONFIGS, TINY_MODEL

    out = tmp_path / "models.json"
    env = {**os.environ, "CLIPDB_MODEL_CONFIGS": str(MODEL_CONFIGS)}
    command = [
        sys.executable,
        str(SCRIPT.with_name("bench_models.py")),
        "--families",
        TINY_MODEL,
        "--images",
        "2",
        "--index-rows",
        "20",
        "--reindex",
        "2",
        "--search-rows",
        "200",
        "--out",
        str(out),
    ]
    subprocess.run(command, check=True, timeout=900, env=env, capture_output=True)
    result = json.loads(out.read_text())
    (family,) = result["families"]
    assert family["torch"]["dim"] == family["openvino"]["dim"] == 32
    assert set(result["index"]) == {"512", "768"} and result["reindex"]["images"] == 2


def test_cli_start_benchmark_smoke(tmp_path: Path, embedded_home: Path) -> None:
    """bench/cli_start.py on 50 rows, one round: every command runs and each phase is timed."""
    out = tmp_path / "cli_start.json"
    script = str(SCRIPT.with_name("cli_start.py"))
    flags = ["--home", str(embedded_home), "--make", "50", "--runs", "1", "--out", str(out)]
    try:
        subprocess.run(
            [sys.executable, script, *flags],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        _stop_server(embedded_home)
    result = json.loads(out.read_text())
    assert result["like"] == "/bench/cli/0.jpg"
    assert len(result["commands"]) == 8
    after = "search after its imports (in one process)"
    assert list(result["after_imports_p50_ms"]) == [f"{after}, first call", f"{after}, again call"]
    assert all(row["p50_ms"] > 0 for row in result["commands"].values())
    assert list(result["phases_p50_ms"])[:4] == ["imports", "parse", "server", "schema"]
    assert list(result["phases_p50_ms"])[4:] == ["connect", "model", "embedding", "top-k", "print"]
    assert result["imports_one_run"][0]["module"] == "(all imports)"


def test_first_run_benchmark_smoke(tmp_path: Path) -> None:
    """bench/first_run.py at the tiny model: a (first, warm) pair, each a process of its own."""
    script = SCRIPT.with_name("first_run.py")
    command = [sys.executable, str(script), "--count", "12", "--size", "320x240", "--model",
               "clipdb-tiny", "--modes", "wait", "--data", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    assert "wait: median to its end / warm" in done.stdout


def test_conversion_benchmark_smoke() -> None:
    """bench/conversion.py at the tiny model: both converters, and a first text query that
    adds the text tower to an image-only cache."""
    script = SCRIPT.with_name("conversion.py")
    command = [sys.executable, str(script), "--model", "clipdb-tiny"]
    done = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    assert "| direct |" in done.stdout and "| convert_model |" in done.stdout
    assert "then towers ['image', 'text']" in done.stdout
