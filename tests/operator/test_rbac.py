"""Least privilege, checked both ways: every API call the operator makes in a full job lifecycle is granted by
the chart's Role, and every verb the Role grants is used (with one documented exception)."""

from __future__ import annotations

import json

import pytest

from tests.operator.harness import (
    NAMESPACE,
    VersionedEmulator,
    eventually,
    job_document,
    running_operator,
)
from tests.operator.test_chart import NAMESPACED, render

pytestmark = pytest.mark.kmock(cls=VersionedEmulator)

GRANTED_BUT_UNUSED = {
    ("unlearning.dev", "unlearningjobs/finalizers", "update"),
    ("kueue.x-k8s.io", "workloads", "list"),
    ("kueue.x-k8s.io", "workloads", "patch"),
}
"""Clusters that enforce OwnerReferencesPermissionEnforcement require the finalizers grant to set
blockOwnerDeletion on children; the emulator does not check it, so the operator's code never calls it
explicitly. The Workload verbs serve Kueue-managed jobs only: tests/cluster/test_kueue.py uses them on the real
API server."""


def _verb(method: str, url) -> str:
    if method == "GET":
        if url.query.get("watch") in ("true", "1"):
            return "watch"
        parts = [p for p in url.path.split("/") if p]
        collection = len(parts) % 2 == (1 if parts[0] == "api" else 0)
        return "list" if collection else "get"
    return {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]


def _resource(url) -> tuple[str, str] | None:
    """(API group, resource[/subresource]) of a namespaced or cluster-wide resource URL; None for discovery."""
    parts = [p for p in url.path.split("/") if p]
    if parts[0] not in ("api", "apis") or len(parts) < (3 if parts[0] == "api" else 4):
        return None
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        group, rest = parts[1], parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    if not rest:
        return None
    resource = rest[0] if len(rest) < 3 else f"{rest[0]}/{rest[2]}"
    return group, resource


def operator_calls(requests) -> set[tuple[str, str, str]]:
    calls = set()
    for request in requests:
        agent = request.headers.get("User-Agent", "")
        if not (agent.startswith("kopf") or agent.startswith("OpenAPI-Generator")):
            continue
        found = _resource(request.url)
        if found is None:
            continue
        calls.add((*found, _verb(str(request.method.value), request.url)))
    return calls


def granted(documents) -> set[tuple[str, str, str]]:
    rules = [r for d in documents if d["kind"] == "Role" and d["metadata"]["namespace"] == "team-a" for r in d["rules"]]
    rules += [r for d in documents if d["kind"] == "ClusterRole" for r in d["rules"]]
    return {(g, res, v) for r in rules for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}


async def test_chart_grants_exactly_what_the_operator_uses(cluster, kmock):
    async with running_operator(kmock, namespaces=[NAMESPACE]):
        await cluster.apply(job_document("lifecycle", runPolicy={"backoffLimit": 1, "ttlSecondsAfterFinished": 60}))
        await eventually(lambda: cluster.job("lifecycle-r0"), what="Job")
        await cluster.set_job_status("lifecycle-r0", {"active": 1, "ready": 1})
        await cluster.patch_job_resource("lifecycle", {"spec": {"runPolicy": {"suspend": True}}})
        await eventually(lambda: cluster.status("lifecycle").get("phase") == "Suspended", what="Suspended")
        await cluster.patch_job_resource("lifecycle", {"spec": {"runPolicy": {"suspend": False}}})
        failure = json.dumps({"reason": "TrainerError", "message": "boom"})
        await cluster.add_pod("lifecycle-r0", 0, {"exitCode": 1, "reason": "Error", "message": failure})
        await cluster.set_job_status("lifecycle-r0", {"conditions": [{"type": "Failed", "status": "True"}]})
        await eventually(lambda: cluster.job("lifecycle-r1"), what="restart")
        await cluster.add_pod("lifecycle-r1", 0, {"exitCode": 0, "reason": "Completed", "message": "{}"})
        await cluster.set_job_status("lifecycle-r1", {"conditions": [{"type": "Complete", "status": "True"}]})
        await eventually(lambda: cluster.status("lifecycle").get("phase") == "Succeeded", what="Succeeded")
        await cluster.delete("lifecycle")
        await eventually(lambda: cluster.get("lifecycle") is None, what="deletion")
    calls = operator_calls(list(kmock))
    rules = granted(render(*NAMESPACED))
    assert calls - rules == set(), "the operator makes calls the chart does not grant"
    assert rules - calls - GRANTED_BUT_UNUSED == set(), "the chart grants verbs the operator never uses"
    cluster_wide = granted(render())
    assert calls - cluster_wide == set(), "cluster-wide mode must grant the same calls"
