"""An UnlearningJob's life on the real control plane: suspend and resume, deletion mid-run (the real garbage
collector removes the children), the operator restarted mid-job, TTL after finish, and a namespace deleted
while the operator is not running."""

from __future__ import annotations

import pytest

from tests.cluster.api import eventually
from tests.cluster.jobs import (
    TRAINER_TIMEOUT,
    checkpoint_steps,
    events,
    get,
    job_document,
    mlflow_runs_of,
    patch_suspend,
    status,
    until_phase,
)
from tests.cluster.platform import OPERATOR_SELECTOR, create_namespace, create_s3_secret

NAMESPACE = "team-lifecycle"


@pytest.fixture(scope="module")
def user_namespace(platform, admin) -> str:
    create_namespace(admin, NAMESPACE)
    create_s3_secret(admin, NAMESPACE)
    return NAMESPACE


def _uid(admin, name: str) -> str:
    return get(admin, NAMESPACE, name)["metadata"]["uid"]


def _jobs(admin, name: str) -> list[str]:
    jobs = admin.items(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs?labelSelector=unlearning.dev/job={name}")
    return [job["metadata"]["name"] for job in jobs]


def _until_checkpoint(node, s3_server, output: str) -> list[int]:
    return eventually(
        lambda: node.check() and checkpoint_steps(s3_server, output), timeout=TRAINER_TIMEOUT, what="a checkpoint"
    )


def test_suspend_stops_the_pods_and_resume_continues_from_the_checkpoint(
    platform, admin, kubectl, node, user_namespace, s3_server, s3_scenario
):
    kubectl.apply(job_document("pausable", NAMESPACE, s3_scenario, steps=300, checkpoint_every=10))
    until_phase(admin, node, NAMESPACE, "pausable", "Running")
    _until_checkpoint(node, s3_server, s3_scenario["output"])

    patch_suspend(kubectl, NAMESPACE, "pausable", True)
    suspended = until_phase(admin, node, NAMESPACE, "pausable", "Suspended")
    assert admin.get(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/pausable-r0")["spec"]["suspend"] is True
    eventually(
        lambda: not admin.items(f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=unlearning.dev/job=pausable"),
        timeout=60,
        what="the real Job controller to remove the pods of the suspended Job",
    )
    stopped_at = checkpoint_steps(s3_server, s3_scenario["output"])[-1]
    assert {c["type"]: c["status"] for c in suspended["conditions"]}["Suspended"] == "True"

    patch_suspend(kubectl, NAMESPACE, "pausable", False)
    running = until_phase(admin, node, NAMESPACE, "pausable", "Running")
    assert {c["type"]: c["status"] for c in running["conditions"]}["Suspended"] == "False"
    assert running["reason"] != "JobSuspended", "the status after resume must show the real state"
    done = until_phase(admin, node, NAMESPACE, "pausable", "Succeeded")
    assert done["restarts"] == 0, "a suspension is not a failure"
    assert done["progress"]["resumedFrom"] >= stopped_at > 0, "the resumed pods continue from the checkpoint"


def test_deleting_a_running_job_removes_its_children_through_owner_references(
    platform, admin, kubectl, node, user_namespace, s3_scenario, mlflow_server
):
    kubectl.apply(job_document("doomed", NAMESPACE, s3_scenario, steps=2000, checkpoint_every=1000))
    until_phase(admin, node, NAMESPACE, "doomed", "Running")
    run_id = status(admin, NAMESPACE, "doomed")["mlflow"]["runId"]
    kubectl.run("delete", "uj", "doomed", "-n", NAMESPACE, "--timeout=60s")

    def children() -> list[str]:
        found = []
        for plural in ("pods", "services", "configmaps"):
            items = admin.items(f"/api/v1/namespaces/{NAMESPACE}/{plural}?labelSelector=unlearning.dev/job=doomed")
            found += [f"{plural}/{item['metadata']['name']}" for item in items]
        return found + [f"jobs/{name}" for name in _jobs(admin, "doomed")]

    eventually(lambda: not children(), timeout=90, what=f"garbage collection of {children()}")
    from mlflow import MlflowClient

    run = eventually(
        lambda: (r := MlflowClient(mlflow_server.url).get_run(run_id)).info.status == "KILLED" and r,
        timeout=30,
        what="the MLflow run to be marked KILLED",
    )
    assert run.info.status == "KILLED"


def test_an_operator_restart_mid_job_duplicates_nothing(
    platform, admin, kubectl, node, user_namespace, s3_server, s3_scenario, mlflow_server
):
    kubectl.apply(job_document("steady", NAMESPACE, s3_scenario, steps=200, checkpoint_every=20))
    until_phase(admin, node, NAMESPACE, "steady", "Running")
    kubectl.run("delete", "pod", "-n", "ml-platform", "-l", OPERATOR_SELECTOR, "--wait=true", "--timeout=60s")
    platform.wait_for_operator()
    until_phase(admin, node, NAMESPACE, "steady", "Succeeded")
    assert _jobs(admin, "steady") == ["steady-r0"], "the restarted operator must not create a second Job"
    runs = mlflow_runs_of(mlflow_server, _uid(admin, "steady"))
    assert len(runs) == 1, "one MLflow run per UnlearningJob, ever"


def test_retries_and_an_operator_restart_while_creating_leave_one_mlflow_run(
    platform, admin, kubectl, node, s3_server, s3_scenario, mlflow_server
):
    """A ResourceQuota that allows no Jobs makes the API server refuse the trainer Job with a refusal that may
    pass: the operator retries (CreateRetrying), is restarted meanwhile, and once the quota is lifted the job
    runs. However often creation was tried, there is one MLflow run."""
    create_namespace(admin, "team-quota")
    create_s3_secret(admin, "team-quota")
    quota = {"metadata": {"name": "no-jobs"}, "spec": {"hard": {"count/jobs.batch": "0"}}}
    admin.request("POST", "/api/v1/namespaces/team-quota/resourcequotas", quota)
    eventually(
        lambda: "hard" in (admin.get("/api/v1/namespaces/team-quota/resourcequotas/no-jobs").get("status") or {}),
        what="the quota controller to account the quota",
    )
    kubectl.apply(job_document("quota-bound", "team-quota", s3_scenario, steps=2, checkpoint_every=2, workers=1))

    def retrying(times: int) -> list[dict] | None:
        found = [e for e in events(admin, "team-quota", "CreateRetrying") if "exceeded quota" in e["message"]]
        return found if sum(e.get("count", 1) for e in found) >= times else None

    eventually(lambda: retrying(2), timeout=60, what="two retries refused by the quota")
    created = status(admin, "team-quota", "quota-bound")
    assert {c["type"]: c for c in created["conditions"]}["Created"]["reason"] == "CreateRetrying"
    kubectl.run("delete", "pod", "-n", "ml-platform", "-l", OPERATOR_SELECTOR, "--wait=true", "--timeout=60s")
    platform.wait_for_operator()
    eventually(lambda: retrying(3), timeout=60, what="the restarted operator to retry as well")

    admin.delete("/api/v1/namespaces/team-quota/resourcequotas/no-jobs")
    done = until_phase(admin, node, "team-quota", "quota-bound", "Succeeded")
    runs = mlflow_runs_of(mlflow_server, get(admin, "team-quota", "quota-bound")["metadata"]["uid"])
    assert len(runs) == 1 and runs[0].info.run_id == done["mlflow"]["runId"], "one MLflow run per job, ever"


def test_the_trainer_job_is_removed_after_its_ttl(platform, admin, kubectl, node, user_namespace, s3_scenario):
    ttl = {"ttlSecondsAfterFinished": 2}
    document = job_document("short-lived", NAMESPACE, s3_scenario, steps=2, checkpoint_every=2, run_policy=ttl)
    kubectl.apply(document)
    until_phase(admin, node, NAMESPACE, "short-lived", "Succeeded")
    eventually(lambda: not _jobs(admin, "short-lived"), timeout=60, what="the ttl-after-finished controller")
    assert status(admin, NAMESPACE, "short-lived")["phase"] == "Succeeded", "the UnlearningJob keeps its record"


def test_deleting_a_namespace_while_the_operator_is_stopped_does_not_hang(
    platform, admin, kubectl, node, s3_server, s3_scenario
):
    create_namespace(admin, "team-leaving")
    create_s3_secret(admin, "team-leaving")
    kubectl.apply(job_document("abandoned", "team-leaving", s3_scenario, steps=2000, checkpoint_every=1000))
    until_phase(admin, node, "team-leaving", "abandoned", "Running")
    platform.scale(0)
    try:
        kubectl.run("delete", "namespace", "team-leaving", "--wait=false")
        left = lambda: admin.get("/api/v1/namespaces/team-leaving", missing_ok=True)  # noqa: E731
        try:
            eventually(lambda: left() is None, timeout=120, what="the namespace to go while no operator runs")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {(left() or {}).get('status')}") from None
    finally:
        platform.scale(1)
