"""The whole path on the real control plane, in a user namespace other than the operator's: `kubectl apply` of an
UnlearningJob → the operator (the chart's Deployment, cluster-wide) → an Indexed Job that the real Job controller
turns into two pods → the node runs them as torchrun processes (gloo) → real S3 and MLflow → Succeeded.
Then a killed worker (the group restarts and resumes from the S3 checkpoint) and an eviction through the
Eviction API (the group checkpoints and the restart does not use up backoffLimit)."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from tests.cluster.api import eventually
from tests.cluster.jobs import (
    TRAINER_TIMEOUT,
    WORKERS,
    checkpoint_steps,
    events,
    job_document,
    mlflow_runs_of,
    read_json,
    until_phase,
)
from tests.cluster.platform import create_namespace, create_s3_secret
from tests.servers import SECRET_KEY

NAMESPACE = "team-vision"


@pytest.fixture(scope="module")
def user_namespace(platform, admin) -> str:
    create_namespace(admin, NAMESPACE)
    create_s3_secret(admin, NAMESPACE)
    return NAMESPACE


def test_unlearningjob_runs_two_workers_end_to_end(
    platform, admin, kubectl, node, user_namespace, s3_server, mlflow_server, s3_scenario
):
    steps = 6
    kubectl.apply(job_document("forget-e2e", user_namespace, s3_scenario, steps=steps, checkpoint_every=3))
    status = until_phase(admin, node, user_namespace, "forget-e2e", "Succeeded")

    pods = node.job_pods(user_namespace, "forget-e2e-r0")
    assert [pod.exit_code() for pod in pods] == [0] * WORKERS
    spec_file = pods[0].folder / "volumes" / "spec" / "job.yaml"
    assert f"endpoint: {s3_server.endpoint}" in spec_file.read_text(), "the chart's S3 default reached the pod"
    account = admin.get(f"/api/v1/namespaces/{user_namespace}/serviceaccounts/unlearning-trainer")
    assert account["automountServiceAccountToken"] is False and not account["metadata"].get("ownerReferences")
    assert pods[0].body["spec"]["serviceAccountName"] == "unlearning-trainer"
    assert not any("projected" in v for v in pods[0].body["spec"]["volumes"]), "trainer pods get no API token"

    assert status["restarts"] == 0 and status["jobName"] == "forget-e2e-r0"
    assert status["progress"] == {"step": steps, "totalSteps": steps, "percent": 100, "resumedFrom": 0}
    assert status["outputModelUri"] == s3_scenario["output"]
    audit = read_json(s3_server, status["audit"]["uri"])
    assert audit["request"]["id"] == "ticket-forget-e2e" and status["audit"]["passed"] == audit["verdict"]["passed"]
    metrics = read_json(s3_server, f"{s3_scenario['output']}/metrics.json")
    assert metrics["processes"] == WORKERS, "both pods must have joined one process group"
    assert metrics["status"] == "succeeded" and metrics["steps"] == steps
    assert read_json(s3_server, f"{s3_scenario['output']}/_MANIFEST.json")

    uid = kubectl.run("get", "uj", "forget-e2e", "-n", user_namespace, "-o", "jsonpath={.metadata.uid}").stdout
    runs = mlflow_runs_of(mlflow_server, uid)
    assert [run.info.run_id for run in runs] == [status["mlflow"]["runId"]], "one MLflow run per UnlearningJob"
    run = runs[0]
    client = MlflowClient(mlflow_server.url)
    assert run.info.status == "FINISHED"
    assert run.data.params["workers"] == str(WORKERS)
    assert "eval/memorization_rate" in run.data.metrics and run.data.metrics["progress/step"] == steps
    assert {artifact.path for artifact in client.list_artifacts(run.info.run_id)} >= {"audit.json", "metrics.json"}
    assert not any(SECRET_KEY in value for value in run.data.params.values()), "credentials must not reach MLflow"
    configmaps = admin.items(f"/api/v1/namespaces/{user_namespace}/configmaps")
    assert SECRET_KEY not in json.dumps(configmaps), "credentials must stay in the Secret"
    assert SECRET_KEY not in platform.operator_log(), "credentials must not reach the operator's log"


def test_a_killed_worker_restarts_the_group_which_resumes_from_the_checkpoint(
    platform, admin, kubectl, node, user_namespace, s3_server, mlflow_server, s3_scenario
):
    steps, checkpoint_every = 400, 10
    kubectl.apply(job_document("killed", user_namespace, s3_scenario, steps=steps, checkpoint_every=checkpoint_every))
    until_phase(admin, node, user_namespace, "killed", "Running")
    saved = eventually(
        lambda: node.check() and checkpoint_steps(s3_server, s3_scenario["output"]),
        timeout=TRAINER_TIMEOUT,
        what="a checkpoint in S3",
    )
    assert node.kill_workers(node.job_pods(user_namespace, "killed-r0")[1]), "worker 1 had no trainer process"
    status = until_phase(admin, node, user_namespace, "killed", "Succeeded")
    first, retry = node.job_pods(user_namespace, "killed-r0"), node.job_pods(user_namespace, "killed-r1")
    assert all(pod.exit_code() not in (None, 0) for pod in first), "the whole first group must have stopped"
    assert [pod.exit_code() for pod in retry] == [0] * WORKERS
    resumed = eventually(lambda: events(admin, user_namespace, "Resumed"), what="a Resumed event")

    resumed_from = status["progress"]["resumedFrom"]
    assert status["restarts"] == 1 and status["jobName"] == "killed-r1"
    assert saved[-1] <= resumed_from < steps, f"saw checkpoint {saved[-1]}, resumed from {resumed_from}"
    assert f"resumed from the checkpoint at step {resumed_from}" in resumed[0]["message"]
    restart = status["lastRestart"]
    assert restart["attempt"] == 1 and restart["reason"] == "WorkerKilled" and "worker rank 1" in restart["message"]
    assert "failure" not in status
    assert events(admin, user_namespace, "Restarting")
    metrics = read_json(s3_server, f"{s3_scenario['output']}/metrics.json")
    assert metrics["resumedFrom"] == resumed_from and metrics["steps"] == steps and metrics["processes"] == WORKERS

    client = MlflowClient(mlflow_server.url)
    run_id = status["mlflow"]["runId"]
    tags = client.get_run(run_id).data.tags
    assert tags["unlearning.dev/restarts"] == "1" and tags["unlearning.dev/last-restart-reason"] == "WorkerKilled"
    history = client.get_metric_history(run_id, "progress/resumedFrom")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.0), (resumed_from, float(resumed_from))]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_an_evicted_pod_checkpoints_and_the_restart_is_not_counted_as_a_failure(
    platform, admin, kubectl, node, user_namespace, s3_server, s3_scenario
):
    steps = 400
    document = job_document("evicted", user_namespace, s3_scenario, steps=steps, checkpoint_every=10, backoff_limit=0)
    kubectl.apply(document)
    until_phase(admin, node, user_namespace, "evicted", "Running")
    eventually(
        lambda: node.check() and checkpoint_steps(s3_server, s3_scenario["output"]),
        timeout=TRAINER_TIMEOUT,
        what="a checkpoint in S3",
    )
    victim = node.job_pods(user_namespace, "evicted-r0")[1]
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": victim.name}}
    admin.request("POST", f"/api/v1/namespaces/{user_namespace}/pods/{victim.name}/eviction", eviction)
    status = until_phase(admin, node, user_namespace, "evicted", "Succeeded")
    summaries = [json.loads(pod.termination_log.read_text()) for pod in node.job_pods(user_namespace, "evicted-r0")]

    assert {summary["reason"] for summary in summaries} == {"Interrupted"}, "every worker stopped at a checkpoint"
    stopped = summaries[0]["step"]
    assert status["restarts"] == 1 and status["preemptions"] == 1, "with backoffLimit 0 only a preemption restarts"
    assert status["lastRestart"]["reason"] == "Interrupted"
    assert status["progress"]["resumedFrom"] == stopped, "the restart resumes at the step the group stopped at"
    assert status["progress"]["step"] == steps
