"""Property-based: generated UnlearningJobs go to both judges, the pydantic model (`unlearn validate`) and the
generated CRD (its OpenAPI schema with jsonschema, its CEL rules with cel-python), and they always agree; the
model never raises anything but SpecError.

What stands in for the API server here: unknown fields are refused (kubectl's strict field validation), JSON
carries no NaN or infinity and no integer beyond 64 bits, and patterns match whole strings (Go's RE2 `$`, not
Python's, which also matches before a final newline). Rules that need the Kubernetes quantity library or the old
object are left to the tests on the real API server (tests/cluster/test_resources.py), and so are
`spec.resources` and `spec.scheduling`.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.operator.test_crd_and_manifests import evaluate, json_schema
from unlearning_operator import crd
from unlearning_trainer.errors import SpecError
from unlearning_trainer.spec import dump_job, parse_job

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "unlearningjob.yaml"
INT64 = 1 << 63
UNTESTED_HERE = ("resources", "scheduling")


def _without_none(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_none(v) for k, v in node.items() if v is not None}
    return node


def _base() -> dict[str, Any]:
    job = parse_job(yaml.safe_load(EXAMPLE.read_text()))
    document = {"apiVersion": job.api_version, "kind": job.kind, "metadata": {"name": job.metadata.name}}
    document["spec"] = _without_none(dump_job(job)["spec"])
    return document


BASE = _base()


def _leaves(node: Any, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
    if isinstance(node, dict) and node:
        return [leaf for key, child in node.items() for leaf in _leaves(child, (*prefix, key))]
    return [prefix]


PATHS = [p for p in _leaves(BASE["spec"], ("spec",)) if p[1] not in UNTESTED_HERE]
PATHS += [("metadata", "name"), ("spec", "method", "extra"), ("spec", "training", "batch_size"), ("spec", "extra")]


SCHEMA = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
VALIDATOR = jsonschema.Draft4Validator(json_schema(SCHEMA, strict=True))


def _rules(schema: dict[str, Any], value: Any) -> list[tuple[str, Any]]:
    """Every (CEL rule, the value it judges) for the parts of `value` that exist."""
    found = [(rule["rule"], value) for rule in schema.get("x-kubernetes-validations", [])]
    if isinstance(value, dict):
        for name, child in (schema.get("properties") or {}).items():
            if name in value:
                found += _rules(child, value[name])
    if isinstance(value, list) and "items" in schema:
        for item in value:
            found += _rules(schema["items"], item)
    return found


def _json_can_carry(node: Any) -> bool:
    if isinstance(node, float):
        return math.isfinite(node)
    if isinstance(node, int) and not isinstance(node, bool):
        return -INT64 <= node < INT64
    if isinstance(node, dict):
        return all(_json_can_carry(v) for v in node.values())
    if isinstance(node, list):
        return all(_json_can_carry(v) for v in node)
    return True


def server_accepts(document: dict[str, Any]) -> bool:
    if not _json_can_carry(document) or not VALIDATOR.is_valid(document):
        return False
    if not isinstance(document["metadata"].get("name"), str):
        return False  # ObjectMeta is typed by the API server itself, before any CRD rule
    for rule, value in _rules(SCHEMA, document):
        if "oldSelf" in rule or "quantity(" in rule:
            continue
        if not evaluate(rule, value):
            return False
    return True


def model_accepts(document: dict[str, Any]) -> bool:
    try:
        parse_job(copy.deepcopy(document))
    except SpecError:
        return False
    return True


TEXT = st.text(alphabet=st.characters(exclude_characters="\n", exclude_categories=("Cs",)), max_size=40)
EDGES = st.sampled_from([math.nan, math.inf, -math.inf, 1 << 64, -(1 << 64), True, False, "300", "", 0, -1, 1.5, 1e30])
VALUES = st.one_of(
    EDGES,
    st.booleans(),
    st.integers(-(1 << 65), 1 << 65),
    st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=2),
    TEXT,
    st.sampled_from(["siss", "naive", "linear", "s3://models/x", "vlb", "a" * 60, "forget-42"]),
    st.lists(st.integers(0, 5), max_size=2),
    st.dictionaries(st.sampled_from(["uri", "steps", "name"]), st.integers(0, 5), max_size=2),
)
EDITS = st.lists(st.tuples(st.sampled_from(PATHS), VALUES), min_size=1, max_size=3)


def _apply(edits: list[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    document = copy.deepcopy(BASE)
    for path, value in edits:
        node = document
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[path[-1]] = value
    return document


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EDITS)
def test_the_model_and_the_crd_give_one_verdict(edits):
    document = _apply(edits)
    assert model_accepts(document) == server_accepts(document), f"the judges disagree on {edits}"


def test_the_base_document_is_accepted_by_both():
    assert model_accepts(BASE) and server_accepts(BASE)
