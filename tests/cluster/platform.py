"""The operator platform on the test control plane, as a platform team installs it: kubectl and helm with the
admin kubeconfig, namespaces and Secrets, the chart installed with helm, and the operator pod's audit trail."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.api import Api, eventually
from tests.cluster.control_plane import AUDITED_NAMESPACE, ControlPlane
from tests.cluster.jobs import S3_SECRET
from tests.cluster.node import LocalNode
from tests.servers import ACCESS_KEY, SECRET_KEY

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "unlearning-operator"
RELEASE = "unlearning"
OPERATOR_USER = f"system:serviceaccount:{AUDITED_NAMESPACE}:{RELEASE}"
OPERATOR_SELECTOR = f"app.kubernetes.io/name=unlearning-operator,app.kubernetes.io/instance={RELEASE}"


@dataclass
class Kubectl:
    """kubectl and helm as a user runs them, with the admin kubeconfig."""

    plane: ControlPlane

    def run(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run("kubectl", args, input, check)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run("helm", args, None, check)

    def _run(
        self, tool: str, args: tuple[str, ...], input: str | None, check: bool
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.plane.root),
            "KUBECONFIG": str(self.plane.admin_kubeconfig),
            "HELM_CACHE_HOME": str(self.plane.root / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(self.plane.root / "helm" / "config"),
            "HELM_DATA_HOME": str(self.plane.root / "helm" / "data"),
        }
        result = subprocess.run(
            [str(self.plane.tool(tool)), *args], input=input, capture_output=True, text=True, env=env, timeout=120
        )
        if check and result.returncode != 0:
            command = " ".join((tool, *args))
            raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def apply(self, document: dict[str, Any], *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("apply", "-f", "-", *extra, input=yaml.safe_dump(document), check=check)


def create_namespace(admin: Api, name: str, *, restricted: bool = True) -> None:
    """A namespace that enforces the restricted Pod Security Standard, as a careful platform team sets it."""
    labels = {"pod-security.kubernetes.io/enforce": "restricted"} if restricted else {}
    admin.create("/api/v1/namespaces", {"metadata": {"name": name, "labels": labels}})


def create_s3_secret(admin: Api, namespace: str, name: str = S3_SECRET) -> None:
    data = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
    }
    admin.create(f"/api/v1/namespaces/{namespace}/secrets", secret)


@dataclass
class Platform:
    """The installed chart and the operator pod that the node runs for it."""

    kubectl: Kubectl
    admin: Api
    node: LocalNode
    plane: ControlPlane
    values: list[str]

    def operator_pods(self) -> list[dict[str, Any]]:
        return self.admin.items(f"/api/v1/namespaces/{AUDITED_NAMESPACE}/pods?labelSelector={OPERATOR_SELECTOR}")

    def wait_for_operator(self) -> None:
        """Until the operator pod runs on the node and kopf has opened its watches (seen in the audit log)."""

        def watching() -> bool:
            self.node.check()
            return any(self._watching(pod) for pod in self.operator_pods())

        try:
            eventually(watching, timeout=90, what="the operator pod to run and watch")
        except AssertionError as exc:
            pods = [
                (p["metadata"]["name"], (p.get("status") or {}).get("phase"), p["metadata"].get("deletionTimestamp"))
                for p in self.operator_pods()
            ]
            raise AssertionError(f"{exc}; operator pods {pods}; log:\n{self.operator_log()[-4000:]}") from None

    def _watching(self, pod: dict[str, Any]) -> bool:
        """A live pod (not one of a previous release still going) whose process runs and has opened its watch."""
        status = pod.get("status") or {}
        if pod["metadata"].get("deletionTimestamp") or status.get("phase") != "Running":
            return False
        local = self.node.pods.get(pod["metadata"]["uid"])
        if local is None or local.process is None or local.exit_code() is not None:
            return False
        return any(
            e["verb"] == "watch" and e.get("objectRef", {}).get("resource") == "unlearningjobs"
            for e in operator_requests(self.plane)
            # To the second: "…:24.93Z" sorts before "…:24Z" as text, though it is later.
            if e["requestReceivedTimestamp"][:19] >= status.get("startTime", "")[:19]
        )

    def scale(self, replicas: int) -> None:
        self.kubectl.run("scale", "deployment", RELEASE, "-n", AUDITED_NAMESPACE, f"--replicas={replicas}")
        if replicas == 0:
            eventually(lambda: not self.operator_pods(), timeout=60, what="the operator pod to go")
        else:
            self.wait_for_operator()

    def operator_log(self) -> str:
        return "\n".join(
            local.log_tail(20000) for local in self.node.pods.values() if local.namespace == AUDITED_NAMESPACE
        )


def operator_requests(plane: ControlPlane) -> list[dict[str, Any]]:
    return [e for e in plane.audit_events() if e.get("user", {}).get("username") == OPERATOR_USER]


def forbidden_requests(plane: ControlPlane, since: int = 0, until: int | None = None) -> list[str]:
    """Every request by the operator's ServiceAccount that the RBAC authorizer refused, from the `since`-th on
    (and before the `until`-th). Admission refusals such as an exceeded quota are 403s too, but authorized."""
    return [
        f"{e['verb']} {e['requestURI']}"
        for e in operator_requests(plane)[since:until]
        if (e.get("annotations") or {}).get("authorization.k8s.io/decision") == "forbid"
    ]


def install(kubectl: Kubectl, *values: str) -> None:
    kubectl.helm("install", RELEASE, str(CHART), "--namespace", AUDITED_NAMESPACE, "--create-namespace", *values)


def uninstall(kubectl: Kubectl) -> None:
    """helm uninstall, then wait for the operator pod to be gone: helm waits for the Deployment only, and a pod
    still stopping would make calls, under the same ServiceAccount name, during the next install."""
    kubectl.helm("uninstall", RELEASE, "--namespace", AUDITED_NAMESPACE, "--wait", check=False)
    kubectl.run(
        "wait", "--for=delete", "pod", "-l", OPERATOR_SELECTOR, "-n", AUDITED_NAMESPACE, "--timeout=90s", check=False
    )


def platform_values(s3_server, mlflow_server, **extra_env: str) -> list[str]:
    """The values a platform team would set for this cluster: its S3 and MLflow, CPU-only trainer pods."""
    env = {"UNLEARNING_PROGRESS_POLL_SECONDS": "1", "UNLEARNING_CREATE_RETRY_SECONDS": "2", **extra_env}
    extra = [{"name": name, "value": value} for name, value in env.items()]
    return [
        "--set",
        f"s3Endpoint={s3_server.endpoint}",
        "--set",
        f"mlflow.trackingUri={mlflow_server.url}",
        "--set",
        "trainer.gpusPerWorker=0",
        "--set",
        "trainer.terminationGracePeriodSeconds=20",
        "--set-json",
        f"operator.extraEnv={json.dumps(extra)}",
    ]
