"""The training benchmark runs end to end and prints its numbers (a smoke, no timing assertion)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_train_quick_prints_throughput() -> None:
    res = subprocess.run([sys.executable, "benchmarks/bench_train.py", "--quick"], cwd=REPO, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    print("\n" + "\n".join(json.dumps(r) for r in rows))
    assert [r["preset"] for r in rows] == ["baseline", "G"]
    assert all(r["images_per_s"] > 0 for r in rows)
