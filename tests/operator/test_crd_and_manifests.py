"""The CRD is generated from the spec model, its CEL rules do what they say, and the children validate."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml

from unlearning_operator import crd, manifests
from unlearning_operator.settings import Settings
from unlearning_trainer.spec import parse_job

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "unlearningjob.yaml"
K8S_VERSION = "1.33.0"


def test_crd_files_match_the_spec_model():
    assert crd.main(["--check"]) == 0, "run: python -m unlearning_operator.crd"


def test_crd_drift_is_detected(tmp_path, monkeypatch):
    stale = tmp_path / "crd.yaml"
    stale.write_text(crd.render().replace("maximum: 1.0", "maximum: 2.0"))
    monkeypatch.setattr(crd, "CRD_PATHS", (stale,))
    assert crd.main(["--check"]) == 1


def json_schema(node: Any, *, strict: bool = False) -> Any:
    """OpenAPI v3.0 → JSON Schema draft 4: `nullable` becomes a null type. `strict` judges as the API server does
    with strict field validation: unknown fields are refused, and a pattern's `$` matches only at the very end
    (Go's RE2; Python's `$` also matches before a final newline)."""
    if isinstance(node, list):
        return [json_schema(item, strict=strict) for item in node]
    if not isinstance(node, dict):
        return node
    result = {
        k: json_schema(v, strict=strict)
        for k, v in node.items()
        if not k.startswith("x-kubernetes") and k != "nullable"
    }
    if node.get("nullable") and "type" in node:
        result["type"] = [node["type"], "null"]
    if strict and node.get("pattern", "").endswith("$"):
        result["pattern"] = node["pattern"][:-1] + r"\Z"
    if strict and "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        result["additionalProperties"] = False
    return result


def _schema() -> dict[str, Any]:
    return json_schema(crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("example", sorted(EXAMPLE.parent.glob("*.yaml")), ids=lambda path: path.name)
def test_examples_validate_against_the_crd_schema(example):
    jsonschema.Draft4Validator(_schema()).validate(yaml.safe_load(example.read_text()))


@pytest.mark.parametrize(
    ("path", "value"),
    [(("method", "name"), "forget-it"), (("method", "lambda"), 1.5), (("training", "steps"), 0), (("workers",), 0)],
    ids=["method", "lambda", "steps", "workers"],
)
def test_crd_schema_rejects_what_the_model_rejects(path, value):
    document = yaml.safe_load(EXAMPLE.read_text())
    target = document["spec"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(_schema()).validate(document)


def _rules() -> dict[str, Any]:
    schema = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return {
        "root": schema["x-kubernetes-validations"],
        "spec": schema["properties"]["spec"]["x-kubernetes-validations"],
    }


CEL = celpy.Environment()


def evaluate(rule: str, new: Any, old: Any = None) -> bool:
    activation = {"self": celpy.json_to_cel(new)}
    if old is not None:
        activation["oldSelf"] = celpy.json_to_cel(old)
    return bool(CEL.program(CEL.compile(rule)).evaluate(activation))


def _resolved_example() -> dict[str, Any]:
    document = parse_job(yaml.safe_load(EXAMPLE.read_text()))
    return {
        "metadata": {"name": document.metadata.name},
        "spec": document.model_dump(mode="json", by_alias=True)["spec"],
    }


def test_spec_is_immutable_once_started_except_suspend():
    rule = _rules()["root"][-1]["rule"]
    old = _resolved_example()
    started = copy.deepcopy(old) | {"status": {"startTime": "2026-12-01T00:00:00Z"}}
    changed = copy.deepcopy(started)
    changed["spec"]["training"]["steps"] = 999
    suspended = copy.deepcopy(started)
    suspended["spec"]["runPolicy"]["suspend"] = True
    assert evaluate(rule, changed, old), "before the start every change is allowed"
    assert not evaluate(rule, changed, started)
    assert evaluate(rule, suspended, started)
    removed = copy.deepcopy(started)
    del removed["spec"]["tracking"]
    assert not evaluate(rule, removed, started), "removing an optional section is a change too"


def test_name_length_and_cross_field_rules():
    name_rule = _rules()["root"][0]["rule"]
    assert evaluate(name_rule, {"metadata": {"name": "a" * 50}})
    assert not evaluate(name_rule, {"metadata": {"name": "a" * 51}})
    output_rule, batch_rule, adapter_rule = (r["rule"] for r in _rules()["spec"])
    spec = _resolved_example()["spec"]
    assert evaluate(output_rule, spec) and evaluate(batch_rule, spec) and evaluate(adapter_rule, spec)
    assert not evaluate(output_rule, spec | {"output": {"uri": spec["model"]["uri"]}})
    assert not evaluate(batch_rule, spec | {"workers": 3})
    adapter_output = spec["output"] | {"format": "adapter"}
    no_adapter = {key: value for key, value in spec["method"].items() if key != "adapter"}
    assert not evaluate(adapter_rule, spec | {"output": adapter_output, "method": no_adapter})
    with_adapter = spec["method"] | {"adapter": {"type": "lora", "rank": 8}}
    assert evaluate(adapter_rule, spec | {"output": adapter_output, "method": with_adapter})


@pytest.fixture
def children() -> list[dict[str, Any]]:
    job = parse_job(yaml.safe_load(EXAMPLE.read_text()))
    owner = manifests.Owner(name="forget-request-42", namespace="ml", uid="u-1", labels={})
    settings = Settings()
    return [
        manifests.build_configmap(owner, job.spec, settings),
        manifests.build_service(owner, settings),
        manifests.build_job(
            owner, job.spec, settings, attempt=0, mlflow_env={"MLFLOW_RUN_ID": "r"}, active_deadline_seconds=60
        ),
    ]


def test_children_validate_against_the_kubernetes_schemas(children):
    for child in children:
        kubernetes_validate.validate(child, K8S_VERSION, strict=True)


def test_trainer_pods_are_locked_down(children):
    pod = children[2]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "unlearning-trainer"
    assert (
        pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    )
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    env = {e["name"]: e for e in container["env"]}
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"] and env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["terminationGracePeriodSeconds"] == Settings().termination_grace_seconds, "time to checkpoint"
    assert (
        children[0]["data"]["job.yaml"].count("secret") == 0 or "credentialsSecret" in children[0]["data"]["job.yaml"]
    )


def test_resolved_spec_gets_the_operator_defaults():
    job = parse_job(yaml.safe_load(EXAMPLE.read_text()))
    settings = Settings(s3_endpoint="http://minio:9000", mlflow_tracking_uri="http://mlflow:5000")
    resolved = manifests.resolved_spec(job.spec, settings)
    assert resolved.storage.endpoint == "http://minio:9000"
    assert resolved.tracking.mlflow_tracking_uri == "http://mlflow:5000"


def test_settings_read_the_environment():
    settings = Settings.from_env({"UNLEARNING_GPUS_PER_WORKER": "0", "UNLEARNING_TRAINER_IMAGE": "img:1"})
    assert settings.gpus_per_worker == 0 and settings.trainer_image == "img:1"


def test_field_reference_matches_the_spec_model():
    from unlearning_operator import reference

    assert reference.main(["--check"]) == 0, "run: python -m unlearning_operator.reference"


def test_a_run_policy_field_added_after_the_start_is_refused():
    rule = _rules()["root"][-1]["rule"]
    started = _resolved_example() | {"status": {"startTime": "2026-12-01T00:00:00Z"}}
    started["spec"]["runPolicy"] = {"backoffLimit": 3, "suspend": False}
    assert (
        crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
            "runPolicy"
        ]["default"]
        == {}
    ), "the API server always fills runPolicy in, so the rule sees each of its fields"
    deadline = copy.deepcopy(started)
    deadline["spec"]["runPolicy"]["activeDeadlineSeconds"] = 60
    suspend = copy.deepcopy(started)
    suspend["spec"]["runPolicy"]["suspend"] = True
    assert not evaluate(rule, deadline, started)
    assert evaluate(rule, suspend, started)


def _spec_with(**fields: Any):
    document = yaml.safe_load(EXAMPLE.read_text())
    document["spec"] |= fields
    return parse_job(document).spec


@pytest.mark.parametrize(
    ("settings", "resources", "requests", "limits", "gpus"),
    [
        (Settings(), {}, {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}, None, 1),
        (
            Settings(),
            {"limits": {"nvidia.com/gpu": 4, "memory": "64Gi"}, "requests": {"cpu": "7500m"}},
            {"cpu": "7500m", "memory": "64Gi", "nvidia.com/gpu": "4"},
            {"cpu": "7500m", "memory": "64Gi", "nvidia.com/gpu": "4"},
            4,
        ),
        (
            Settings(),
            {"requests": {"memory": "8Gi"}, "limits": {"memory": "12Gi"}},
            {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "1"},
            {"cpu": "4", "memory": "12Gi", "nvidia.com/gpu": "1"},
            1,
        ),
        (Settings(), {"limits": {"nvidia.com/gpu": 0}}, {"cpu": "4", "memory": "16Gi"}, None, 0),
        (Settings(gpus_per_worker=0), {}, {"cpu": "4", "memory": "16Gi"}, None, 0),
        (
            Settings(gpus_per_worker=0, gpu_resource="amd.com/gpu"),
            {"limits": {"amd.com/gpu": 2}},
            {"cpu": "4", "memory": "16Gi", "amd.com/gpu": "2"},
            None,
            2,
        ),
    ],
    ids=["chart-defaults", "gpus-and-cpu", "memory-range", "gpu-0-runs-on-cpu", "cpu-only-chart", "other-vendor"],
)
def test_pod_resources_override_the_chart_defaults_per_resource(settings, resources, requests, limits, gpus):
    resolved = manifests.pod_resources(_spec_with(resources=resources), settings)
    assert resolved.requests == requests
    assert resolved.limits == (requests if limits is None else limits)
    assert resolved.gpus == gpus
    owner = manifests.Owner(name="gpu-job", namespace="ml", uid="u-1", labels={})
    job = manifests.build_job(owner, _spec_with(resources=resources), settings, attempt=0)
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PET_NPROC_PER_NODE"] == str(max(1, gpus)), "torchrun starts one process per GPU"
    assert ("ACCELERATE_USE_CPU" in env) == (gpus == 0)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_scheduling_merges_the_chart_defaults_with_the_spec():
    chart = Settings(
        node_selector={"pool": "gpu", "zone": "a"},
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        affinity={"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        priority_class_name="batch-low",
        image_pull_secrets=["registry"],
    )
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}]
            }
        }
    }
    spec = _spec_with(
        scheduling={
            "nodeSelector": {"zone": "b"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": affinity,
            "priorityClassName": "unlearning-urgent",
        }
    )
    owner = manifests.Owner(name="gpu-job", namespace="ml", uid="u-1", labels={})
    pod = manifests.build_job(owner, spec, chart, attempt=0)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu", "zone": "b"}
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ]
    assert pod["affinity"] == affinity and pod["priorityClassName"] == "unlearning-urgent"
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    plain = manifests.build_job(owner, _spec_with(), Settings(), attempt=0)["spec"]["template"]["spec"]
    assert not {"nodeSelector", "tolerations", "affinity", "priorityClassName", "imagePullSecrets"} & set(plain)


def test_settings_read_maps_and_lists_as_json():
    settings = Settings.from_env(
        {
            "UNLEARNING_NODE_SELECTOR": '{"pool": "gpu"}',
            "UNLEARNING_TOLERATIONS": '[{"key": "nvidia.com/gpu", "operator": "Exists"}]',
            "UNLEARNING_IMAGE_PULL_SECRETS": '["registry"]',
        }
    )
    assert settings.node_selector == {"pool": "gpu"} and settings.image_pull_secrets == ["registry"]
    assert settings.tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
