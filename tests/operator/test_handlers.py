"""The kopf handlers, for real, against kmock's Kubernetes API emulator over HTTP."""

from __future__ import annotations

import json

import pytest

from tests.operator.harness import (
    Cluster,
    VersionedEmulator,
    declare_resources,
    eventually,
    job_document,
    running_operator,
)

pytestmark = pytest.mark.kmock(cls=VersionedEmulator)


@pytest.fixture
def cluster(kmock) -> Cluster:
    declare_resources(kmock)
    return Cluster(kmock)


async def _created(cluster: Cluster, name: str) -> dict:
    await eventually(lambda: cluster.condition(name, "Created"), what="Created condition")
    return await eventually(lambda: cluster.job(f"{name}-r0"), what="the trainer Job")


async def test_happy_path_creates_children_and_tracks_the_job_to_success(cluster, kmock):
    async with running_operator(kmock):
        await cluster.apply(job_document("forget-42", workers=2, training={"steps": 100, "batchSize": 8}))
        job = await _created(cluster, "forget-42")
        assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
        assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["backoffLimit"] == 0
        assert job["metadata"]["ownerReferences"][0]["kind"] == "UnlearningJob"
        env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["PET_MASTER_ADDR"]["value"] == "forget-42-r0-0.forget-42"
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-credentials"
        assert [s["metadata"]["name"] for s in cluster.children("services")] == ["forget-42"]
        configmap = next(c for c in cluster.children("configmaps") if c["metadata"]["name"] == "forget-42-spec")
        assert "forget-42" in configmap["data"]["job.yaml"]
        status = cluster.status("forget-42")
        assert status["phase"] == "Pending" and status["progress"] == {"step": 0, "totalSteps": 100, "percent": 0}
        assert status["startTime"] and status["outputModelUri"] == "s3://models/forget-42-out"

        await cluster.set_job_status("forget-42-r0", {"active": 2})
        await eventually(lambda: cluster.status("forget-42").get("phase") == "Running", what="Running")
        message = json.dumps({"reason": "Succeeded", "message": "done", "step": 100})
        for index in range(2):
            await cluster.add_pod("forget-42-r0", index, {"exitCode": 0, "reason": "Completed", "message": message})
        await cluster.set_job_status(
            "forget-42-r0", {"active": 0, "succeeded": 2, "conditions": [{"type": "Complete", "status": "True"}]}
        )
        await eventually(lambda: cluster.status("forget-42").get("phase") == "Succeeded", what="Succeeded")
    status = cluster.status("forget-42")
    assert status["progress"]["percent"] == 100 and status["completionTime"]
    states = {c["type"]: c["status"] for c in status["conditions"]}
    assert states.items() >= {"Created": "True", "Succeeded": "True", "Running": "False"}.items()
    assert all(c["observedGeneration"] == 1 and c["lastTransitionTime"] for c in status["conditions"])
    reasons = {e["reason"] for e in cluster.events()}
    assert {"CreatedJob", "Running", "Succeeded"} <= reasons


async def test_invalid_spec_sets_failed_invalid_and_creates_nothing(cluster, kmock):
    async with running_operator(kmock):
        await cluster.apply(job_document("bad", method={"name": "forget-everything"}))
        condition = await eventually(lambda: cluster.condition("bad", "Failed"), what="Failed condition")
    assert condition["reason"] == "InvalidSpec" and "spec.method.name" in condition["message"]
    assert cluster.status("bad")["phase"] == "Failed"
    assert not cluster.children("jobs") and not cluster.children("services") and not cluster.children("configmaps")
    assert cluster.events("InvalidSpec")
