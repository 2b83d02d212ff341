"""The Helm chart: lint, render with the default and the namespaced values, validate every manifest, enforce
the values schema, keep its defaults equal to the operator's, and lock down every pod."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any, get_args

import kubernetes_validate
import pytest
import yaml

from tests.cluster.control_plane import binaries
from unlearning_operator.manifests import build_service_account
from unlearning_operator.settings import Settings
from unlearning_trainer import placement

CHART = Path(__file__).resolve().parents[2] / "charts" / "unlearning-operator"
NAMESPACED = ["--set", "clusterWide=false", "--set", "watchNamespaces={team-a,team-b}"]


def render(*args: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [
            str(binaries() / "helm"),
            "template",
            "unlearning",
            str(CHART),
            "--namespace",
            "ml-platform",
            "--include-crds",
            *args,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("values", [[], NAMESPACED], ids=["cluster-wide", "namespaced"])
def test_lint_passes(values):
    result = subprocess.run(
        [str(binaries() / "helm"), "lint", "--strict", str(CHART), *values], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", [[], NAMESPACED], ids=["cluster-wide", "namespaced"])
def test_rendered_manifests_validate(values):
    documents = render(*values)
    kinds = sorted(doc["kind"] for doc in documents)
    assert "CustomResourceDefinition" in kinds and "Deployment" in kinds
    for document in documents:
        kubernetes_validate.validate(document, "1.33.0", strict=True)


def test_namespaced_mode_grants_roles_only_in_the_watched_namespaces():
    documents = render(*NAMESPACED)
    roles = {(d["kind"], d["metadata"].get("namespace")) for d in documents if d["kind"] in ("Role", "ClusterRole")}
    assert ("Role", "team-a") in roles and ("Role", "team-b") in roles
    cluster_scoped = [d["kind"] for d in documents if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    assert not cluster_scoped, "the namespaced install grants nothing outside its namespaces"
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args


@pytest.mark.parametrize(
    "bad",
    [
        ["--set", "trainer.gpusPerWorker=-1"],
        ["--set", "replicas=3"],
        ["--set", "operator.image.pullPolicy=Sometimes"],
        ["--set", "trainer.cpu=lots"],
        ["--set", "trainer.memory=16GB"],
        ["--set-json", 'trainer.tolerations=[{"key": "gpu", "effect": "Sometimes"}]'],
        ["--set", "trainer.priorityClassName=High_Priority"],
        ["--set", "trainer.image=my trainer"],
        ["--set", "operator.image.repository=ghcr.io/Team/operator"],
        ["--set", "operator.image.tag=:latest"],
    ],
    ids=[
        "negative-gpus",
        "unknown-key",
        "bad-enum",
        "cpu-lots",
        "memory-GB",
        "toleration-effect",
        "priority-class",
        "image-with-space",
        "repository-upper-case",
        "tag-with-colon",
    ],
)
def test_values_schema_rejects_bad_values(bad):
    result = subprocess.run(
        [str(binaries() / "helm"), "template", "unlearning", str(CHART), *bad], capture_output=True, text=True
    )
    assert result.returncode != 0 and "values don't meet the specifications of the schema" in result.stderr
    value = bad[1].split("=")[0]
    assert value.split(".")[-1] in result.stderr, f"the message must name {value}: {result.stderr}"


def test_chart_defaults_equal_the_operator_defaults():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    defaults = Settings()
    assert values["trainer"]["image"] == defaults.trainer_image
    assert values["trainer"]["serviceAccountName"] == defaults.trainer_service_account
    assert values["trainer"]["gpusPerWorker"] == defaults.gpus_per_worker
    assert values["trainer"]["gpuResource"] == defaults.gpu_resource
    assert values["trainer"]["cpu"] == defaults.worker_cpu and values["trainer"]["memory"] == defaults.worker_memory
    assert values["trainer"]["shmSize"] == defaults.shm_size
    assert values["trainer"]["terminationGracePeriodSeconds"] == defaults.termination_grace_seconds
    assert values["trainer"]["nodeSelector"] == defaults.node_selector
    assert (
        values["trainer"]["tolerations"] == defaults.tolerations and values["trainer"]["affinity"] == defaults.affinity
    )
    assert values["trainer"]["priorityClassName"] == defaults.priority_class_name
    assert values["trainer"]["imagePullSecrets"] == defaults.image_pull_secrets
    assert (
        values["s3Endpoint"] == defaults.s3_endpoint and values["mlflow"]["trackingUri"] == defaults.mlflow_tracking_uri
    )
    deployment = next(d for d in render() if d["kind"] == "Deployment")
    env = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    settable = {f"UNLEARNING_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    assert env <= settable, f"the chart sets variables the operator ignores: {env - settable}"


def test_operator_runs_one_locked_down_replica_and_trainers_get_no_token_nor_permissions():
    documents = render()
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    assert (
        pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    )
    context = pod["containers"][0]["securityContext"]
    assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
    assert context["capabilities"]["drop"] == ["ALL"]
    trainer = build_service_account("team-a", Settings())
    assert trainer["automountServiceAccountToken"] is False and "ownerReferences" not in trainer["metadata"]
    bound = {s["name"] for d in documents if d["kind"].endswith("Binding") for s in d["subjects"]}
    assert "unlearning-trainer" not in bound
    assert not any(
        rule
        for d in documents
        if d["kind"] in ("Role", "ClusterRole")
        for rule in d["rules"]
        if "secrets" in rule["resources"]
    )


def test_values_schema_judges_quantities_by_the_spec_rules():
    """One source of truth: the chart's schema uses the spec's own patterns for quantities and names."""
    trainer = json.loads((CHART / "values.schema.json").read_text())["properties"]["trainer"]["properties"]
    assert {trainer[key]["pattern"] for key in ("cpu", "memory", "shmSize")} == {placement.QUANTITY_PATTERN}
    assert trainer["nodeSelector"]["additionalProperties"]["pattern"] == placement.LABEL_VALUE_PATTERN
    assert trainer["priorityClassName"]["anyOf"][1]["pattern"] == placement.PRIORITY_CLASS_PATTERN
    effects = trainer["tolerations"]["items"]["properties"]["effect"]["enum"]
    assert effects == list(get_args(placement.TaintEffect))


def test_trainer_scheduling_values_reach_the_operator():
    values = [
        "--set-json",
        'trainer.tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
        "--set-json",
        'trainer.nodeSelector={"pool": "gpu"}',
        "--set",
        "trainer.priorityClassName=batch-low",
        "--set-json",
        'trainer.imagePullSecrets=["registry"]',
    ]
    deployment = next(d for d in render(*values) if d["kind"] == "Deployment")
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    settings = Settings.from_env(env)
    assert settings.tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert settings.node_selector == {"pool": "gpu"} and settings.priority_class_name == "batch-low"
    assert settings.image_pull_secrets == ["registry"]
