"""`helm install` of the chart on the real control plane, in both modes, with the operator running as the chart's
own Deployment pod under the chart's ServiceAccount, so the real RBAC authorizer judges every call it makes."""

from __future__ import annotations

import pytest

from tests.cluster.api import eventually
from tests.cluster.jobs import job_document, status, until_phase
from tests.cluster.platform import (
    OPERATOR_USER,
    RELEASE,
    Platform,
    create_namespace,
    create_s3_secret,
    forbidden_requests,
    install,
    operator_requests,
    platform_values,
    uninstall,
)


@pytest.fixture
def installed(control_plane, admin, kubectl, node, s3_server, mlflow_server):
    """Install with the given extra values; always uninstalled afterwards."""
    releases = []

    def with_values(*values: str) -> Platform:
        create_namespace(admin, "ml-platform")
        all_values = [*platform_values(s3_server, mlflow_server), *values]
        install(kubectl, *all_values)
        releases.append(all_values)
        platform = Platform(kubectl, admin, node, control_plane, all_values)
        platform.wait_for_operator()
        return platform

    yield with_values
    if releases:
        uninstall(kubectl)


def test_namespaced_mode_serves_its_namespaces_only_and_every_call_is_granted(
    installed, admin, kubectl, node, control_plane, s3_scenario
):
    for namespace in ("team-a", "team-b", "team-c"):
        create_namespace(admin, namespace)
        create_s3_secret(admin, namespace)
    before = len(operator_requests(control_plane))
    installed("--set", "clusterWide=false", "--set", "watchNamespaces={team-a,team-b}")
    roles = {role["metadata"]["namespace"] for role in admin.items("/apis/rbac.authorization.k8s.io/v1/roles")}
    assert {"team-a", "team-b"} <= roles and "team-c" not in roles

    kubectl.apply(job_document("watched", "team-a", s3_scenario, steps=2, checkpoint_every=2, workers=1))
    kubectl.apply(job_document("ignored", "team-c", s3_scenario, steps=2, checkpoint_every=2, workers=1))
    until_phase(admin, node, "team-a", "watched", "Succeeded")
    assert status(admin, "team-c", "ignored") == {}, "a namespace the operator does not watch is left alone"

    made = operator_requests(control_plane)[before:]
    assert made, "the audit log must show the operator's calls"
    assert all(e["user"]["username"] == OPERATOR_USER for e in made)
    namespaces = {e.get("objectRef", {}).get("namespace") for e in made} - {None}
    assert namespaces <= {"team-a", "team-b"}, f"namespaced mode stays in its namespaces: {namespaces}"
    assert not forbidden_requests(control_plane, before), "every call the operator makes must be granted by the chart"
    job_reads = [
        e["requestURI"] for e in made if e["verb"] in ("list", "watch") and e["objectRef"]["resource"] == "jobs"
    ]
    assert job_reads and all("labelSelector=unlearning.dev" in uri for uri in job_reads), job_reads


def test_a_permission_the_chart_lacks_is_refused_by_the_authorizer_and_reported_on_the_job(
    installed, admin, kubectl, control_plane, s3_scenario
):
    """The check the other tests rely on can fail: take one rule away and the real authorizer refuses it."""
    create_namespace(admin, "team-d")
    before = len(operator_requests(control_plane))
    platform = installed()
    path = f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{RELEASE}"
    role = admin.get(path)
    role["rules"] = [rule for rule in role["rules"] if "serviceaccounts" not in rule["resources"]]
    admin.request("PUT", path, role)
    kubectl.apply(
        job_document(
            "denied",
            "team-d",
            {k: f"s3://denied/{k}" for k in ("model", "forget", "retain", "output")},
            steps=2,
            checkpoint_every=2,
        )
    )

    refused = eventually(lambda: forbidden_requests(control_plane, before), timeout=60, what="a refused call")
    assert any("serviceaccounts" in call for call in refused)
    failed = eventually(
        lambda: status(admin, "team-d", "denied").get("phase") == "Failed" and status(admin, "team-d", "denied"),
        timeout=60,
        what="the job to fail loudly",
    )
    assert "forbidden" in failed["message"].lower() and "serviceaccounts" in failed["message"]
    assert platform.operator_pods(), "the operator keeps running"
