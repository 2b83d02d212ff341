"""Play the kubelet and the Job controller on this machine: every pod of a Job in the API server runs as a
local process, with the pod's environment, volumes and network mapped onto the host.

What is mapped, and how:
- env: plain values as written; `fieldRef` from the pod's metadata; `secretKeyRef` from the Secret in the API
  server. Nothing is inherited from the test process except PATH (to find the venv's `torchrun`) and the
  node-level variables the test passes (OMP_NUM_THREADS), so the pod must carry everything it needs.
- volumes: each pod gets its own folder per volume; a configMap volume holds the ConfigMap's keys as files,
  an emptyDir starts empty; the container's paths in its arguments and env values are rewritten to them, and
  so is its terminationMessagePath.
- network: `<hostname>.<subdomain>` of a pod in the same Job resolves to 127.0.0.1 when a headless Service of
  that name selects the pod, as cluster DNS would answer. Pods share one host here instead of having an IP
  each, so every Job gets its own free host port for each container port.
- the Job controller: one pod per completion index at once (parallelism = completions); Complete when every
  index succeeded. At the first failed pod (backoffLimit 0; reason PodFailurePolicy when its exit code matches
  a FailJob rule) it sets FailureTarget and stops the other pods: SIGTERM to the main process (PID 1 of a
  container), SIGKILL to all processes after the pod's terminationGracePeriodSeconds (10 s if unset); once
  none runs it sets Failed, as Kubernetes 1.31 and later do. When a container's main process exits, the rest
  of its processes are killed, as the container runtime does.
  A deleted Job's pods are stopped and deleted, as garbage collection would.
- the kubelet's termination message: the file's content, or the log tail when the container failed without
  writing one and the policy is FallbackToLogsOnError.

Not played: resource requests, securityContext, readiness, suspending a running Job, pod retries
(backoffLimit > 0) and podFailurePolicy's Ignore rule; the operator's own tests cover those transitions.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from tests.operator.harness import NAMESPACE, Cluster
from tests.servers import free_port

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
JOB_NAME = "batch.kubernetes.io/job-name"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
LOG_TAIL_BYTES = 2048
_FIELD = re.compile(r"^metadata\.(annotations|labels)\['([^']+)'\]$")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class LocalPod:
    name: str
    index: int
    container: str
    process: subprocess.Popen[bytes]
    folder: Path
    log: Path
    termination_log: Path
    fallback_to_logs: bool
    grace_seconds: float
    reported: bool = False
    kill_at: float | None = None
    reaped: bool = False

    def exit_code(self) -> int | None:
        code = self.process.poll()
        if code is None:
            return None
        return code if code >= 0 else 128 - code

    def termination_message(self, exit_code: int) -> str:
        if self.termination_log.exists() and self.termination_log.stat().st_size:
            return self.termination_log.read_text()[-4096:]
        if exit_code != 0 and self.fallback_to_logs and self.log.exists():
            return self.log.read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace")
        return ""

    def terminate(self) -> None:
        """SIGTERM to the container's main process now, SIGKILL to all its processes after the grace period."""
        if self.process.poll() is None and self.kill_at is None:
            self.process.send_signal(signal.SIGTERM)
            self.kill_at = time.monotonic() + self.grace_seconds

    def enforce_grace_period(self) -> None:
        if self.kill_at is not None and time.monotonic() >= self.kill_at:
            self.reap()

    def reap(self) -> None:
        """SIGKILL to every process left in the container, as the runtime does once its main process is gone."""
        if not self.reaped:
            self.reaped = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def kill_now(self) -> None:
        self.reap()
        self.process.wait()


@dataclass
class LocalJob:
    name: str
    body: dict[str, Any]
    pods: list[LocalPod] = field(default_factory=list)
    state: str = "Running"
    """Running, Failing (a pod failed, the others are stopping), Failed or Complete."""
    deleted: bool = False
    failure: dict[str, str] = field(default_factory=dict)
    """The body of the FailureTarget and Failed conditions, once a pod failed."""


