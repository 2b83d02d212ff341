"""50 UnlearningJobs created at once: how fast does the operator react, and how much memory does it need?

Measures, per job, the time from the create request to its trainer Job existing and to its status reading
Running, then the p50, p95 and max over jobs. Three setups, side by side in one run (the machines are noisy,
so only numbers from the same run are compared):

- **real control plane**: etcd, kube-apiserver and kube-controller-manager built from Go modules
  (`tests/cluster/build.sh`), the chart installed with helm, the operator running as the chart's Deployment pod
  on the local node of `tests/cluster/node.py` (authenticated as its ServiceAccount, RBAC enforced). The real
  Job controller creates the pods; the node binds them and runs `sleep` in place of each trainer, so Running
  includes the Job controller and the node's 0.2 s loop. Run twice: without MLflow, then with a real MLflow
  server (one run created per job). The operator's memory is the peak RSS (VmHWM) of its process.
- **kmock**: the API emulator of the unit tests, operator in the same process, the benchmark playing the Job
  controller (marks each Job ready as soon as it appears), no MLflow. Its RSS is the whole process's.

    python benchmarks/operator_load.py [--jobs 50]

Needs Go (first build: minutes) and writes benchmarks/results/operator_load.md.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cluster.api import Api
from tests.cluster.control_plane import AUDITED_NAMESPACE, ControlPlane, build
from tests.cluster.jobs import GROUP_PATH
from tests.cluster.jobs import job_document as cluster_job
from tests.cluster.node import LocalNode
from tests.cluster.platform import Kubectl, Platform, create_namespace, create_s3_secret, install, uninstall
from tests.operator.harness import Cluster, LeanEmulator, declare_resources, job_document, running_operator
from tests.servers import MlflowServer
from unlearning_operator.settings import Settings

RESULTS = Path(__file__).parent / "results" / "operator_load.md"
TIMEOUT = 300.0
URIS = {
    "model": "s3://models/load/tiny-ddpm",
    "forget": "s3://datasets/load/forget",
    "retain": "s3://datasets/load/retain",
    "output": "s3://outputs/load/unlearned",
}

Latencies = dict[str, float]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ----- the real control plane -------------------------------------------------------------------------------


@contextmanager
def cluster(root: Path) -> Iterator[tuple[ControlPlane, Api, LocalNode, Kubectl]]:
    plane = ControlPlane(build()[0], root / "control-plane")
    plane.start()
    print(f"control plane up in {plane.started_in:.1f} s", file=sys.stderr)
    admin = plane.admin_api()
    node = LocalNode(admin, root / "node", node_env={"OMP_NUM_THREADS": "1"}, stand_in=["sleep", "3600"])
    node.start()
    try:
        yield plane, admin, node, Kubectl(plane)
    finally:
        node.stop()
        plane.stop()


def operator_peak_rss_mib(platform: Platform) -> float:
    """VmHWM of the operator pod's process (the node runs it as a local process)."""
    for pod in platform.node.pods.values():
        if pod.namespace == AUDITED_NAMESPACE and pod.process is not None and pod.exit_code() is None:
            for line in Path(f"/proc/{pod.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    raise RuntimeError("the operator pod's process is not running")


def measure_cluster(
    plane: ControlPlane, admin: Api, node: LocalNode, kubectl: Kubectl, count: int, mlflow_url: str | None
) -> tuple[Latencies, Latencies, float]:
    """Install the chart, create `count` jobs at once in a fresh namespace, time them, uninstall."""
    namespace = "load-mlflow" if mlflow_url else "load"
    create_namespace(admin, AUDITED_NAMESPACE)
    values = ["--set", "s3Endpoint=http://127.0.0.1:1", "--set", "trainer.gpusPerWorker=0"]
    if mlflow_url:
        values += ["--set", f"mlflow.trackingUri={mlflow_url}"]
    install(kubectl, *values)
    platform = Platform(kubectl, admin, node, plane, values)
    try:
        platform.wait_for_operator()
        create_namespace(admin, namespace)
        create_s3_secret(admin, namespace)
        names = [f"load-{i:03d}" for i in range(count)]
        documents = [cluster_job(name, namespace, URIS, steps=10, checkpoint_every=5, workers=1) for name in names]
        collection = f"{GROUP_PATH}/namespaces/{namespace}/unlearningjobs"
        to_job, to_running = _time_jobs(
            names,
            create=lambda document: admin.request("POST", collection, document),
            documents=documents,
            jobs=lambda: {j["metadata"]["name"] for j in admin.items(f"/apis/batch/v1/namespaces/{namespace}/jobs")},
            phases=lambda: {
                u["metadata"]["name"]: (u.get("status") or {}).get("phase") for u in admin.items(collection)
            },
            check=node.check,
        )
        rss = operator_peak_rss_mib(platform)
    finally:
        uninstall(kubectl)
    admin.delete(f"/api/v1/namespaces/{namespace}")
    return to_job, to_running, rss


def _time_jobs(
    names: list[str],
    *,
    create: Callable[[dict], object],
    documents: list[dict],
    jobs: Callable[[], set[str]],
    phases: Callable[[], dict[str, str | None]],
    check: Callable[[], bool],
) -> tuple[Latencies, Latencies]:
    """Create every job from a thread pool while this thread polls for their trainer Jobs and phases."""
    created_at: dict[str, float] = {}
    job_at: dict[str, float] = {}
    running_at: dict[str, float] = {}
    start = time.perf_counter()

    def submit(name: str, document: dict) -> None:
        created_at[name] = time.perf_counter()
        create(document)

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        submitted = [pool.submit(submit, name, doc) for name, doc in zip(names, documents, strict=True)]
        while len(running_at) < len(names) and time.perf_counter() - start < TIMEOUT:
            check()
            existing, current = jobs(), phases()
            now = time.perf_counter()
            for name in created_at.copy():
                if name not in job_at and f"{name}-r0" in existing:
                    job_at[name] = now
                if name not in running_at and current.get(name) == "Running":
                    running_at[name] = now
            time.sleep(0.05)
        for future in submitted:
            future.result()
    return (
        {n: job_at[n] - created_at[n] for n in job_at},
        {n: running_at[n] - created_at[n] for n in running_at},
    )


# ----- kmock ------------------------------------------------------------------------------------------------


async def measure_kmock(count: int) -> tuple[Latencies, Latencies]:
    from kmock import Server

    async with LeanEmulator() as emulator, Server(emulator):
        declare_resources(emulator)
        fake = Cluster(emulator)
        names = [f"load-{i:03d}" for i in range(count)]
        created_at: dict[str, float] = {}
        job_at: dict[str, float] = {}
        running_at: dict[str, float] = {}
        async with running_operator(emulator, Settings(progress_poll_seconds=300)):
            start = time.perf_counter()
            activations: list[asyncio.Task[None]] = []

            async def watch() -> None:
                """Poll from before the first create; play the Job controller without delaying the poll."""
                while len(running_at) < count and time.perf_counter() - start < TIMEOUT:
                    jobs = {job["metadata"]["name"] for job in fake.children("jobs")}
                    phases = {
                        job["metadata"]["name"]: (job.get("status") or {}).get("phase")
                        for job in fake.children("unlearningjobs")
                    }
                    now = time.perf_counter()
                    for name in names:
                        if name not in job_at and f"{name}-r0" in jobs:
                            job_at[name] = now
                            activations.append(
                                asyncio.create_task(fake.set_job_status(f"{name}-r0", {"active": 1, "ready": 1}))
                            )
                        if name not in running_at and phases.get(name) == "Running":
                            running_at[name] = now
                    await asyncio.sleep(0.02)

            async def submit(name: str) -> None:
                created_at[name] = time.perf_counter()
                await fake.apply(job_document(name))

            watcher = asyncio.create_task(watch())
            await asyncio.gather(*(submit(name) for name in names))
            await watcher
            await asyncio.gather(*activations)
    return {n: job_at[n] - created_at[n] for n in job_at}, {n: running_at[n] - created_at[n] for n in running_at}


# ----- the report -------------------------------------------------------------------------------------------


def _rows(label: str, count: int, to_job: Latencies, to_running: Latencies, rss: float) -> list[str]:
    rows = []
    for latency, values in (("create → trainer Job", to_job), ("create → Running", to_running)):
        seconds = list(values.values())
        if not seconds:
            rows.append(f"| {label} | {latency} | 0/{count} | – | – | – | {rss:.0f} |")
            continue
        rows.append(
            f"| {label} | {latency} | {len(seconds)}/{count} | {statistics.median(seconds):.2f} | "
            f"{percentile(seconds, 0.95):.2f} | {max(seconds):.2f} | {rss:.0f} |"
        )
    return rows


def _median_ratio(slow: Latencies, fast: Latencies) -> str:
    if not slow or not fast:
        return "n/a"
    return f"{statistics.median(slow.values()) / statistics.median(fast.values()):.1f}×"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50)
    args = parser.parse_args()
    versions = build()[1]
    with tempfile.TemporaryDirectory(prefix="operator-load-") as folder:
        root = Path(folder)
        with cluster(root) as (plane, admin, node, kubectl):
            plain = measure_cluster(plane, admin, node, kubectl, args.jobs, None)
            mlflow = MlflowServer(root=root / "mlflow")
            mlflow.start()
            try:
                tracked = measure_cluster(plane, admin, node, kubectl, args.jobs, mlflow.url)
            finally:
                mlflow.stop()
    kmock = asyncio.run(measure_kmock(args.jobs))
    kmock_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = "\n".join(
        [
            "# Operator load: 50 UnlearningJobs at once",
            "",
            f"{args.jobs} jobs created at once (16 client threads), one worker each. Produced by "
            "`python benchmarks/operator_load.py` on a 2-core CPU; every row comes from the same run.",
            "",
            "| setup | latency | jobs | p50 (s) | p95 (s) | max (s) | operator peak RSS (MiB) |",
            "|---|---|---|---|---|---|---|",
            *_rows("real control plane", args.jobs, *plain),
            *_rows("real control plane + MLflow", args.jobs, *tracked),
            *_rows("kmock emulator", args.jobs, *kmock, kmock_rss),
            "",
            f"On the real control plane create → Running takes {_median_ratio(plain[1], kmock[1])} as long at the "
            "median as on kmock: there the real Job controller creates the pods, the node binds and starts them "
            "and reports them Ready, and the Job controller counts them before the operator sees a ready Job. "
            f"With MLflow, create → Job takes {_median_ratio(tracked[0], plain[0])} as long at the median: the "
            "run is created before the children, against a test server with one worker and a sqlite backend, "
            "and the operator's handler threads (kopf's executor) wait on it; the MLflow client also accounts "
            "for the larger RSS. The kmock RSS is the whole process (operator, emulator and this benchmark); the "
            "real-control-plane RSS is the operator pod's process alone.",
            "",
            "Built from Go modules:",
            "",
            *[f"    {line}" for line in versions.splitlines()],
        ]
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
