"""Operator settings: the one place that holds the defaults the Helm chart, the CLI and the operator share.

Every field can be set through an environment variable `UNLEARNING_<FIELD IN UPPER CASE>` (JSON for maps and
lists); the chart's values.yaml sets them, and a test checks that its defaults equal the ones here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Settings:
    trainer_image: str = "ghcr.io/unlearning-dev/unlearning-trainer:0.1.0"
    """Image of the trainer pods (CUDA-capable, runs `unlearn run`)."""
    trainer_service_account: str = "unlearning-trainer"
    """ServiceAccount of trainer pods; it has no API permissions and no token is mounted."""
    s3_endpoint: str = ""
    """Default S3 endpoint for jobs whose spec.storage.endpoint is null (empty: AWS)."""
    mlflow_tracking_uri: str = ""
    """Default MLflow server for jobs whose spec.tracking.mlflowTrackingUri is null (empty: no MLflow)."""
    mlflow_ui_url: str = ""
    """Public MLflow URL for links in status (empty: the tracking URI)."""
    gpu_resource: str = "nvidia.com/gpu"
    """Extended resource name requested for GPUs."""
    gpus_per_worker: int = 1
    """GPUs per trainer pod (0 runs on CPU); torchrun starts one process per GPU."""
    worker_cpu: str = "4"
    worker_memory: str = "16Gi"
    shm_size: str = "2Gi"
    """Size of the memory-backed /dev/shm for DataLoader workers and NCCL."""
    termination_grace_seconds: int = 300
    """How long a trainer pod may take after SIGTERM: enough to write its checkpoint to the output store (a
    Stable Diffusion U-Net with AdamW state is about 10 GB). Kubernetes' default of 30 s is too short."""
    rendezvous_port: int = 29500
    progress_poll_seconds: float = 30.0
    """How often the operator reads progress from MLflow for running jobs."""
    create_retry_seconds: float = 30.0
    """How long a job waits to retry creating its trainer objects after a refusal that may pass (an exceeded
    ResourceQuota, an API server error)."""
    node_selector: dict[str, str] = field(default_factory=dict)
    """Default nodeSelector of trainer pods; a job's spec.scheduling.nodeSelector adds to it per key."""
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    """Default tolerations of trainer pods; a job's spec.scheduling.tolerations are added to them."""
    affinity: dict[str, Any] = field(default_factory=dict)
    """Default affinity of trainer pods; a job's spec.scheduling.affinity replaces it."""
    priority_class_name: str = ""
    """Default PriorityClass of trainer pods; a job's spec.scheduling.priorityClassName replaces it."""
    image_pull_secrets: list[str] = field(default_factory=list)
    """Secrets (in each job's namespace) for pulling the trainer image from a private registry."""
    extra_labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values = {}
        for item in dataclasses.fields(cls):
            raw = env.get(f"UNLEARNING_{item.name.upper()}")
            if raw is None or item.name == "extra_labels":
                continue
            kind = type(getattr(cls(), item.name))
            values[item.name] = json.loads(raw) if kind in (dict, list) else kind(raw)
        return cls(**values)
