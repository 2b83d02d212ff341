"""Generate the UnlearningJob CustomResourceDefinition from the pydantic spec model (the single source of truth).

    python -m unlearning_operator.crd            # rewrite crds/ and the chart's copy
    python -m unlearning_operator.crd --check    # exit 1 if either file drifted from the model

Pure functions except `main`. The schema is structural: `$ref`s are inlined, `Optional[X]` becomes a nullable X,
JSON-Schema-2020 exclusive bounds become OpenAPI v3.0 ones, and pydantic-only keywords are dropped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from unlearning_trainer.spec import KIND, MAX_NAME_LENGTH, NAME_PATTERN, UnlearningJobSpec

GROUP = "unlearning.dev"
VERSION = "v1alpha1"
PLURAL = "unlearningjobs"
SINGULAR = "unlearningjob"
SHORT_NAMES = ["uj"]
ROOT = Path(__file__).resolve().parents[2]
CRD_PATHS = (
    ROOT / "crds" / f"{PLURAL}.{GROUP}.yaml",
    ROOT / "charts" / "unlearning-operator" / "crds" / f"{PLURAL}.{GROUP}.yaml",
)
MUTABLE_RUN_POLICY = ("suspend",)
"""The only spec fields that may change after the job started."""

DROPPED_KEYS = {"title", "$defs"}


def _convert(node: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_convert(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = definitions[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _convert(merged, definitions)
    if "anyOf" in node:
        options = [option for option in node["anyOf"] if option.get("type") != "null"]
        if len(options) == 1 and len(options) < len(node["anyOf"]):
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            converted = _convert({**options[0], **rest}, definitions)
            converted["nullable"] = True
            return converted
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROPPED_KEYS or (key == "default" and value is None):
            continue
        if key == "additionalProperties" and isinstance(value, bool):
            continue  # false is what a structural schema means anyway; true becomes preserve-unknown-fields
        if key == "exclusiveMinimum":
            result["minimum"], result["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            result["maximum"], result["exclusiveMaximum"] = value, True
        elif key == "const":
            result["enum"] = [value]  # structural schemas have no const; a one-value enum says the same
        elif key == "properties":
            result[key] = {name: _convert(child, definitions) for name, child in value.items()}
        else:
            result[key] = _convert(value, definitions)
    return result


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A structural OpenAPI v3.0 schema for `model`, with camelCase field names."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(schema, schema.get("$defs", {}))


def _unchanged(path: str, required: bool) -> str:
    """CEL: the field at `path` (under self/oldSelf) did not change, including being added or removed."""
    if required:
        return f"self.{path} == oldSelf.{path}"
    parent, _, leaf = path.rpartition(".")
    new, old = f"self.{parent}" if parent else "self", f"oldSelf.{parent}" if parent else "oldSelf"
    return f"(has({new}.{leaf}) == has({old}.{leaf}) && (!has({new}.{leaf}) || self.{path} == oldSelf.{path}))"


def immutability_rule(spec_schema: dict[str, Any]) -> str:
    """CEL transition rule: once status.startTime is set, only runPolicy.suspend may change in the spec."""
    required = set(spec_schema.get("required", []))
    parts = [_unchanged(f"spec.{name}", name in required) for name in spec_schema["properties"] if name != "runPolicy"]
    run_policy = spec_schema["properties"]["runPolicy"]["properties"]
    policy_parts = [
        _unchanged(f"spec.runPolicy.{name}", False) for name in run_policy if name not in MUTABLE_RUN_POLICY
    ]
    guarded = " && ".join(parts)
    policy = " && ".join(policy_parts)
    return (
        "!has(oldSelf.status) || !has(oldSelf.status.startTime) || "
        f"({guarded} && (!has(self.spec.runPolicy) || !has(oldSelf.spec.runPolicy) || ({policy})))"
    )


def status_schema() -> dict[str, Any]:
    condition = {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string", "maxLength": 64},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string", "maxLength": 128},
            "message": {"type": "string", "maxLength": 4096},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer", "format": "int64"},
        },
    }
    # What observe.Failure.as_status writes, for both a final failure and the cause of a restart.
    failure = {
        "exitCode": {"type": "integer"},
        "reason": {"type": "string"},
        "message": {"type": "string"},
        "step": {"type": "integer", "description": "The step the attempt reached, when known."},
    }
    return {
        "type": "object",
        "description": "Observed state, written by the operator only.",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "phase": {"type": "string", "enum": ["Pending", "Running", "Suspended", "Succeeded", "Failed"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "observedGeneration": {"type": "integer", "format": "int64"},
            "conditions": {
                "type": "array",
                "items": condition,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "startTime": {"type": "string", "format": "date-time"},
            "completionTime": {"type": "string", "format": "date-time"},
            "jobName": {"type": "string"},
            "serviceName": {"type": "string"},
            "restarts": {"type": "integer"},
            "preemptions": {
                "type": "integer",
                "description": "Restarts after an interruption (SIGTERM, checkpoint saved); not counted as failures.",
            },
            "progress": {
                "type": "object",
                "properties": {
                    "step": {"type": "integer"},
                    "totalSteps": {"type": "integer"},
                    "percent": {"type": "integer"},
                    "resumedFrom": {
                        "type": "integer",
                        "description": "Step the current attempt resumed from (0: a fresh start).",
                    },
                    "message": {"type": "string", "description": "Why progress is not reported, when it is not."},
                },
            },
            "outputModelUri": {"type": "string"},
            "audit": {
                "type": "object",
                "description": "The audit record published with the unlearned model.",
                "properties": {
                    "uri": {"type": "string"},
                    "passed": {"type": "boolean", "description": "Whether every check of spec.audit passed."},
                },
            },
            "mlflow": {
                "type": "object",
                "properties": {
                    "experimentId": {"type": "string"},
                    "runId": {"type": "string"},
                    "runUrl": {"type": "string"},
                },
            },
            "failure": {
                "type": "object",
                "description": "Why the job failed (set only when phase is Failed).",
                "properties": failure,
            },
            "lastRestart": {
                "type": "object",
                "description": "The failed attempt behind the latest whole-group restart.",
                "properties": {
                    "attempt": {"type": "integer"},
                    "time": {"type": "string", "format": "date-time"},
                    **failure,
                },
            },
        },
    }


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Method", "type": "string", "jsonPath": ".spec.method.name"},
    {"name": "Progress", "type": "integer", "jsonPath": ".status.progress.percent", "description": "percent"},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
    {"name": "MLflow Run", "type": "string", "jsonPath": ".status.mlflow.runId"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition."""
    spec = openapi_schema(UnlearningJobSpec)
    root = {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status_schema(),
        },
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
                "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters (child Job and pod names "
                "derive from it)",
                "reason": "FieldValueInvalid",
            },
            {
                "rule": f"self.metadata.name.matches('{NAME_PATTERN}')",
                "message": "metadata.name must be a DNS-1035 label: lower-case letters, digits and '-', starting "
                "with a letter and ending with a letter or digit (the trainer Service and pods are named after it)",
                "reason": "FieldValueInvalid",
            },
            {
                "rule": immutability_rule(spec),
                "message": "the spec cannot change once the job has started, except spec.runPolicy.suspend",
                "reason": "FieldValueForbidden",
            },
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["ml"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


HEADER = "# Generated by `python -m unlearning_operator.crd` from unlearning_trainer.spec. Do not edit.\n"


def render() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the files are up to date")
    args = parser.parse_args(argv)
    text = render()
    stale = [path for path in CRD_PATHS if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            sys.stderr.write(f"{path} is out of date: run python -m unlearning_operator.crd\n")
        return 1 if stale else 0
    for path in CRD_PATHS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
