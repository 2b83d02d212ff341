"""The kopf handlers, for real, against kmock's Kubernetes API emulator over HTTP."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.operator.harness import (
    Cluster,
    LeanEmulator,
    eventually,
    job_document,
    running_operator,
)
from unlearning_operator.settings import Settings

pytestmark = pytest.mark.kmock(cls=LeanEmulator)


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
        assert status["phase"] == "Pending" and status["progress"]["totalSteps"] == 100
        assert "percent" not in status["progress"], "without MLflow there is no progress to show, not 0%"
        assert "no MLflow server is configured" in status["progress"]["message"]
        assert status["startTime"] and status["outputModelUri"] == "s3://models/forget-42-out"

        await cluster.set_job_status("forget-42-r0", {"active": 2, "ready": 2})
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


async def _fail_attempt(cluster: Cluster, job: str, exit_code: int, message: dict | str) -> None:
    text = json.dumps(message) if isinstance(message, dict) else message
    await cluster.add_pod(job, 0, {"exitCode": exit_code, "reason": "Error", "message": text})
    await cluster.set_job_status(
        job, {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]}
    )


async def test_pod_failure_restarts_the_whole_group_then_succeeds(cluster, kmock):
    async with running_operator(kmock):
        await cluster.apply(job_document("retry", runPolicy={"backoffLimit": 2}))
        await _created(cluster, "retry")
        await _fail_attempt(cluster, "retry-r0", 1, {"reason": "TrainerError", "message": "CUDA error: device lost"})
        second = await eventually(lambda: cluster.job("retry-r1"), what="the second attempt")
        assert cluster.job("retry-r0") is None, "the failed attempt's Job must be deleted"
        status = cluster.status("retry")
        assert status["restarts"] == 1 and status["jobName"] == "retry-r1"
        assert "device lost" in cluster.condition("retry", "Running")["message"]
        assert second["spec"]["template"]["metadata"]["labels"]["unlearning.dev/attempt"] == "1"
        await cluster.add_pod("retry-r1", 0, {"exitCode": 0, "reason": "Completed", "message": '{"step": 100}'})
        await cluster.set_job_status(
            "retry-r1", {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
        )
        await eventually(lambda: cluster.status("retry").get("phase") == "Succeeded", what="Succeeded")
    assert cluster.events("Restarting")
    restart = cluster.status("retry")["lastRestart"]
    assert restart["attempt"] == 1 and restart["exitCode"] == 1 and restart["message"] == "CUDA error: device lost"
    assert "failure" not in cluster.status("retry"), "a job that succeeded has no failure"


async def test_permanent_failure_reports_the_trainer_reason_without_retrying(cluster, kmock):
    async with running_operator(kmock):
        await cluster.apply(job_document("nodata"))
        await _created(cluster, "nodata")
        message = {"reason": "DataError", "message": "spec.data.forget.uri: s3://datasets/forget/ holds no objects"}
        await _fail_attempt(cluster, "nodata-r0", 3, message)
        await eventually(lambda: cluster.status("nodata").get("phase") == "Failed", what="Failed")
    status = cluster.status("nodata")
    assert status["reason"] == "DataError" and "holds no objects" in status["message"]
    assert status["failure"] == {"exitCode": 3, "reason": "DataError", "message": message["message"]}
    assert status["restarts"] == 0 and cluster.job("nodata-r1") is None
    assert cluster.events("Failed")


async def test_crash_before_the_trainer_wrote_a_summary_uses_the_log_tail(cluster, kmock):
    async with running_operator(kmock):
        await cluster.apply(job_document("crash", runPolicy={"backoffLimit": 0}))
        await _created(cluster, "crash")
        await _fail_attempt(cluster, "crash-r0", 137, "Traceback ...\nRuntimeError: NCCL timeout in allreduce")
        await eventually(lambda: cluster.status("crash").get("phase") == "Failed", what="Failed")
    status = cluster.status("crash")
    assert status["reason"] == "BackoffLimitExceeded"
    assert status["failure"]["reason"] == "NCCLTimeout" and status["failure"]["exitCode"] == 137


async def test_interruptions_that_made_progress_do_not_use_up_the_backoff_limit(cluster, kmock):
    async with running_operator(kmock):
        await cluster.apply(job_document("spot", runPolicy={"backoffLimit": 0}))
        await _created(cluster, "spot")
        for attempt, step in enumerate((40, 80)):
            interrupted = {"reason": "Interrupted", "message": f"interrupted after {step} steps", "step": step}
            await _fail_attempt(cluster, f"spot-r{attempt}", 1, interrupted)
            await eventually(lambda a=attempt: cluster.job(f"spot-r{a + 1}"), what=f"attempt {attempt + 2}")
        status = cluster.status("spot")
        assert status["restarts"] == 2 and status["preemptions"] == 2
        assert status["lastRestart"]["reason"] == "Interrupted" and status["lastRestart"]["step"] == 80
        assert "not counted against runPolicy.backoffLimit" in cluster.condition("spot", "Running")["message"]
        stuck = {"reason": "Interrupted", "message": "interrupted after 80 steps", "step": 80}
        await _fail_attempt(cluster, "spot-r2", 1, stuck)
        await eventually(lambda: cluster.status("spot").get("phase") == "Failed", what="Failed")
    status = cluster.status("spot")
    assert status["reason"] == "BackoffLimitExceeded", "an interruption without progress counts as a failure"
    assert status["preemptions"] == 2


async def test_backoff_limit_is_enforced(cluster, kmock):
    async with running_operator(kmock):
        await cluster.apply(job_document("flaky", runPolicy={"backoffLimit": 1}))
        await _created(cluster, "flaky")
        await _fail_attempt(cluster, "flaky-r0", 1, {"reason": "TrainerError", "message": "boom 1"})
        await eventually(lambda: cluster.job("flaky-r1"), what="the second attempt")
        await _fail_attempt(cluster, "flaky-r1", 1, {"reason": "TrainerError", "message": "boom 2"})
        await eventually(lambda: cluster.status("flaky").get("phase") == "Failed", what="Failed")
    status = cluster.status("flaky")
    assert status["reason"] == "BackoffLimitExceeded" and "boom 2" in status["message"]
    assert cluster.job("flaky-r2") is None


async def test_suspend_and_resume(cluster, kmock):
    async with running_operator(kmock):
        await cluster.apply(job_document("pause"))
        await _created(cluster, "pause")
        await cluster.patch_job_resource("pause", {"spec": {"runPolicy": {"suspend": True}}})
        await eventually(lambda: (cluster.job("pause-r0") or {}).get("spec", {}).get("suspend") is True, what="suspend")
        await eventually(lambda: cluster.status("pause").get("phase") == "Suspended", what="Suspended")
        await cluster.patch_job_resource("pause", {"spec": {"runPolicy": {"suspend": False}}})
        await eventually(lambda: cluster.job("pause-r0")["spec"]["suspend"] is False, what="resume")
        await eventually(lambda: cluster.condition("pause", "Suspended")["status"] == "False", what="resumed")
        await cluster.set_job_status("pause-r0", {"active": 1, "ready": 1})
        await eventually(lambda: cluster.status("pause").get("phase") == "Running", what="Running again")


async def test_a_job_created_suspended_starts_suspended(cluster, kmock):
    async with running_operator(kmock):
        await cluster.apply(job_document("later", runPolicy={"suspend": True}))
        job = await _created(cluster, "later")
        assert job["spec"]["suspend"] is True
        await eventually(lambda: cluster.status("later").get("phase") == "Suspended", what="Suspended")


async def test_delete_releases_the_resource_and_children_are_owned(cluster, kmock):
    async with running_operator(kmock):
        await cluster.apply(job_document("gone"))
        await _created(cluster, "gone")
        uid = cluster.get("gone")["metadata"]["uid"]
        await cluster.delete("gone")
        await eventually(lambda: cluster.get("gone") is None, what="deletion")
    for plural in ("jobs", "services", "configmaps"):
        (child,) = cluster.children(plural)
        (reference,) = child["metadata"]["ownerReferences"]
        assert reference["uid"] == uid and reference["controller"] and reference["blockOwnerDeletion"]


async def test_operator_restart_mid_job_creates_no_duplicates(cluster, kmock):
    async with running_operator(kmock):
        await cluster.apply(job_document("steady"))
        await _created(cluster, "steady")
        await cluster.set_job_status("steady-r0", {"active": 1, "ready": 1})
        await eventually(lambda: cluster.status("steady").get("phase") == "Running", what="Running")
    async with running_operator(kmock):
        await asyncio.sleep(1.0)
        assert [j["metadata"]["name"] for j in cluster.children("jobs")] == ["steady-r0"]
        assert len(cluster.children("services")) == 1 and len(cluster.children("configmaps")) == 1
        assert cluster.status("steady")["phase"] == "Running" and cluster.status("steady")["restarts"] == 0
        await cluster.add_pod("steady-r0", 0, {"exitCode": 0, "reason": "Completed", "message": "{}"})
        await cluster.set_job_status(
            "steady-r0", {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
        )
        await eventually(lambda: cluster.status("steady").get("phase") == "Succeeded", what="Succeeded")


async def test_fifty_jobs_at_once(cluster, kmock):
    names = [f"bulk-{index:02d}" for index in range(50)]
    async with running_operator(kmock, Settings(progress_poll_seconds=60)):
        await asyncio.gather(*(cluster.apply(job_document(name)) for name in names))
        await eventually(lambda: all(cluster.condition(n, "Created") for n in names), timeout=60, what="50 jobs")
    jobs = sorted(j["metadata"]["name"] for j in cluster.children("jobs"))
    assert jobs == [f"{name}-r0" for name in names]


async def test_kueue_queue_label_is_passed_to_the_job(cluster, kmock):
    document = job_document("queued")
    document["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "gpu-queue"}
    async with running_operator(kmock):
        await cluster.apply(document)
        job = await _created(cluster, "queued")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"


async def test_mlflow_run_progress_and_end_are_tracked(cluster, kmock, mlflow_server):
    from mlflow import MlflowClient

    settings = Settings(progress_poll_seconds=0.3, mlflow_tracking_uri=mlflow_server.url)
    async with running_operator(kmock, settings):
        await cluster.apply(job_document("tracked", tracking={"experiment": "operator-progress"}))
        job = await _created(cluster, "tracked")
        run = cluster.status("tracked")["mlflow"]
        assert run["runUrl"].endswith(f"/runs/{run['runId']}")
        env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["MLFLOW_RUN_ID"] == run["runId"] and env["MLFLOW_TRACKING_URI"] == mlflow_server.url
        await cluster.set_job_status("tracked-r0", {"active": 1, "ready": 1})
        await eventually(lambda: cluster.status("tracked").get("phase") == "Running", what="Running")
        client = MlflowClient(mlflow_server.url)
        client.log_metric(run["runId"], "progress/step", 40, step=40)
        await eventually(lambda: cluster.status("tracked")["progress"]["percent"] == 40, what="progress 40%")
        assert "resumedFrom" not in cluster.status("tracked")["progress"]
        client.log_metric(run["runId"], "progress/resumedFrom", 30, step=30)
        await eventually(lambda: cluster.status("tracked")["progress"].get("resumedFrom") == 30, what="resumedFrom")
        resumed = await eventually(lambda: cluster.events("Resumed"), what="a Resumed event")
        assert "resumed from the checkpoint at step 30" in resumed[0]["message"]
        await cluster.add_pod("tracked-r0", 0, {"exitCode": 0, "reason": "Completed", "message": '{"step": 100}'})
        await cluster.set_job_status(
            "tracked-r0", {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
        )
        await eventually(lambda: cluster.status("tracked").get("phase") == "Succeeded", what="Succeeded")
    assert client.get_run(run["runId"]).info.status == "FINISHED"
    assert client.get_run(run["runId"]).data.tags["unlearning.dev/job"] == "tracked"


async def test_a_degenerate_lambda_is_posted_as_a_warning_event(cluster, kmock):
    async with running_operator(kmock):
        await cluster.apply(job_document("lambda-one", method={"name": "siss", "lambda": 1.0}))
        await _created(cluster, "lambda-one")
        warned = await eventually(lambda: cluster.events("SpecWarning"), what="a SpecWarning event")
    assert warned[0]["type"] == "Warning" and "degenerates to NegGrad" in warned[0]["message"]
