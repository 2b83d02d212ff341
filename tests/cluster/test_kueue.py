"""Kueue's convention on the real control plane: for a job with a queue-name label the operator never flips
`Job.spec.suspend` (Kueue owns it) and suspends or resumes through the Workload's `spec.active`.

Kueue itself is not built here: the test installs a stand-in for its Workload CRD (same group, kind and
label convention, schema left open) and plays Kueue's two acts that matter: creating the Workload of the Job
and suspending the Job once the Workload is deactivated. The API server, RBAC and Job controller are real.
"""

from __future__ import annotations

import time

import pytest

from tests.cluster.api import eventually
from tests.cluster.jobs import job_document, patch_suspend, status, until_phase
from tests.cluster.platform import create_namespace, create_s3_secret

NAMESPACE = "team-kueue"
KUEUE = "kueue.x-k8s.io"
WORKLOADS = f"/apis/{KUEUE}/v1beta2/namespaces/{NAMESPACE}/workloads"
WORKLOAD_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"workloads.{KUEUE}"},
    "spec": {
        "group": KUEUE,
        "names": {"kind": "Workload", "plural": "workloads", "singular": "workload", "listKind": "WorkloadList"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1beta2",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }
        ],
    },
}


@pytest.fixture(scope="module")
def workload_crd(admin) -> None:
    admin.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", WORKLOAD_CRD)
    eventually(lambda: admin.get(WORKLOADS, missing_ok=True) is not None, what="the Workload API to be served")


def _job(admin, name: str) -> dict:
    return admin.get(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{name}")


def _workload_active(admin, name: str) -> bool:
    return admin.get(f"{WORKLOADS}/{name}")["spec"]["active"]


def _condition(admin, type_: str) -> dict:
    return {c["type"]: c for c in status(admin, NAMESPACE, "queued").get("conditions", [])}.get(type_) or {}


def test_a_queued_job_is_suspended_and_resumed_through_its_workload(
    platform, admin, kubectl, node, workload_crd, s3_scenario
):
    create_namespace(admin, NAMESPACE)
    create_s3_secret(admin, NAMESPACE)
    document = job_document("queued", NAMESPACE, s3_scenario, steps=300, checkpoint_every=10, workers=1)
    document["metadata"]["labels"] = {f"{KUEUE}/queue-name": "gpu-queue"}
    kubectl.apply(document)
    until_phase(admin, node, NAMESPACE, "queued", "Running")
    job = _job(admin, "queued-r0")
    assert job["metadata"]["labels"][f"{KUEUE}/queue-name"] == "gpu-queue"
    workload = {
        "apiVersion": f"{KUEUE}/v1beta2",
        "kind": "Workload",
        "metadata": {"name": "job-queued-r0", "labels": {f"{KUEUE}/job-uid": job["metadata"]["uid"]}},
        "spec": {"active": True, "queueName": "gpu-queue"},
    }
    admin.request("POST", WORKLOADS, workload)

    patch_suspend(kubectl, NAMESPACE, "queued", True)
    eventually(lambda: not _workload_active(admin, "job-queued-r0"), what="the Workload to be deactivated")
    requested = eventually(
        lambda: _condition(admin, "Suspended")["reason"] == "SuspendRequested", what="the suspension to be pending"
    )
    assert requested and status(admin, NAMESPACE, "queued")["phase"] == "Running", "the pods run until Kueue acts"
    time.sleep(2)
    assert _job(admin, "queued-r0")["spec"]["suspend"] is False, "the operator leaves Job.spec.suspend to Kueue"

    admin.merge_patch(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/queued-r0", {"spec": {"suspend": True}})
    until_phase(admin, node, NAMESPACE, "queued", "Suspended")
    patch_suspend(kubectl, NAMESPACE, "queued", False)
    eventually(lambda: _workload_active(admin, "job-queued-r0"), what="the Workload to be active again")

    eventually(lambda: _condition(admin, "Running").get("reason") == "Queued", what="the job to wait for Kueue")
    assert status(admin, NAMESPACE, "queued")["phase"] == "Pending"
    assert "waiting for Kueue to admit" in _condition(admin, "Running")["message"]
    assert _job(admin, "queued-r0")["spec"]["suspend"] is True, "unsuspending is Kueue's act, on admission"
    kubectl.run("delete", "uj", "queued", "-n", NAMESPACE, "--wait=true", "--timeout=60s")
