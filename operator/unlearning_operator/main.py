"""Run the operator (kopf, standalone: one replica, no peering)."""

from __future__ import annotations

import asyncio
import logging

import kopf

from unlearning_operator.handlers import build_registry
from unlearning_operator.k8s import Kubernetes
from unlearning_operator.settings import Settings


def run(*, namespaces: list[str], clusterwide: bool, liveness: str | None = None, verbose: bool = False) -> None:
    """Watch UnlearningJobs in `namespaces` (or all of them) until interrupted."""
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON)
    logging.getLogger("unlearning_operator").setLevel(logging.DEBUG if verbose else logging.INFO)
    registry = build_registry(
        Settings.from_env(), Kubernetes.from_environment(), namespaces=None if clusterwide else namespaces
    )
    asyncio.run(
        kopf.operator(
            registry=registry,
            standalone=True,
            namespaces=namespaces,
            clusterwide=clusterwide,
            liveness_endpoint=liveness,
        )
    )
