"""A battery of UnlearningJob documents, each with the verdict both judges must give: `unlearn validate` (the
pydantic model) and the API server (the generated CRD's schema and CEL rules, with kubectl's strict field
validation). Each refused one names the field the message must mention.

`tests/trainer/test_validate_battery.py` runs the CLI on every case; `tests/cluster/test_resources.py` also
sends each one to the real API server with `kubectl apply --dry-run=server` and compares the verdicts.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "examples" / "unlearningjob.yaml").read_text())


@dataclass(frozen=True)
class Case:
    id: str
    edit: Callable[[dict[str, Any]], None]
    field: str | None
    """What a refusal must name; None for a document both judges accept."""
    server_field: str | None = None
    """What the API server's refusal names instead, where kubectl words it differently (kinds, versions)."""
    raw: str | None = None
    """YAML text to use instead of the edited document (to test how numbers are written)."""

    @property
    def valid(self) -> bool:
        return self.field is None

    def document(self) -> dict[str, Any]:
        document = copy.deepcopy(BASE)
        self.edit(document)
        return document

    def text(self) -> str:
        return self.raw if self.raw is not None else yaml.safe_dump(self.document(), sort_keys=False)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = document
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    return edit


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = document
        for part in parents:
            node = node[part]
        del node[leaf]

    return edit


