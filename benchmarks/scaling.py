"""Training throughput of 1 vs 2 trainer processes (torchrun, gloo) on this CPU, side by side in one run.

Same job, same global batch (64), the digits U-Net; only optimizer steps are timed (`trainSeconds` in
metrics.json). 1 process uses 2 threads, 2 processes 1 thread each, so both use the 2 cores.
Writes benchmarks/results/scaling.md.

    python benchmarks/scaling.py [--steps 40] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from unlearning_trainer.demo import DemoSettings, demo_job

RESULTS = Path(__file__).parent / "results" / "scaling.md"


def run(processes: int, steps: int, folder: Path) -> dict:
    job = demo_job(DemoSettings(steps=steps, evaluate_every=steps, samples=8), folder / f"p{processes}")
    document = job.model_dump(mode="json", by_alias=True, exclude={"status"})
    document["spec"]["evaluation"].update({"inferenceSteps": 2, "retainImages": 16, "nll": {"timesteps": 10}})
    path = folder / f"job-{processes}.yaml"
    path.write_text(yaml.safe_dump(document))
    base = [sys.executable, "-m", "unlearning_trainer.cli"]
    if processes > 1:
        base = [
            str(Path(sys.executable).with_name("torchrun")),
            "--nproc-per-node",
            str(processes),
            "--master-port",
            "29541",
            "--module",
            "unlearning_trainer.cli",
        ]
    threads = str(max(1, (os.cpu_count() or 2) // processes))
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    subprocess.run([*base, "run", str(path), "--no-progress"], check=True, env=env, capture_output=True)
    return json.loads((folder / f"p{processes}" / "model" / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    seconds: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for processes in (1, 2):
            with tempfile.TemporaryDirectory() as folder:
                metrics = run(processes, args.steps, Path(folder))
                assert metrics["processes"] == processes
                seconds[processes].append(metrics["trainSeconds"] / args.steps)
    one, two = statistics.median(seconds[1]), statistics.median(seconds[2])
    cores = os.cpu_count() or 2
    text = "\n".join(
        [
            "# Scaling: 1 vs 2 trainer processes on CPU",
            "",
            f"Digits U-Net (1.06 M parameters), SISS, global batch 64, {args.steps} steps, median of {args.rounds} "
            f"interleaved rounds, {os.cpu_count()} cores. Produced by `python benchmarks/scaling.py`.",
            "",
            "| processes | threads each | s / step | samples / s | speed-up |",
            "|---|---|---|---|---|",
            f"| 1 | {cores} | {one:.3f} | {64 / one:.0f} | 1.00 |",
            f"| 2 (torchrun, gloo) | {max(1, cores // 2)} | {two:.3f} | {64 / two:.0f} | {one / two:.2f} |",
        ]
    )
    RESULTS.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
