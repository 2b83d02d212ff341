"""Pure builders for the children of an UnlearningJob: a ConfigMap with the resolved spec, a headless Service
and an Indexed batch/v1 Job whose pods run the trainer under torchrun.

No I/O here: every function maps (resource, settings) to a Kubernetes object as a dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from unlearning_operator.settings import Settings
from unlearning_trainer.placement import is_extended, quantity_value
from unlearning_trainer.spec import UnlearningJobSpec

JOB_LABEL = "unlearning.dev/job"
ATTEMPT_LABEL = "unlearning.dev/attempt"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
SPEC_MOUNT = "/etc/unlearning"
SPEC_FILE = "job.yaml"
PERMANENT_EXIT_CODES = [2, 3, 4, 5]
"""Trainer exit codes for an invalid job, missing data, denied storage access and a NaN or inf update:
retrying cannot help."""
RUN_UID = 1000
MANAGER = "unlearning-operator"


@dataclass(frozen=True)
class Owner:
    """What the children need to know about their UnlearningJob."""

    name: str
    namespace: str
    uid: str
    labels: dict[str, str]
    api_version: str = "unlearning.dev/v1alpha1"
    kind: str = "UnlearningJob"

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Owner:
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace", "default"),
            uid=meta.get("uid", ""),
            labels=dict(meta.get("labels") or {}),
        )

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def service_name(owner: Owner) -> str:
    return owner.name


def configmap_name(owner: Owner) -> str:
    return f"{owner.name}-spec"


def job_name(owner: Owner, attempt: int) -> str:
    """One Job per attempt: a whole-group restart creates `<name>-r<attempt+1>`."""
    return f"{owner.name}-r{attempt}"


def labels(owner: Owner, settings: Settings) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "unlearning-trainer",
        "app.kubernetes.io/managed-by": MANAGER,
        "app.kubernetes.io/instance": owner.name,
        JOB_LABEL: owner.name,
        **settings.extra_labels,
    }


def _metadata(owner: Owner, name: str, settings: Settings, **extra_labels: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, settings) | extra_labels,
        "ownerReferences": [owner.reference()],
    }


def resolved_spec(spec: UnlearningJobSpec, settings: Settings) -> UnlearningJobSpec:
    """The spec with the operator's defaults for the S3 endpoint and the MLflow server filled in."""
    storage, tracking = spec.storage, spec.tracking
    if storage.endpoint is None and settings.s3_endpoint:
        storage = storage.model_copy(update={"endpoint": settings.s3_endpoint})
    if tracking.mlflow_tracking_uri is None and settings.mlflow_tracking_uri:
        tracking = tracking.model_copy(update={"mlflow_tracking_uri": settings.mlflow_tracking_uri})
    return spec.model_copy(update={"storage": storage, "tracking": tracking})


def build_configmap(owner: Owner, spec: UnlearningJobSpec, settings: Settings) -> dict[str, Any]:
    """The job file the trainer reads: the resolved spec with every default filled in."""
    document = {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "metadata": {"name": owner.name, "namespace": owner.namespace, "uid": owner.uid},
        "spec": resolved_spec(spec, settings).model_dump(mode="json", by_alias=True),
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, configmap_name(owner), settings),
        "data": {SPEC_FILE: yaml.safe_dump(document, sort_keys=False)},
    }


def build_service_account(namespace: str, settings: Settings) -> dict[str, Any]:
    """The trainer pods' ServiceAccount in the job's namespace: no token, no permissions, and no owner, since
    every job in the namespace shares it. One that exists already (say, with a workload-identity annotation
    for S3 access) is used as it is."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": settings.trainer_service_account,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "unlearning-trainer", "app.kubernetes.io/managed-by": MANAGER},
        },
        "automountServiceAccountToken": False,
    }


def build_service(owner: Owner, settings: Settings) -> dict[str, Any]:
    """Headless Service that gives pod 0 the stable name `<job>-0.<service>` for the torchrun rendezvous."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, service_name(owner), settings),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_LABEL: owner.name},
            "ports": [{"name": "rendezvous", "port": settings.rendezvous_port, "targetPort": settings.rendezvous_port}],
        },
    }


def trainer_command() -> list[str]:
    """torchrun reads --nnodes, --node-rank, --nproc-per-node and the master address from the PET_* variables."""
    return [
        "torchrun",
        "--module",
        "unlearning_trainer.cli",
        "--log-format",
        "json",
        "run",
        f"{SPEC_MOUNT}/{SPEC_FILE}",
        "--no-progress",
    ]


@dataclass(frozen=True)
class PodResources:
    requests: dict[str, str]
    limits: dict[str, str]
    gpus: int
    """Whole GPUs per pod (the chart's `trainer.gpuResource`); 0 runs the trainer on CPUs."""


