"""Run the real kopf operator against kmock's Kubernetes API emulator over HTTP, and play the Job controller.

kmock keeps objects in memory but sets no resourceVersion, uid, generation or creationTimestamp, and turns a
failed JSON-patch `test` into a 500. `VersionedEmulator` adds those, as a real API server would, so kopf can
tell fresh events from stale ones (see the project's testing notes).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from typing import Any

import aiohttp
import attrs
import jsonpatch
import kmock
import kopf
import kubernetes

from unlearning_operator.handlers import build_registry
from unlearning_operator.k8s import Kubernetes
from unlearning_operator.settings import Settings

NAMESPACE = "default"
RESOURCE = "unlearning.dev/v1alpha1/unlearningjobs"
_VERSIONS = itertools.count(1)


@attrs.define(kw_only=True)
class VersionedEmulator(kmock.KubernetesEmulator):
    keep_requests: bool = True
    """Whether the request log keeps handled requests. kmock matches every request against its whole log, once
    per built-in reaction, which makes a long run quadratic; tests that inspect the requests keep them all."""
    watches: list[str] = attrs.field(factory=list)
    """URLs of every watch request, kept even when the log is not."""

    async def _handle(self, request: Any) -> Any:
        try:
            return await self._versioned(request)
        finally:
            if not self.keep_requests:
                self._requests[:] = [kept for kept in self._requests if kept is not request]

    async def _versioned(self, request: Any) -> Any:
        if "watch" in request.params:
            self.watches.append(str(request.url))
        if request.resource is not None and request.action in (kmock.action.CREATE, kmock.action.UPDATE):
            version = str(next(_VERSIONS))
            if isinstance(request.data, dict):
                meta = request.data.setdefault("metadata", {})
                meta["resourceVersion"] = version
                if request.action == kmock.action.CREATE:
                    meta.setdefault("uid", str(uuid.uuid4()))
                    meta.setdefault("generation", 1)
                    meta.setdefault("creationTimestamp", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
                    if "name" not in meta and "generateName" in meta:
                        meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                elif "spec" in request.data and request.subresource is None:
                    key = (request.resource, request.namespace, request.name)
                    if key in self.objects:
                        current = self.objects[key].get("metadata", {}).get("generation", 1)
                        meta["generation"] = current + 1
            elif isinstance(request.data, list):
                request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None


@attrs.define(kw_only=True)
class LeanEmulator(VersionedEmulator):
    """Forgets each request once it is answered: for tests and benchmarks that never read the request log."""

    keep_requests: bool = False


def declare_resources(emulator: kmock.KubernetesEmulator) -> None:
    emulator.resources.load_bundled()
    emulator.resources[RESOURCE] = kmock.ResourceInfo(
        kind="UnlearningJob",
        singular="unlearningjob",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "patch", "delete"},
        subresources={"status"},
    )


def api_client(emulator: kmock.KubernetesEmulator) -> kubernetes.client.ApiClient:
    configuration = kubernetes.client.Configuration()
    configuration.host = str(emulator.url).rstrip("/")
    return kubernetes.client.ApiClient(configuration)


@contextlib.asynccontextmanager
async def running_operator(
    emulator: VersionedEmulator, settings: Settings | None = None, *, namespaces: list[str] | None = None
) -> AsyncIterator[None]:
    """Start the operator in this event loop (in the test body: kopf cancels tasks created after it), for
    `namespaces` as the namespaced chart runs it, or cluster-wide."""
    settings = settings or Settings(progress_poll_seconds=0.5)
    kube = Kubernetes(api_client(emulator), timeout_seconds=5)
    registry = build_registry(settings, kube, namespaces=namespaces, server=str(emulator.url).rstrip("/"))
    ready = asyncio.Event()
    task = asyncio.create_task(
        kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=namespaces is None,
            namespaces=namespaces or [],
            ready_flag=ready,
        )
    )
    await asyncio.wait_for(ready.wait(), timeout=20)
    await _watching(emulator, ("/unlearningjobs?", "/jobs?"))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=15)


async def _watching(emulator: VersionedEmulator, paths: tuple[str, ...], timeout: float = 20) -> None:
    """Wait until kopf's watch streams are open: kmock drops events that happen while a watch is starting."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if all(any(path in url for url in emulator.watches) for path in paths):
            await asyncio.sleep(0.1)
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the operator never opened its watch streams")


