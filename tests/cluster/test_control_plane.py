"""The control plane itself: versions, the controllers the other tests rely on, and the node's contract."""

from __future__ import annotations

import pytest

from tests.cluster.api import Api, ApiError, eventually
from tests.cluster.platform import create_namespace

TRAINER_IMAGE = "ghcr.io/unlearning-dev/unlearning-trainer:0.1.0"


def _job(name: str, command: list[str], **spec: object) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "containers": [{"name": "main", "image": TRAINER_IMAGE, "command": command}],
                }
            },
            **spec,
        },
    }


def _condition(job: dict, type_: str) -> dict | None:
    return next(
        (c for c in (job.get("status") or {}).get("conditions") or [] if c["type"] == type_ and c["status"] == "True"),
        None,
    )


def test_the_api_server_reports_the_release_it_was_built_from(admin: Api):
    version = admin.get("/version")
    assert version["gitVersion"] == "v1.37.2" and version["minor"] == "37"


def test_the_real_job_controller_runs_a_job_on_the_node_and_cleans_up_after_ttl(admin: Api, node):
    create_namespace(admin, "smoke", restricted=False)
    job = _job("hello", ["unlearn", "--version"], ttlSecondsAfterFinished=5)
    admin.request("POST", "/apis/batch/v1/namespaces/smoke/jobs", job)
    done = eventually(
        lambda: node.check() and _condition(admin.get("/apis/batch/v1/namespaces/smoke/jobs/hello"), "Complete"),
        timeout=60,
        what="the Job to complete",
    )
    assert done["reason"] == "CompletionsReached"
    assert "unlearn" in node.pod("smoke", "hello-").log_tail()
    eventually(
        lambda: admin.get("/apis/batch/v1/namespaces/smoke/jobs/hello", missing_ok=True) is None,
        timeout=60,
        what="the ttl-after-finished controller to delete the Job",
    )
    eventually(
        lambda: not admin.items("/api/v1/namespaces/smoke/pods"), timeout=60, what="garbage collection of its pod"
    )


def test_a_failing_pod_fails_the_job_through_pod_failure_policy(admin: Api, node):
    create_namespace(admin, "smoke", restricted=False)
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2]}}]}
    admin.request(
        "POST",
        "/apis/batch/v1/namespaces/smoke/jobs",
        _job("bad-args", ["unlearn", "no-such-command"], podFailurePolicy=policy),
    )
    failed = eventually(
        lambda: node.check() and _condition(admin.get("/apis/batch/v1/namespaces/smoke/jobs/bad-args"), "Failed"),
        timeout=60,
        what="the Job to fail",
    )
    assert failed["reason"] == "PodFailurePolicy"


def test_admission_refuses_a_pod_whose_service_account_does_not_exist(admin: Api):
    create_namespace(admin, "smoke", restricted=False)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "orphan"},
        "spec": {"serviceAccountName": "nobody", "containers": [{"name": "main", "image": TRAINER_IMAGE}]},
    }
    with pytest.raises(ApiError) as refused:
        admin.request("POST", "/api/v1/namespaces/smoke/pods", pod)
    assert refused.value.status == 403 and 'serviceaccount "nobody" not found' in refused.value.message
