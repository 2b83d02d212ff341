"""The only module that calls the Kubernetes API (through the official client, as plain dicts).

Every write is idempotent: creating an object that exists is fine when we own it, deleting one that is gone
is fine, and selectors are also applied client-side so that test servers that ignore them stay correct.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from unlearning_operator.crd import GROUP, PLURAL, VERSION
from unlearning_trainer.spec import KIND

COMPONENT = "unlearning-operator"
KUEUE_GROUP = "kueue.x-k8s.io"


class OwnershipError(Exception):
    """A child with our name exists but belongs to someone else."""


class StaleError(Exception):
    """The object changed since it was read; the decision taken on that read must be dropped."""


class Kubernetes:
    def __init__(self, api_client: kubernetes.client.ApiClient, *, timeout_seconds: float = 30.0) -> None:
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.batch = kubernetes.client.BatchV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.apis = kubernetes.client.ApisApi(api_client)
        self.timeout = (min(5.0, timeout_seconds), timeout_seconds)
        """(connect, read) timeout of every call: a handler never hangs on a dead connection."""

    @classmethod
    def from_environment(cls) -> Kubernetes:
        """In-cluster credentials when running in a pod, the kubeconfig otherwise."""
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        return cls(kubernetes.client.ApiClient())

    @staticmethod
    def _data(response: Any) -> dict[str, Any]:
        return json.loads(response.data)

    def _read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        readers = {
            "Job": self.batch.read_namespaced_job,
            "Service": self.core.read_namespaced_service,
            "ConfigMap": self.core.read_namespaced_config_map,
            "ServiceAccount": self.core.read_namespaced_service_account,
        }
        try:
            return self._data(readers[kind](name, namespace, _preload_content=False, _request_timeout=self.timeout))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_or_adopt(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create `body`; if it exists and carries the same controller owner, return it. Returns (object, created)."""
        creators = {
            "Job": self.batch.create_namespaced_job,
            "Service": self.core.create_namespaced_service,
            "ConfigMap": self.core.create_namespaced_config_map,
            "ServiceAccount": self.core.create_namespaced_service_account,
        }
        meta = body["metadata"]
        try:
            return self._data(
                creators[body["kind"]](meta["namespace"], body, _preload_content=False, _request_timeout=self.timeout)
            ), True
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = self._read(body["kind"], meta["namespace"], meta["name"]) or {}
        owners = {ref.get("uid") for ref in existing.get("metadata", {}).get("ownerReferences") or []}
        wanted = {ref["uid"] for ref in meta.get("ownerReferences", [])}
        if wanted and not owners & wanted:
            raise OwnershipError(f"{body['kind']} {meta['namespace']}/{meta['name']} exists and is not ours")
        return existing, False

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read("Job", namespace, name)

    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.batch.patch_namespaced_job(name, namespace, patch, _request_timeout=self.timeout)

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and (through background propagation) its pods; a missing Job is fine."""
        try:
            self.batch.delete_namespaced_job(
                name, namespace, propagation_policy="Background", _request_timeout=self.timeout
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def list_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        selector = f"batch.kubernetes.io/job-name={job_name}"
        pods = self._data(
            self.core.list_namespaced_pod(
                namespace, label_selector=selector, _preload_content=False, _request_timeout=self.timeout
            )
        )
        return [
            pod
            for pod in pods.get("items", [])
            if (pod.get("metadata", {}).get("labels") or {}).get("batch.kubernetes.io/job-name") == job_name
        ]

    def get_unlearning_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._data(
                self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, _preload_content=False, _request_timeout=self.timeout
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about `body` (an UnlearningJob), as `kubectl describe` and `get events` show them."""
        meta = body["metadata"]
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
            },
            "type": type_,
            "reason": reason,
            "message": message,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self.core.create_namespaced_event(meta["namespace"], event, _request_timeout=self.timeout)

    def list_unlearning_jobs(self, namespaces: list[str] | None) -> list[dict[str, Any]]:
        """Every UnlearningJob in `namespaces` (None: in the whole cluster)."""
        if namespaces is None:
            responses = [
                self.custom.list_cluster_custom_object(
                    GROUP, VERSION, PLURAL, _preload_content=False, _request_timeout=self.timeout
                )
            ]
        else:
            responses = [
                self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, _preload_content=False, _request_timeout=self.timeout
                )
                for namespace in namespaces
            ]
        return [item for response in responses for item in self._data(response).get("items", [])]

    def _kueue_version(self) -> str | None:
        """The served version Kueue prefers for its API group, or None where Kueue is not installed. Asked each
        time (discovery, granted to every user): Kueue may be installed or upgraded while the operator runs."""
        for group in self.apis.get_api_versions(_request_timeout=self.timeout).groups:
            if group.name == KUEUE_GROUP:
                return group.preferred_version.version
        return None

    def set_workload_active(self, namespace: str, job_uid: str, active: bool) -> None:
        """Set `spec.active` of the Kueue Workload of a Job, Kueue's own way to stop and resume an admitted job
        (Kueue then suspends or unsuspends the Job). Nothing happens where no such Workload exists (yet)."""
        version = self._kueue_version()
        if version is None:
            return
        workloads = self._data(
            self.custom.list_namespaced_custom_object(
                KUEUE_GROUP,
                version,
                namespace,
                "workloads",
                label_selector=f"{KUEUE_GROUP}/job-uid={job_uid}",
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        ).get("items", [])
        for workload in workloads:
            if (workload.get("spec") or {}).get("active", True) != active:
                self.custom.patch_namespaced_custom_object(
                    KUEUE_GROUP,
                    version,
                    namespace,
                    "workloads",
                    workload["metadata"]["name"],
                    {"spec": {"active": active}},
                    _request_timeout=self.timeout,
                )

    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], *, resource_version: str | None = None
    ) -> None:
        """Merge `status` in. With `resource_version`, only if the object is still at that version: a decision
        taken on a stale read raises StaleError instead of overwriting a newer one."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, body, _request_timeout=self.timeout
            )
        except ApiException as exc:
            if exc.status == 409 and resource_version:
                raise StaleError(f"UnlearningJob {namespace}/{name} changed since it was read") from None
            raise
