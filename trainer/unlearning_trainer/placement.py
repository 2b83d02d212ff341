"""Where the trainer pods run on Kubernetes: `spec.resources` and `spec.scheduling` of an UnlearningJob.

Pure data and validation, no torch and no Kubernetes client: the operator turns these into the pod template,
`unlearn validate` and the CRD judge them by the same rules (each CEL rule sits beside its pydantic twin).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, model_validator

from unlearning_trainer.wire import WireModel, cel_rule

QUANTITY_PATTERN = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
"""A non-negative Kubernetes resource quantity: `4`, `500m`, `16Gi`, `1e3`."""
RESOURCE_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
"""A qualified name: `cpu`, `memory`, `nvidia.com/gpu`."""
TaintEffect = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
MAX_RESOURCES = 8
MAX_QUANTITY_LENGTH = 32
"""Bounds that keep the CRD's CEL rules on resources within the API server's cost budget."""
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
PRIORITY_CLASS_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_SUFFIXES = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1)},
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate(("k", "M", "G", "T", "P", "E"))},
}


def quantity_value(quantity: int | str) -> Decimal:
    """The number a Kubernetes quantity stands for: mantissa × suffix (binary, decimal SI or eN exponent)."""
    text = str(quantity)
    if len(text) > MAX_QUANTITY_LENGTH or not re.fullmatch(QUANTITY_PATTERN, text):
        raise ValueError(
            f"{text!r} is not a Kubernetes quantity. Fix: a number with an optional suffix, such as 4, 500m or 16Gi"
        )
    number = re.match(r"^[0-9.]+", text).group()  # type: ignore[union-attr]
    suffix = text[len(number) :]
    if suffix[:1] in ("e", "E"):
        return Decimal(number) * Decimal(10) ** Decimal(suffix[1:])
    return Decimal(number) * _SUFFIXES[suffix]


def is_extended(resource: str) -> bool:
    """Extended resources (`nvidia.com/gpu`) are domain-prefixed names outside kubernetes.io: whole units only,
    and Kubernetes requires their request to equal their limit."""
    domain, slash, _ = resource.partition("/")
    return bool(slash) and not (domain == "kubernetes.io" or domain.endswith(".kubernetes.io"))


def _checked_quantity(value: Any) -> int | str:
    """One clear error for any bad quantity instead of one per branch of `int | str`."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{value!r} is not a Kubernetes quantity. Fix: a whole number or a string such as 500m or 2Gi")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{value} is negative. Fix: resource quantities are at least 0")
    quantity_value(value)
    return value


Quantity = Annotated[
    int | str,
    BeforeValidator(_checked_quantity),
    Field(
        json_schema_extra={
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "minimum": 0,
            "maxLength": MAX_QUANTITY_LENGTH,
            "pattern": QUANTITY_PATTERN,
        }
    ),
]


REQUEST_ABOVE_LIMIT = (
    "A request is above its limit. Fix: lower the request or raise the limit "
    "(a resource given in only one of requests and limits is used for both)."
)
FRACTIONAL_EXTENDED = "Extended resources such as nvidia.com/gpu come in whole units. Fix: use a whole number."
BAD_RESOURCE_NAME = "Resource names are qualified names such as cpu, memory or nvidia.com/gpu. Fix: correct the name."


def _each_key_is_resource(part: str) -> str:
    # [.] instead of \. : CEL string literals have no `\.` escape.
    pattern = RESOURCE_NAME_PATTERN.replace("\\.", "[.]")
    return f"!has(self.{part}) || self.{part}.all(k, k.matches('{pattern}'))"


def _whole_extended(part: str) -> str:
    return (
        f"!has(self.{part}) || self.{part}.all(k, !k.contains('/') || k.startsWith('kubernetes.io/') || "
        f"k.split('/')[0].endsWith('.kubernetes.io') || quantity(string(self.{part}[k])).isInteger())"
    )


class ResourcesSpec(WireModel):
    """Per trainer pod. Each resource given here replaces the chart's default for it; one given in only one of
    requests and limits is used for both. The GPU count (the chart's `trainer.gpuResource`) also sets how
    many processes torchrun starts per pod; `nvidia.com/gpu: 0` runs the job on CPUs."""

    # One rule per map and few entries: the API server bounds each rule's worst-case cost.
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel_rule(_each_key_is_resource("requests"), BAD_RESOURCE_NAME, ".requests"),
                cel_rule(_each_key_is_resource("limits"), BAD_RESOURCE_NAME, ".limits"),
                cel_rule(_whole_extended("requests"), FRACTIONAL_EXTENDED, ".requests"),
                cel_rule(_whole_extended("limits"), FRACTIONAL_EXTENDED, ".limits"),
                cel_rule(
                    "!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits) || "
                    "quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)",
                    REQUEST_ABOVE_LIMIT,
                ),
            ]
        }
    )

    requests: dict[str, Quantity] = Field(
        default_factory=dict, max_length=MAX_RESOURCES, description="Resource requests, e.g. {cpu: 8, memory: 32Gi}."
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict,
        max_length=MAX_RESOURCES,
        description="Resource limits, e.g. {nvidia.com/gpu: 4, memory: 64Gi}.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ResourcesSpec:
        for name in (*self.requests, *self.limits):
            if not re.fullmatch(RESOURCE_NAME_PATTERN, name):
                raise ValueError(f"{BAD_RESOURCE_NAME} Got {name!r}.")
        for part in (self.requests, self.limits):
            for name, value in part.items():
                if is_extended(name) and (amount := quantity_value(value)) != amount.to_integral_value():
                    raise ValueError(f"{FRACTIONAL_EXTENDED} Got {name}: {value}.")
        for name, request in self.requests.items():
            if name in self.limits and quantity_value(request) > quantity_value(self.limits[name]):
                raise ValueError(f"{REQUEST_ABOVE_LIMIT} Got {name}: request {request}, limit {self.limits[name]}.")
        return self


EXISTS_WITH_VALUE = (
    "A toleration with operator Exists matches any value and must not set one. "
    "Fix: remove value, or use operator Equal."
)


class Toleration(WireModel):
    """A pod toleration, as in the Kubernetes pod spec."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel_rule("self.operator != 'Exists' || !has(self.value) || self.value == ''", EXISTS_WITH_VALUE)
            ]
        }
    )

    key: str | None = Field(default=None, max_length=316, description="Taint key; empty with Exists matches all.")
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = Field(default=None, max_length=63, pattern=LABEL_VALUE_PATTERN)
    effect: TaintEffect | None = Field(default=None, description="Taint effect to match; empty matches all effects.")
    toleration_seconds: int | None = Field(default=None, description="NoExecute only: how long the pod stays.")

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError(EXISTS_WITH_VALUE)
        return self

    def as_kubernetes(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class SchedulingSpec(WireModel):
    """Where trainer pods may run. nodeSelector adds to (and overrides per key) the chart's default,
    tolerations add to the chart's, affinity and priorityClassName replace the chart's."""

    node_selector: dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]] = Field(
        default_factory=dict, max_length=32, description="Node labels the pods require, e.g. a GPU node pool."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Taints the pods tolerate, e.g. nvidia.com/gpu:NoSchedule."
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="A Kubernetes pod affinity (nodeAffinity, podAffinity, podAntiAffinity); the API server "
        "validates it when the trainer Job is created.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, pattern=PRIORITY_CLASS_PATTERN, description="PriorityClass of the pods."
    )