class LocalKubelet:
    """Runs the pods of every Job the API server holds; `run()` is the reconcile loop."""

    def __init__(
        self,
        cluster: Cluster,
        root: Path,
        *,
        node_env: dict[str, str] | None = None,
        grace_seconds: float = 10.0,
        interval: float = 0.2,
    ) -> None:
        self.cluster = cluster
        self.root = root
        self.node_env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.node_env |= node_env or {}
        self.grace_seconds = grace_seconds
        self.interval = interval
        self.jobs: dict[str, LocalJob] = {}
        self.error: BaseException | None = None

    # ----- the loop -----------------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                await self.sync()
                await asyncio.sleep(self.interval)
        except Exception as exc:
            self.error = exc
            raise

    def check(self) -> bool:
        """Raise what stopped the loop, if anything did; for use inside `eventually` conditions."""
        if self.error is not None:
            raise AssertionError(f"the local kubelet stopped: {self.error!r}") from self.error
        return True

    async def sync(self) -> None:
        listed = await self.cluster.request("GET", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs")
        live = {job["metadata"]["uid"]: job for job in listed.get("items", [])}
        for uid, body in live.items():
            if uid not in self.jobs and not body["spec"].get("suspend"):
                await self._start(uid, body)
        for uid, job in list(self.jobs.items()):
            if uid not in live and not job.deleted:
                await self._collect_garbage(job)
            for pod in job.pods:
                pod.enforce_grace_period()
            if not job.deleted:
                await self._report(job)

    def job(self, name: str) -> LocalJob:
        """The newest Job of that name that this kubelet ran."""
        return [job for job in self.jobs.values() if job.name == name][-1]

    def stop(self) -> None:
        """Kill every process this kubelet started (the end of a test)."""
        for job in self.jobs.values():
            for pod in job.pods:
                pod.kill_now()

    # ----- starting pods ------------------------------------------------------------------------------------

    async def _start(self, uid: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        spec = body["spec"]
        template = spec["template"]
        job = self.jobs[uid] = LocalJob(name=name, body=body)
        ports = {
            port["containerPort"]: free_port()
            for container in template["spec"]["containers"]
            for port in container.get("ports", [])
        }
        hosts = await self._resolvable_hosts(body)
        try:
            for index in range(spec.get("completions", 1)):
                job.pods.append(await self._start_pod(body, index, ports, hosts))
        except BaseException:
            for pod in job.pods:
                pod.kill_now()
            raise
        await self._job_status(name, {"active": len(job.pods), "ready": len(job.pods), "startTime": _now()})

    async def _resolvable_hosts(self, body: dict[str, Any]) -> dict[str, str]:
        """`<job>-<index>.<subdomain>` → 127.0.0.1 for every pod, if a headless Service selects the pods."""
        template = body["spec"]["template"]
        subdomain = template["spec"].get("subdomain")
        if not subdomain:
            return {}
        service = await self.cluster.request(
            "GET", f"/api/v1/namespaces/{NAMESPACE}/services/{subdomain}", missing_ok=True
        )
        if service is None or service["spec"].get("clusterIP") != "None":
            return {}
        labels = template["metadata"].get("labels", {})
        if not service["spec"].get("selector", {}).items() <= labels.items():
            return {}
        name = body["metadata"]["name"]
        return {f"{name}-{index}.{subdomain}": "127.0.0.1" for index in range(body["spec"].get("completions", 1))}

    async def _start_pod(
        self, body: dict[str, Any], index: int, ports: dict[int, int], hosts: dict[str, str]
    ) -> LocalPod:
        job_name = body["metadata"]["name"]
        template = body["spec"]["template"]
        pod_name = f"{job_name}-{index}-{uuid.uuid4().hex[:5]}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": NAMESPACE,
                "labels": template["metadata"].get("labels", {}) | {JOB_NAME: job_name, COMPLETION_INDEX: str(index)},
                "annotations": {COMPLETION_INDEX: str(index)},
                "ownerReferences": [
                    {"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": body["metadata"].get("uid", "")}
                ],
            },
            "spec": template["spec"] | {"hostname": f"{job_name}-{index}"},
        }
        await self.cluster.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", pod)
        folder = self.root / pod_name
        container = pod["spec"]["containers"][0]
        mounts = await self._mount_volumes(pod, container, folder)
        termination_path = container.get("terminationMessagePath", DEFAULT_TERMINATION_PATH)
        mounts[termination_path] = folder / "termination-log"

        def localize(value: str) -> str:
            for path in sorted(mounts, key=len, reverse=True):
                if value == path or value.startswith(path.rstrip("/") + "/"):
                    return str(mounts[path]) + value[len(path) :]
            if value in hosts:
                return hosts[value]
            if value.isdigit() and int(value) in ports:
                return str(ports[int(value)])
            return value

        env = self.node_env | {key: localize(value) for key, value in (await self._env(pod, container)).items()}
        command = [localize(arg) for arg in container.get("command", []) + container.get("args", [])]
        log = folder / "container.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(
                command,
                env=env,
                cwd=folder,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        running = {"name": container["name"], "ready": True, "state": {"running": {"startedAt": _now()}}}
        await self._pod_status(pod_name, {"phase": "Running", "containerStatuses": [running]})
        return LocalPod(
            name=pod_name,
            index=index,
            container=container["name"],
            process=process,
            folder=folder,
            log=log,
            termination_log=mounts[termination_path],
            fallback_to_logs=container.get("terminationMessagePolicy") == "FallbackToLogsOnError",
            grace_seconds=float(pod["spec"].get("terminationGracePeriodSeconds", self.grace_seconds)),
        )

    async def _mount_volumes(self, pod: dict[str, Any], container: dict[str, Any], folder: Path) -> dict[str, Path]:
        volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes", [])}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            local = folder / "volumes" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                name = volume["configMap"]["name"]
                configmap = await self.cluster.request("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps/{name}")
                for key, text in configmap.get("data", {}).items():
                    (local / key).write_text(text)
            elif "emptyDir" not in volume:
                raise AssertionError(f"volume {mount['name']}: only configMap and emptyDir volumes are played here")
            mounts[mount["mountPath"]] = local
        return mounts

    async def _env(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for item in container.get("env", []):
            source = item.get("valueFrom")
            if source is None:
                env[item["name"]] = item.get("value", "")
            elif "fieldRef" in source:
                env[item["name"]] = _field(pod, source["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = await self.cluster.request(
                    "GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/{ref['name']}", missing_ok=True
                )
                data = (secret or {}).get("data", {})
                if ref["key"] in data:
                    env[item["name"]] = base64.b64decode(data[ref["key"]]).decode()
                elif not ref.get("optional"):
                    raise AssertionError(
                        f"CreateContainerConfigError: secret {ref['name']!r} has no key {ref['key']!r}"
                    )
            else:
                raise AssertionError(f"env {item['name']}: unsupported valueFrom {sorted(source)}")
        return env

    # ----- reporting exits ----------------------------------------------------------------------------------

    async def _report(self, job: LocalJob) -> None:
        """Pod statuses first, then the Job status, in the order the real controllers write them."""
        newly_failed = []
        for pod in job.pods:
            code = pod.exit_code()
            if code is None or pod.reported:
                continue
            pod.reported = True
            pod.reap()
            terminated = {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "message": pod.termination_message(code),
                "finishedAt": _now(),
            }
            status = {"name": pod.container, "ready": False, "state": {"terminated": terminated}}
            phase = "Succeeded" if code == 0 else "Failed"
            await self._pod_status(pod.name, {"phase": phase, "containerStatuses": [status]})
            if code != 0:
                newly_failed.append(code)
        active = sum(pod.exit_code() is None for pod in job.pods)
        succeeded = sum(pod.reported and pod.exit_code() == 0 for pod in job.pods)
        failed = sum(pod.reported and pod.exit_code() != 0 for pod in job.pods)
        counts = {"active": active, "failed": failed, "succeeded": succeeded}
        if job.state == "Running" and newly_failed:
            job.state = "Failing"
            reason = "PodFailurePolicy" if _fails_job(job.body, newly_failed[0]) else "BackoffLimitExceeded"
            for pod in job.pods:
                pod.terminate()
            job.failure = {"status": "True", "reason": reason, "lastTransitionTime": _now()}
            await self._job_status(job.name, counts | {"conditions": [job.failure | {"type": "FailureTarget"}]})
        if job.state == "Failing" and active == 0:
            job.state = "Failed"
            conditions = [job.failure | {"type": "FailureTarget"}, job.failure | {"type": "Failed"}]
            await self._job_status(job.name, counts | {"conditions": conditions})
        elif job.state == "Running" and succeeded == len(job.pods):
            job.state = "Complete"
            conditions = [
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": _now()},
                {"type": "Complete", "status": "True", "lastTransitionTime": _now()},
            ]
            await self._job_status(
                job.name, {"active": 0, "succeeded": succeeded, "completionTime": _now(), "conditions": conditions}
            )

    async def _collect_garbage(self, job: LocalJob) -> None:
        job.deleted = True
        for pod in job.pods:
            pod.terminate()
            await self.cluster.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod.name}", missing_ok=True)

    async def _pod_status(self, name: str, status: dict[str, Any]) -> None:
        path = f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/status"
        await self.cluster.request("PATCH", path, {"status": status}, "application/merge-patch+json", missing_ok=True)

    async def _job_status(self, name: str, status: dict[str, Any]) -> None:
        await self.cluster.set_job_status(name, status)

    # ----- what a test does to a node -----------------------------------------------------------------------

    def pod(self, job: str, index: int) -> LocalPod:
        return next(pod for pod in self.job(job).pods if pod.index == index)

    def evict(self, job: str, index: int) -> None:
        """What the kubelet does on preemption or a node drain."""
        self.pod(job, index).terminate()

    def kill_workers(self, job: str, index: int) -> list[int]:
        """SIGKILL the trainer processes under pod `index`'s torchrun, as the kernel's OOM killer would."""
        agent = psutil.Process(self.pod(job, index).process.pid)
        workers = agent.children(recursive=True)
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
        return [worker.pid for worker in workers]


def _field(pod: dict[str, Any], path: str) -> str:
    meta = pod["metadata"]
    if path in ("metadata.name", "metadata.namespace"):
        return meta[path.split(".")[1]]
    match = _FIELD.match(path)
    if match is None:
        raise AssertionError(f"fieldRef {path}: not played here")
    return meta.get(match.group(1), {}).get(match.group(2), "")


def _fails_job(body: dict[str, Any], exit_code: int) -> bool:
    rules = ((body["spec"].get("podFailurePolicy") or {}).get("rules")) or []
    for rule in rules:
        codes = rule.get("onExitCodes")
        if rule.get("action") == "FailJob" and codes and (exit_code in codes["values"]) == (codes["operator"] == "In"):
            return True
    return False


@contextlib.asynccontextmanager
async def running_kubelet(cluster: Cluster, root: Path, **options: Any) -> AsyncIterator[LocalKubelet]:
    kubelet = LocalKubelet(cluster, root, **options)
    task = asyncio.create_task(kubelet.run())
    try:
        yield kubelet
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=15)
        kubelet.stop()
    kubelet.check()
