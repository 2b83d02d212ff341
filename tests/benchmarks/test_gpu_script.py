"""benchmarks/gpu.py keeps working: on a CPU it runs every variant at a tiny size and writes its table (in one
process, to keep the suite short; the default isolates each variant in its own)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"


def test_the_gpu_benchmark_runs_at_a_tiny_size_on_a_cpu(tmp_path):
    out = tmp_path / "gpu.md"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--rounds", "1", "--steps", "1", "--one-process", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = out.read_text()
    assert "a smoke run, not a measurement" in table
    for variant in ("naive", "siss (exact, two gradients)", "siss, single backward (K=10)", "siss on LoRA"):
        assert f"| {variant}" in table
    assert "| naive | " in table and "| 1.00 |" in table
