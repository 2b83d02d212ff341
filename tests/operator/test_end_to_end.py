"""The whole path without a cluster: an UnlearningJob goes to the kopf operator (against kmock over HTTP), which
creates an Indexed Job whose two pods a local kubelet runs as real processes (torchrun, gloo); the trainers
read from and write to the real S3 server and log to the real MLflow server, and the resource ends Succeeded.
The second test kills one worker mid-run: the operator restarts the group and the retry resumes from the
checkpoint in S3. The third evicts a pod (SIGTERM): the group checkpoints the step it is at, and the restart
resumes there without using up the retry budget."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.operator.harness import NAMESPACE, Cluster, LeanEmulator, eventually, running_operator
from tests.operator.kubelet import LocalKubelet, running_kubelet
from tests.servers import ACCESS_KEY, SECRET_KEY
from unlearning_operator.settings import Settings

pytestmark = pytest.mark.kmock(cls=LeanEmulator)

WORKERS = 2
SECRET = "s3-credentials"
TRAINER_TIMEOUT = 300.0


def _document(
    name: str, uris: dict[str, str], *, steps: int, checkpoint_every: int, backoff_limit: int = 3
) -> dict[str, Any]:
    return {
        "apiVersion": "unlearning.dev/v1alpha1",
        "kind": "UnlearningJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"uri": uris["model"]},
            "data": {"forget": {"uri": uris["forget"]}, "retain": {"uri": uris["retain"]}},
            "method": {"name": "siss", "lambda": 0.5, "forgetGradNorm": 5.0},
            "workers": WORKERS,
            "training": {"steps": steps, "batchSize": 8, "checkpointEvery": checkpoint_every},
            "evaluation": {
                "every": steps,
                "numSamples": 8,
                "inferenceSteps": 4,
                "memorizationThreshold": 2.0,
                "retainImages": 16,
                "nll": {"timesteps": 10},
            },
            "output": {"uri": uris["output"]},
            "storage": {"credentialsSecret": SECRET},
            "tracking": {"experiment": "end-to-end"},
            "audit": {"requestId": f"ticket-{name}"},
            "runPolicy": {"backoffLimit": backoff_limit},
        },
    }


async def _create_secret(cluster: Cluster) -> None:
    data = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NAMESPACE},
        "type": "Opaque",
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
    }
    await cluster.request("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", secret)


@contextlib.asynccontextmanager
async def _platform(cluster: Cluster, kmock, s3_server, mlflow_server, node: Path) -> AsyncIterator[LocalKubelet]:
    """Operator defaults as a platform team would set them in the chart, and one CPU node."""
    settings = Settings(
        s3_endpoint=s3_server.endpoint,
        mlflow_tracking_uri=mlflow_server.url,
        gpus_per_worker=0,
        progress_poll_seconds=0.5,
        termination_grace_seconds=20,
    )
    await _create_secret(cluster)
    async with (
        running_operator(kmock, settings),
        running_kubelet(cluster, node, node_env={"OMP_NUM_THREADS": "1"}) as kubelet,
    ):
        yield kubelet


async def _until_phase(cluster: Cluster, kubelet: LocalKubelet, name: str, phase: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        kubelet.check()
        status = cluster.status(name)
        if status.get("phase") == "Failed" and phase != "Failed":
            logs = {pod.name: pod.log.read_text()[-3000:] for job in kubelet.jobs.values() for pod in job.pods}
            raise AssertionError(f"the job failed: {status.get('failure')}\n{json.dumps(logs, indent=1)}")
        return status if status.get("phase") == phase else None

    return await eventually(reached, timeout=TRAINER_TIMEOUT, what=f"{name} {phase}")


def _read_json(s3_server, uri: str) -> dict[str, Any]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return json.loads(s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def _checkpoint_steps(s3_server, output: str) -> list[int]:
    bucket, _, key = output.removeprefix("s3://").partition("/")
    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix=f"{key}/checkpoints/")
    return sorted(
        int(obj["Key"].split("/")[-2].removeprefix("step-"))
        for obj in listed.get("Contents", [])
        if obj["Key"].endswith("/_MANIFEST.json")
    )


async def test_unlearningjob_runs_two_workers_end_to_end(
    cluster, kmock, s3_server, mlflow_server, s3_scenario, tmp_path
):
    steps = 6
    async with _platform(cluster, kmock, s3_server, mlflow_server, tmp_path / "node") as kubelet:
        await cluster.apply(_document("forget-e2e", s3_scenario, steps=steps, checkpoint_every=3))
        status = await _until_phase(cluster, kubelet, "forget-e2e", "Succeeded")
        pods = kubelet.job("forget-e2e-r0").pods
        assert [pod.exit_code() for pod in pods] == [0] * WORKERS
        spec_file = pods[0].folder / "volumes" / "spec" / "job.yaml"
        assert f"endpoint: {s3_server.endpoint}" in spec_file.read_text(), "the operator's S3 default reached the pod"

    assert status["restarts"] == 0 and status["jobName"] == "forget-e2e-r0"
    assert status["progress"] == {"step": steps, "totalSteps": steps, "percent": 100, "resumedFrom": 0}
    assert status["outputModelUri"] == s3_scenario["output"]
    assert status["audit"]["uri"] == f"{s3_scenario['output']}/audit.json"
    audit = _read_json(s3_server, status["audit"]["uri"])
    assert audit["request"]["id"] == "ticket-forget-e2e"
    assert status["audit"]["passed"] == audit["verdict"]["passed"]
    metrics = _read_json(s3_server, f"{s3_scenario['output']}/metrics.json")
    assert metrics["processes"] == WORKERS, "both pods must have joined one process group"
    assert metrics["status"] == "succeeded" and metrics["steps"] == steps
    assert _read_json(s3_server, f"{s3_scenario['output']}/_MANIFEST.json")

    client = MlflowClient(mlflow_server.url)
    run = client.get_run(status["mlflow"]["runId"])
    assert run.info.status == "FINISHED"
    assert run.data.params["workers"] == str(WORKERS)
    assert "eval/memorization_rate" in run.data.metrics
    assert run.data.metrics["progress/step"] == steps
    assert {artifact.path for artifact in client.list_artifacts(run.info.run_id)} >= {"audit.json", "metrics.json"}
    assert not any(SECRET_KEY in value for value in run.data.params.values()), "credentials must not reach MLflow"
    assert SECRET_KEY not in json.dumps(cluster.children("configmaps")), "credentials must stay in the Secret"


async def test_a_killed_worker_restarts_the_group_which_resumes_from_the_checkpoint(
    cluster, kmock, s3_server, mlflow_server, s3_scenario, tmp_path
):
    steps, checkpoint_every = 400, 10
    async with _platform(cluster, kmock, s3_server, mlflow_server, tmp_path / "node") as kubelet:
        await cluster.apply(_document("killed", s3_scenario, steps=steps, checkpoint_every=checkpoint_every))
        await _until_phase(cluster, kubelet, "killed", "Running")
        saved = await eventually(
            lambda: kubelet.check() and _checkpoint_steps(s3_server, s3_scenario["output"]),
            timeout=TRAINER_TIMEOUT,
            what="a checkpoint in S3",
        )
        assert kubelet.kill_workers("killed-r0", 1), "worker 1 had no trainer process to kill"
        status = await _until_phase(cluster, kubelet, "killed", "Succeeded")
        first, retry = kubelet.job("killed-r0").pods, kubelet.job("killed-r1").pods
        assert all(pod.exit_code() not in (None, 0) for pod in first), "the whole first group must have stopped"
        assert [pod.exit_code() for pod in retry] == [0] * WORKERS
        resumed = await eventually(lambda: cluster.events("Resumed"), what="a Resumed event")

    resumed_from = status["progress"]["resumedFrom"]
    assert status["restarts"] == 1 and status["jobName"] == "killed-r1"
    assert saved[-1] <= resumed_from < steps, f"saw checkpoint {saved[-1]}, resumed from {resumed_from}"
    assert f"resumed from the checkpoint at step {resumed_from}" in resumed[0]["message"]
    restart = status["lastRestart"]
    assert restart["attempt"] == 1 and restart["reason"] == "WorkerKilled" and "worker rank 1" in restart["message"]
    assert "failure" not in status
    assert {"Restarting"} <= {event["reason"] for event in cluster.events()}
    metrics = _read_json(s3_server, f"{s3_scenario['output']}/metrics.json")
    assert metrics["resumedFrom"] == resumed_from and metrics["steps"] == steps and metrics["processes"] == WORKERS

    client = MlflowClient(mlflow_server.url)
    run_id = status["mlflow"]["runId"]
    tags = client.get_run(run_id).data.tags
    assert tags["unlearning.dev/restarts"] == "1" and tags["unlearning.dev/last-restart-reason"] == "WorkerKilled"
    history = client.get_metric_history(run_id, "progress/resumedFrom")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.0), (resumed_from, float(resumed_from))]
    assert client.get_run(run_id).info.status == "FINISHED"


async def test_an_evicted_pod_checkpoints_and_the_restart_is_not_counted_as_a_failure(
    cluster, kmock, s3_server, mlflow_server, s3_scenario, tmp_path
):
    steps = 400
    async with _platform(cluster, kmock, s3_server, mlflow_server, tmp_path / "node") as kubelet:
        document = _document("evicted", s3_scenario, steps=steps, checkpoint_every=10, backoff_limit=0)
        await cluster.apply(document)
        await _until_phase(cluster, kubelet, "evicted", "Running")
        await eventually(
            lambda: kubelet.check() and _checkpoint_steps(s3_server, s3_scenario["output"]),
            timeout=TRAINER_TIMEOUT,
            what="a checkpoint in S3",
        )
        kubelet.evict("evicted-r0", 1)
        status = await _until_phase(cluster, kubelet, "evicted", "Succeeded")
        summaries = [json.loads(pod.termination_log.read_text()) for pod in kubelet.job("evicted-r0").pods]

    assert {summary["reason"] for summary in summaries} == {"Interrupted"}, "every worker stopped at a checkpoint"
    stopped = summaries[0]["step"]
    assert status["restarts"] == 1 and status["preemptions"] == 1, "with backoffLimit 0 only a preemption restarts"
    assert status["lastRestart"]["reason"] == "Interrupted"
    assert status["progress"]["resumedFrom"] == stopped, "the restart resumes at the step the group stopped at"
    assert status["progress"]["step"] == steps