def pod_resources(spec: UnlearningJobSpec, settings: Settings) -> PodResources:
    """The chart's defaults, overridden per resource by spec.resources; a resource given in only one of requests
    and limits is used for both, and a zero count of an extended resource (`nvidia.com/gpu: 0`) is dropped."""
    defaults = {"cpu": settings.worker_cpu, "memory": settings.worker_memory}
    if settings.gpus_per_worker > 0:
        defaults[settings.gpu_resource] = str(settings.gpus_per_worker)
    given_requests = {name: str(value) for name, value in spec.resources.requests.items()}
    given_limits = {name: str(value) for name, value in spec.resources.limits.items()}
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    for name in {**defaults, **given_requests, **given_limits}:
        requests[name] = given_requests.get(name, given_limits.get(name, defaults.get(name, "")))
        limits[name] = given_limits.get(name, given_requests.get(name, defaults.get(name, "")))
        if is_extended(name) and quantity_value(limits[name]) == 0:
            del requests[name], limits[name]
    gpus = int(quantity_value(limits.get(settings.gpu_resource, "0")))
    return PodResources(requests, limits, gpus)


def pod_scheduling(spec: UnlearningJobSpec, settings: Settings) -> dict[str, Any]:
    """Pod-spec fields for placement: the chart's defaults merged with spec.scheduling (see SchedulingSpec)."""
    wanted = spec.scheduling
    fields: dict[str, Any] = {}
    node_selector = settings.node_selector | wanted.node_selector
    if node_selector:
        fields["nodeSelector"] = node_selector
    tolerations = [*settings.tolerations, *(t.as_kubernetes() for t in wanted.tolerations)]
    if tolerations:
        fields["tolerations"] = tolerations
    affinity = wanted.affinity or settings.affinity
    if affinity:
        fields["affinity"] = affinity
    priority_class = wanted.priority_class_name or settings.priority_class_name
    if priority_class:
        fields["priorityClassName"] = priority_class
    if settings.image_pull_secrets:
        fields["imagePullSecrets"] = [{"name": name} for name in settings.image_pull_secrets]
    return fields


def _env(
    owner: Owner, spec: UnlearningJobSpec, settings: Settings, job: str, mlflow: dict[str, str] | None, gpus: int
) -> list[dict[str, Any]]:
    nproc = max(1, gpus)
    env: list[dict[str, Any]] = [
        {"name": "PET_NNODES", "value": str(spec.workers)},
        {"name": "PET_NPROC_PER_NODE", "value": str(nproc)},
        {
            "name": "PET_NODE_RANK",
            "valueFrom": {
                "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
            },
        },
        {"name": "PET_MASTER_ADDR", "value": f"{job}-0.{service_name(owner)}"},
        {"name": "PET_MASTER_PORT", "value": str(settings.rendezvous_port)},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/cache/huggingface"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "UNLEARNING_CACHE_DIR", "value": "/cache/unlearning"},
        {"name": "UNLEARNING_TERMINATION_LOG", "value": "/dev/termination-log"},
    ]
    if gpus == 0:
        env.append({"name": "ACCELERATE_USE_CPU", "value": "true"})
    secret = spec.storage.credentials_secret
    if secret:
        for key, optional in (
            ("AWS_ACCESS_KEY_ID", False),
            ("AWS_SECRET_ACCESS_KEY", False),
            ("AWS_SESSION_TOKEN", True),
        ):
            ref = {"name": secret, "key": key, "optional": optional}
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    if mlflow:
        env.extend({"name": key, "value": value} for key, value in mlflow.items())
    return env


def build_job(
    owner: Owner,
    spec: UnlearningJobSpec,
    settings: Settings,
    *,
    attempt: int,
    mlflow_env: dict[str, str] | None = None,
    active_deadline_seconds: int | None = None,
) -> dict[str, Any]:
    """Indexed Job with `spec.workers` pods; the operator owns retries, so the Job itself never retries."""
    name = job_name(owner, attempt)
    pod_labels = labels(owner, settings) | {ATTEMPT_LABEL: str(attempt)}
    job_labels = dict(pod_labels)
    if QUEUE_LABEL in owner.labels:
        job_labels[QUEUE_LABEL] = owner.labels[QUEUE_LABEL]
    resources = pod_resources(spec, settings)
    container = {
        "name": "trainer",
        "image": settings.trainer_image,
        "command": trainer_command(),
        "env": _env(owner, spec, settings, name, mlflow_env, resources.gpus),
        "ports": [{"name": "rendezvous", "containerPort": settings.rendezvous_port}],
        "resources": {"requests": resources.requests, "limits": resources.limits},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True},
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "cache", "mountPath": "/cache"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": spec.workers,
        "parallelism": spec.workers,
        "backoffLimit": 0,
        "suspend": spec.run_policy.suspend,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": "trainer", "operator": "In", "values": PERMANENT_EXIT_CODES},
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": {
            "metadata": {"labels": pod_labels},
            "spec": {
                "subdomain": service_name(owner),
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": settings.termination_grace_seconds,
                "serviceAccountName": settings.trainer_service_account,
                "automountServiceAccountToken": False,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": RUN_UID,
                    "runAsGroup": RUN_UID,
                    "fsGroup": RUN_UID,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [container],
                **pod_scheduling(spec, settings),
                "volumes": [
                    {"name": "spec", "configMap": {"name": configmap_name(owner)}},
                    {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}},
                    {"name": "cache", "emptyDir": {}},
                    {"name": "tmp", "emptyDir": {}},
                ],
            },
        },
    }
    if active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = max(1, active_deadline_seconds)
    metadata = _metadata(owner, name, settings)
    metadata["labels"] = job_labels
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}