def job_document(name: str, **spec_overrides: Any) -> dict[str, Any]:
    spec = {
        "model": {"uri": "s3://models/ddpm-digits"},
        "data": {"forget": {"uri": "s3://datasets/forget/"}, "retain": {"uri": "s3://datasets/retain/"}},
        "training": {"steps": 100, "batchSize": 8},
        "output": {"uri": f"s3://models/{name}-out"},
        "storage": {"credentialsSecret": "s3-credentials"},
    } | spec_overrides
    return {
        "apiVersion": "unlearning.dev/v1alpha1",
        "kind": "UnlearningJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


class Cluster:
    """HTTP calls against the emulator, as kubectl and the Job controller would make them."""

    def __init__(self, emulator: kmock.KubernetesEmulator) -> None:
        self.emulator = emulator

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json", missing_ok: bool = False
    ) -> Any:
        """A fresh HTTP session per call: stopping kopf cancels every task created after it started."""
        url = str(self.emulator.url).rstrip("/") + path
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, url, json=body, headers={"Content-Type": content_type}) as response,
        ):
            if response.status == 404 and missing_ok:
                return None
            if response.status >= 400:
                raise AssertionError(f"{method} {path}: {response.status} {await response.text()}")
            return await response.json(content_type=None)

    async def apply(self, document: dict[str, Any]) -> None:
        await self.request("POST", f"/apis/unlearning.dev/v1alpha1/namespaces/{NAMESPACE}/unlearningjobs", document)

    async def patch_job_resource(self, name: str, patch: dict[str, Any]) -> None:
        path = f"/apis/unlearning.dev/v1alpha1/namespaces/{NAMESPACE}/unlearningjobs/{name}"
        await self.request("PATCH", path, patch, "application/merge-patch+json")

    async def delete(self, name: str) -> None:
        await self.request("DELETE", f"/apis/unlearning.dev/v1alpha1/namespaces/{NAMESPACE}/unlearningjobs/{name}")

    def _find(self, plural: str, name: str) -> dict[str, Any] | None:
        for (resource, namespace, object_name), obj in self.emulator.objects.items():
            if resource.plural == plural and namespace == NAMESPACE and object_name == name and not obj.deleted:
                return dict(obj.raw)
        return None

    def get(self, name: str) -> dict[str, Any] | None:
        return self._find("unlearningjobs", name)

    def status(self, name: str) -> dict[str, Any]:
        return (self.get(name) or {}).get("status") or {}

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type_), None)

    def children(self, plural: str) -> list[dict[str, Any]]:
        return [
            dict(obj.raw) for key, obj in self.emulator.objects.items() if key[0].plural == plural and not obj.deleted
        ]

    def job(self, name: str) -> dict[str, Any] | None:
        return self._find("jobs", name)

    async def set_job_status(self, name: str, status: dict[str, Any]) -> None:
        """Play the Job controller. A Job the operator already deleted (it saw a failed pod first) is fine."""
        path = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{name}/status"
        await self.request("PATCH", path, {"status": status}, "application/merge-patch+json", missing_ok=True)

    async def add_pod(self, job: str, index: int, terminated: dict[str, Any] | None = None) -> None:
        """Play the kubelet: a pod of `job`, optionally with a terminated trainer container."""
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{job}-{index}-abcde",
                "namespace": NAMESPACE,
                "labels": {"batch.kubernetes.io/job-name": job, "batch.kubernetes.io/job-completion-index": str(index)},
            },
            "spec": {"containers": [{"name": "trainer", "image": "trainer"}]},
        }
        await self.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", pod)
        if terminated is not None:
            status = {"containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}]}
            await self.request(
                "PATCH",
                f"/api/v1/namespaces/{NAMESPACE}/pods/{job}-{index}-abcde/status",
                {"status": status},
                "application/merge-patch+json",
            )

    def events(self, reason: str | None = None) -> list[dict[str, Any]]:
        found = self.children("events")
        return [e for e in found if reason is None or e.get("reason") == reason]


async def eventually(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll until `check()` is truthy (the operator reacts asynchronously)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
