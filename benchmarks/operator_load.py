"""50 concurrent UnlearningJobs against the kmock API emulator: how fast does the operator react?

Measures, per job, the time from the create request to its trainer Job existing, and to its status reading
Running (the benchmark plays the Job controller and marks each Job active as soon as it appears), then the
p50 and p95 over jobs and the peak RSS of the process (operator, emulator and benchmark share it, so this
is an upper bound for the operator). Writes benchmarks/results/operator_load.md.

    python benchmarks/operator_load.py [--jobs 50]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.operator.harness import Cluster, VersionedEmulator, declare_resources, job_document, running_operator
from unlearning_operator.settings import Settings

RESULTS = Path(__file__).parent / "results" / "operator_load.md"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(count: int) -> tuple[dict[str, float], dict[str, float], float]:
    async with VersionedEmulator() as emulator:
        from kmock import Server

        async with Server(emulator):
            declare_resources(emulator)
            cluster = Cluster(emulator)
            names = [f"load-{i:03d}" for i in range(count)]
            created_at: dict[str, float] = {}
            job_at: dict[str, float] = {}
            running_at: dict[str, float] = {}
            async with running_operator(emulator, Settings(progress_poll_seconds=300)):
                start = time.perf_counter()

                async def submit(name: str) -> None:
                    created_at[name] = time.perf_counter()
                    await cluster.apply(job_document(name))

                await asyncio.gather(*(submit(name) for name in names))
                while len(running_at) < count and time.perf_counter() - start < 300:
                    jobs = {job["metadata"]["name"] for job in cluster.children("jobs")}
                    phases = {
                        job["metadata"]["name"]: (job.get("status") or {}).get("phase")
                        for job in cluster.children("unlearningjobs")
                    }
                    now = time.perf_counter()
                    for name in names:
                        if name not in job_at and f"{name}-r0" in jobs:
                            job_at[name] = now
                            await cluster.set_job_status(f"{name}-r0", {"active": 1})
                        if name not in running_at and phases.get(name) == "Running":
                            running_at[name] = now
                    await asyncio.sleep(0.05)
            to_job = {n: job_at[n] - created_at[n] for n in job_at}
            to_running = {n: running_at[n] - created_at[n] for n in running_at}
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return to_job, to_running, peak_rss_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50)
    args = parser.parse_args()
    to_job, to_running, rss = asyncio.run(measure(args.jobs))
    rows = []
    for label, values in (("create → trainer Job exists", to_job), ("create → status Running", to_running)):
        seconds = list(values.values())
        rows.append(
            f"| {label} | {len(seconds)}/{args.jobs} | {statistics.median(seconds):.2f} | "
            f"{percentile(seconds, 0.95):.2f} | {max(seconds):.2f} |"
        )
    text = "\n".join(
        [
            "# Operator load: concurrent UnlearningJobs against the kmock API emulator",
            "",
            f"{args.jobs} jobs created at once; the benchmark plays the Job controller. Produced by "
            "`python benchmarks/operator_load.py`; 2-core CPU, operator and emulator in one process.",
            "",
            "| latency | jobs | p50 (s) | p95 (s) | max (s) |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"Peak RSS of the whole process (operator + emulator + benchmark): {rss:.0f} MiB.",
        ]
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