def _both(*edits: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        for one in edits:
            one(document)

    return edit


def _unchanged(document: dict[str, Any]) -> None:
    return None


_TRAIN_NOT_RETAIN = _both(_drop("spec.data.retain"), _set("spec.data.train", {"uri": "s3://datasets/digits/all/"}))

_BASE_TEXT = (ROOT / "examples" / "unlearningjob.yaml").read_text()

CASES = [
    # --- accepted by both ---------------------------------------------------------------------------------
    Case("the-example", _unchanged, None),
    Case("one-letter-name", _set("metadata.name", "a"), None),
    Case("name-of-50", _set("metadata.name", "f" * 50), None),
    Case("dotted-secret-name", _set("spec.storage.credentialsSecret", "s3.credentials-1"), None),
    Case("lambda-0", _set("spec.method.lambda", 0), None),
    Case("lambda-1", _set("spec.method.lambda", 1), None),
    Case("retrack", _set("spec.method", {"name": "retrack", "k": 10, "lambda": 0.005}), None),
    Case("holdout", _set("spec.data.holdout", {"uri": "s3://datasets/digits/holdout/"}), None),
    Case("retain-generated", _set("spec.data.retain", {"generate": {"imagesPerCaption": 32}}), None),
    Case(
        "lora", _set("spec.method.adapter", {"type": "lora", "rank": 16, "alpha": 16, "targetModules": ["to_q"]}), None
    ),
    Case("lora-defaults", _set("spec.method.adapter", {}), None),
    Case("membership", _set("spec.evaluation.membership", {"lossTimesteps": [10, 20], "simaTimestep": 5}), None),
    Case(
        "exponent-without-dot", _unchanged, None, raw=_BASE_TEXT.replace("learningRate: 5.0e-5", "learningRate: 5e-5")
    ),
    Case("warmup-with-cosine", _set("spec.training", {"lrScheduler": "cosine", "lrWarmupSteps": 10}), None),
    Case("train-instead-of-retain", _TRAIN_NOT_RETAIN, None),
    Case("rms-threshold", _set("spec.evaluation.memorizationThresholdRms", 0.05), None),
    Case("bf16", _set("spec.training.mixedPrecision", "bf16"), None),
    Case("stop-when-forgotten", _set("spec.training.stopWhen", {"maxMemorizationRate": 0.0}), None),
    Case("relearning-probe", _set("spec.audit.relearningSteps", 200), None),
    Case("train-with-near-duplicates", _both(_TRAIN_NOT_RETAIN, _set("spec.data.nearDuplicateDistance", 0.02)), None),
    Case("train-with-retain-null", _both(_TRAIN_NOT_RETAIN, _set("spec.data.retain", None)), None),
    Case(
        "shards-and-parquet",
        _both(_set("spec.data.retain.format", "webdataset"), _set("spec.data.forget.format", "parquet")),
        None,
    ),
    Case(
        "learning-rate-infinite",
        _unchanged,
        "spec.training.learningRate",
        server_field="unsupported value: +Inf",  # kubectl itself cannot put it into JSON, and says so
        raw=_BASE_TEXT.replace("learningRate: 5.0e-5", "learningRate: .inf"),
    ),
    Case(
        "steps-beyond-int64",
        _unchanged,
        "spec.training.steps",
        raw=_BASE_TEXT.replace("steps: 300", "steps: 100000000000000000000"),
    ),
    # --- names --------------------------------------------------------------------------------------------
    Case("name-starts-with-digit", _set("metadata.name", "42-forget"), "metadata.name"),
    Case("name-with-dots", _set("metadata.name", "forget.req.42"), "metadata.name"),
    Case("name-upper-case", _set("metadata.name", "Forget-42"), "metadata.name"),
    Case("name-unicode", _set("metadata.name", "forget-né"), "metadata.name"),
    Case("name-ends-with-dash", _set("metadata.name", "forget-"), "metadata.name"),
    Case("name-with-trailing-newline", _set("metadata.name", "forget\n"), "metadata.name"),
    Case("name-of-51", _set("metadata.name", "f" * 51), "metadata.name"),
    Case("secret-name-underscore", _set("spec.storage.credentialsSecret", "My_S3_Secret"), "credentialsSecret"),
    Case("secret-name-upper-case", _set("spec.storage.credentialsSecret", "S3-Credentials"), "credentialsSecret"),
    # --- the document -------------------------------------------------------------------------------------
    Case("no-api-version", _drop("apiVersion"), "apiVersion"),
    Case("no-kind", _drop("kind"), "kind"),
    Case(
        "other-api-version",
        _set("apiVersion", "unlearning.dev/v1"),
        "apiVersion",
        server_field='no matches for kind "UnlearningJob" in version "unlearning.dev/v1"',
    ),
    Case("kind-lower-case", _set("kind", "unlearningjob"), "kind"),
    Case("no-spec", _drop("spec"), "spec"),
    Case("no-model", _drop("spec.model"), "spec.model"),
    Case("no-output-uri", _set("spec.output", {}), "spec.output.uri"),
    Case("empty-model-uri", _set("spec.model.uri", ""), "spec.model.uri"),
    Case("uri-with-trailing-newline", _set("spec.model.uri", "s3://models/ddpm-digits\n"), "spec.model.uri"),
    Case("uri-nul-byte", _set("spec.model.uri", "\x00"), "spec.model.uri"),
    Case("local-path-with-control-character", _set("spec.data.forget.uri", "/data/for\x07get"), "spec.data.forget.uri"),
    Case("s3-without-bucket", _set("spec.model.uri", "s3:///ddpm-digits"), "spec.model.uri"),
    Case("s3-bucket-upper-case", _set("spec.data.forget.uri", "s3://Datasets/forget"), "spec.data.forget.uri"),
    Case("s3-one-slash", _set("spec.data.retain.uri", "s3:/datasets/retain"), "spec.data.retain.uri"),
    Case("unsupported-scheme", _set("spec.output.uri", "gs://models/out"), "spec.output.uri"),
    Case("forget-is-a-string", _set("spec.data.forget", "s3://datasets/requests/42/"), "spec.data.forget"),
    Case("train-and-retain", _set("spec.data.train", {"uri": "s3://datasets/digits/all/"}), "spec.data"),
    Case("neither-train-nor-retain", _drop("spec.data.retain"), "spec.data"),
    Case(
        "near-duplicates-without-train",
        _set("spec.data.nearDuplicateDistance", 0.02),
        "spec.data.nearDuplicateDistance",
    ),
    Case(
        "near-duplicate-distance-above-1",
        _both(_TRAIN_NOT_RETAIN, _set("spec.data.nearDuplicateDistance", 1.5)),
        "spec.data.nearDuplicateDistance",
    ),
    Case("unknown-data-format", _set("spec.data.retain.format", "tfrecord"), "spec.data.retain.format"),
    Case("stop-when-nothing", _set("spec.training.stopWhen", {"evaluations": 2}), "spec.training.stopWhen"),
    Case("relearning-negative", _set("spec.audit.relearningSteps", -1), "spec.audit.relearningSteps"),
    Case(
        "rms-threshold-above-1",
        _set("spec.evaluation.memorizationThresholdRms", 1.5),
        "spec.evaluation.memorizationThresholdRms",
    ),
    Case("unknown-spec-field", _set("spec.priority", "high"), "spec.priority"),
    Case("snake-case-field", _set("spec.training.batch_size", 32), "batch_size"),
    Case("output-is-the-model", _set("spec.output.uri", "s3://models/ddpm-digits"), "spec.output.uri"),
    Case("output-is-the-model-with-slash", _set("spec.output.uri", "s3://models/ddpm-digits/"), "spec.output.uri"),
    # --- method -------------------------------------------------------------------------------------------
    Case("unknown-method", _set("spec.method.name", "forget-everything"), "spec.method.name"),
    Case("lambda-above-1", _set("spec.method.lambda", 1.5), "spec.method.lambda"),
    Case("lambda-negative", _set("spec.method.lambda", -0.1), "spec.method.lambda"),
    Case("lambda-as-string", _set("spec.method.lambda", "0.5"), "spec.method.lambda"),
    Case("forget-grad-norm-0", _set("spec.method.forgetGradNorm", 0), "spec.method.forgetGradNorm"),
    Case("retrack-k-0", _set("spec.method", {"name": "retrack", "k": 0}), "spec.method.k"),
    Case(
        "membership-negative-timestep",
        _set("spec.evaluation.membership.lossTimesteps", [10, -1]),
        "spec.evaluation.membership.lossTimesteps",
    ),
    Case("membership-no-timesteps", _set("spec.evaluation.membership.lossTimesteps", []), "lossTimesteps"),
    Case("membership-percentile-above-100", _set("spec.audit.minMembershipPercentile", 101), "minMembershipPercentile"),
    Case("holdout-without-uri", _set("spec.data.holdout", {}), "spec.data.holdout.uri"),
    Case("retain-without-uri-or-generate", _set("spec.data.retain", {}), "spec.data.retain"),
    Case(
        "retain-uri-and-generate",
        _set("spec.data.retain", {"uri": "s3://datasets/r/", "generate": {"imagesPerCaption": 8}}),
        "spec.data.retain",
    ),
    Case(
        "retain-generate-zero-images",
        _set("spec.data.retain", {"generate": {"imagesPerCaption": 0}}),
        "spec.data.retain.generate.imagesPerCaption",
    ),
    Case("lora-rank-0", _set("spec.method.adapter", {"rank": 0}), "spec.method.adapter.rank"),
    Case("lora-unknown-type", _set("spec.method.adapter", {"type": "dora"}), "spec.method.adapter.type"),
    Case("lora-no-targets", _set("spec.method.adapter", {"targetModules": []}), "targetModules"),
    Case("adapter-output-without-adapter", _set("spec.output.format", "adapter"), "spec.output.format"),
    Case("unknown-output-format", _set("spec.output.format", "ckpt"), "spec.output.format"),
    Case("retrack-k-fraction", _set("spec.method", {"name": "retrack", "k": 2.5}), "spec.method.k"),
    # --- training -----------------------------------------------------------------------------------------
    Case("steps-0", _set("spec.training.steps", 0), "spec.training.steps"),
    Case("steps-as-string", _set("spec.training.steps", "300"), "spec.training.steps"),
    Case("steps-as-boolean", _set("spec.training.steps", True), "spec.training.steps"),
    Case("batch-size-fraction", _set("spec.training.batchSize", 2.5), "spec.training.batchSize"),
    Case("learning-rate-word", _set("spec.training.learningRate", "fast"), "spec.training.learningRate"),
    Case("learning-rate-0", _set("spec.training.learningRate", 0), "spec.training.learningRate"),
    Case("unknown-scheduler", _set("spec.training.lrScheduler", "exponential"), "spec.training.lrScheduler"),
    Case("adam-beta1-of-1", _set("spec.training.adamBeta1", 1.0), "spec.training.adamBeta1"),
    Case(
        "warmup-with-constant-schedule",
        _set("spec.training.lrWarmupSteps", 10),
        "spec.training.lrWarmupSteps",
    ),
    Case(
        "warmup-as-long-as-training",
        _set("spec.training", {"steps": 100, "lrScheduler": "linear", "lrWarmupSteps": 100}),
        "spec.training.lrWarmupSteps",
    ),
    Case("accumulation-huge", _set("spec.training.gradientAccumulationSteps", 2**62), "gradientAccumulationSteps"),
    Case(
        "batch-not-divisible",
        _both(_set("spec.workers", 3), _set("spec.training.batchSize", 64)),
        "spec.training.batchSize",
    ),
    # --- evaluation, audit, tracking ----------------------------------------------------------------------
    Case("unknown-nll-method", _set("spec.evaluation.nll", {"method": "exact"}), "spec.evaluation.nll.method"),
    Case("negative-threshold", _set("spec.evaluation.memorizationThreshold", -1), "memorizationThreshold"),
    Case("guidance-below-1", _set("spec.evaluation.guidanceScale", 0.5), "spec.evaluation.guidanceScale"),
    Case("max-rate-above-1", _set("spec.audit", {"maxMemorizationRate": 2}), "spec.audit.maxMemorizationRate"),
    Case("empty-experiment", _set("spec.tracking.experiment", ""), "spec.tracking.experiment"),
    Case(
        "registered-model-without-name", _set("spec.tracking.registeredModel", {"alias": "x"}), "registeredModel.name"
    ),
    # --- workers and run policy ---------------------------------------------------------------------------
    Case("workers-0", _set("spec.workers", 0), "spec.workers"),
    Case("workers-65", _set("spec.workers", 65), "spec.workers"),
    Case("suspend-yes-string", _set("spec.runPolicy.suspend", "yes"), "spec.runPolicy.suspend"),
    Case("backoff-negative", _set("spec.runPolicy.backoffLimit", -1), "spec.runPolicy.backoffLimit"),
    Case("deadline-0", _set("spec.runPolicy.activeDeadlineSeconds", 0), "spec.runPolicy.activeDeadlineSeconds"),
    # --- resources and scheduling -------------------------------------------------------------------------
    Case(
        "gpus-and-memory",
        _set("spec.resources", {"requests": {"cpu": "7500m"}, "limits": {"nvidia.com/gpu": 2, "memory": "64Gi"}}),
        None,
    ),
    Case(
        "gpu-pool",
        _set(
            "spec.scheduling",
            {
                "nodeSelector": {"cloud.example.com/pool": "gpu-h100"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "affinity": {"nodeAffinity": {}},
                "priorityClassName": "batch-low",
            },
        ),
        None,
    ),
    Case("cpu-lots", _set("spec.resources", {"requests": {"cpu": "lots"}}), "spec.resources.requests"),
    Case("memory-negative", _set("spec.resources", {"limits": {"memory": -1}}), "spec.resources.limits"),
    Case("memory-fraction-number", _set("spec.resources", {"limits": {"memory": 1.5}}), "spec.resources.limits"),
    Case(
        "request-above-limit",
        _set("spec.resources", {"requests": {"memory": "64Gi"}, "limits": {"memory": "16Gi"}}),
        "spec.resources",
    ),
    Case("half-a-gpu", _set("spec.resources", {"limits": {"nvidia.com/gpu": "500m"}}), "spec.resources"),
    Case("resource-name-with-space", _set("spec.resources", {"limits": {"nvidia gpu": 1}}), "spec.resources"),
    Case(
        "toleration-exists-with-value",
        _set("spec.scheduling", {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "yes"}]}),
        "spec.scheduling.tolerations",
    ),
    Case(
        "toleration-unknown-effect",
        _set("spec.scheduling", {"tolerations": [{"key": "gpu", "effect": "Sometimes"}]}),
        "spec.scheduling.tolerations",
    ),
    Case(
        "priority-class-upper-case",
        _set("spec.scheduling", {"priorityClassName": "High_Priority"}),
        "spec.scheduling.priorityClassName",
    ),
    Case(
        "node-selector-value-with-space",
        _set("spec.scheduling", {"nodeSelector": {"pool": "gpu pool"}}),
        "spec.scheduling.nodeSelector",
    ),
]
