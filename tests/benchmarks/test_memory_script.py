"""benchmarks/memory.py keeps working: at a tiny size each variant runs in its own process and the table has a row
for each, with the extra memory over naive deletion in GiB and in parameter-sized buffers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "memory.py"


def test_the_memory_benchmark_runs_at_a_tiny_size(tmp_path):
    out = tmp_path / "memory.md"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = out.read_text()
    assert "a smoke run, not a measurement" in table
    for variant in ("naive", "siss (exact, two gradients)", "siss, single backward (K=10)", "siss on LoRA"):
        assert f"| {variant}" in table
    assert "| naive | " in table and "| +0.00 | +0.00 |" in table
