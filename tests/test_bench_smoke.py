"""The scale benchmark end to end at a tiny N, so CI keeps it runnable (numbers not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "scale.py"


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
        subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; "
             "from clipdb.db.embedded import stop_server; stop_server(Path(sys.argv[1]))",
             str(embedded_home)],
            check=False, timeout=60,
        )  # fmt: skip
    result = json.loads((out / "scale_smoke.json").read_text())
    assert result["n"] == 2000 and result["load"]["rows"] == 2000
    assert result["plan_uses_index"]
    assert {(r["storage"], r["ef_search"]) for r in result["search"]} == {
        ("vector", 20), ("vector", 40), ("halfvec", 20), ("halfvec", 40),
    }  # fmt: skip
    assert all(0.5 <= r["recall10"] <= 1.0 for r in result["search"])
    assert result["insert_with_index"]["rows"] == 100
    assert (out / "scale_recall_qps.png").stat().st_size > 0
