"""Play the node, and only the node: everything else is the real control plane.

`LocalNode` registers a Node object, binds pending pods that fit it through the `pods/binding` subresource (the
scheduler's only act that matters here), runs each pod's container as a local process and writes the pod's
status through the `pods/status` subresource, as a kubelet would. The Job, ReplicaSet, garbage-collector, TTL
and namespace controllers, admission and RBAC are the real ones.

How a pod becomes a process:
- image: the node has "pulled" the images in `IMAGES` (repository → entrypoint and default arguments, as in the
  project's Dockerfiles); another image leaves the container waiting with ErrImagePull. Command and arguments
  follow Kubernetes' rules (command replaces the entrypoint, args replace the default arguments).
- env: plain values; `fieldRef` from the pod; `secretKeyRef` and `configMapKeyRef` read from the API server (a
  missing one leaves the container waiting with CreateContainerConfigError, retried). Nothing is inherited from
  the test process but PATH (the virtual environment first) and the node-level variables the test passes.
- volumes: a folder per volume and pod; configMap and secret volumes hold their keys as files, emptyDir starts
  empty. Paths under a mount point in the arguments and env values are rewritten to those folders, and so is
  the terminationMessagePath.
- the ServiceAccount token: when admission gave the pod a projected token volume, the node asks the TokenRequest
  API for a token bound to the pod and hands it over as a kubeconfig (KUBECONFIG), since the in-cluster paths
  under /var/run/secrets are fixed and shared by every process here.
- network: pods share this host, so each container port gets a free host port per Job (per pod otherwise), and
  `<hostname>.<subdomain>` resolves to 127.0.0.1 when a headless Service of that name selects the pod, as cluster
  DNS would answer.
- lifecycle: Running and Ready once started (probes are not run); on exit the container's main process's code
  and termination message (the file, or the log tail under FallbackToLogsOnError), and the rest of its
  processes are killed, as a container runtime does; `restartPolicy: Always` restarts the container. A pod
  that is being deleted gets SIGTERM, SIGKILL after its grace period, a terminal status and then the final
  delete with grace period 0.
- scheduling: a pod is bound when its nodeSelector matches the node's labels and its tolerations tolerate the
  node's NoSchedule taints; affinity and resource requests are not checked.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from tests.cluster.api import Api, ApiError
from tests.cluster.control_plane import write_kubeconfig
from tests.servers import free_port

NODE_NAME = "node-1"
JOB_NAME = "batch.kubernetes.io/job-name"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
MAX_TERMINATION_MESSAGE = 4096
LOG_TAIL_BYTES, LOG_TAIL_LINES = 2048, 80
TOKEN_SECONDS = 3600


@dataclass(frozen=True)
class Image:
    entrypoint: list[str]
    cmd: list[str] = field(default_factory=list)


IMAGES = {
    "ghcr.io/unlearning-dev/unlearning-operator": Image(
        ["unlearn"], ["operator", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]
    ),
    "ghcr.io/unlearning-dev/unlearning-trainer": Image(["unlearn"], ["--help"]),
}
"""What `operator/Dockerfile` and `trainer/Dockerfile` set as ENTRYPOINT and CMD."""

_FIELD = re.compile(r"^metadata\.(annotations|labels)\['([^']+)'\]$")


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ContainerConfigError(Exception):
    """The container cannot start yet (a missing Secret key, an image the node does not have)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class LocalPod:
    namespace: str
    name: str
    uid: str
    body: dict[str, Any]
    folder: Path
    process: subprocess.Popen[bytes] | None = None
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    termination_log: Path | None = None
    started_at: str = ""
    restarts: int = 0
    kill_at: float | None = None
    reaped: bool = False
    finished: bool = False
    deleted: bool = False

    @property
    def container(self) -> dict[str, Any]:
        return self.body["spec"]["containers"][0]

    def exit_code(self) -> int | None:
        if self.process is None:
            return None
        code = self.process.poll()
        if code is None:
            return None
        return code if code >= 0 else 128 - code

    def termination_message(self, exit_code: int) -> str:
        if self.termination_log and self.termination_log.exists() and self.termination_log.stat().st_size:
            return self.termination_log.read_text(errors="replace")[-MAX_TERMINATION_MESSAGE:]
        fallback = self.container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        if exit_code != 0 and fallback and self.log and self.log.exists():
            tail = self.log.read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace")
            return "\n".join(tail.splitlines()[-LOG_TAIL_LINES:])
        return ""

    def terminate(self, grace_seconds: float) -> None:
        """SIGTERM to the container's main process now, SIGKILL to all its processes after the grace period."""
        if self.process is not None and self.process.poll() is None and self.kill_at is None:
            self.process.send_signal(signal.SIGTERM)
            self.kill_at = time.monotonic() + grace_seconds

    def enforce_grace_period(self) -> None:
        if self.kill_at is not None and time.monotonic() >= self.kill_at:
            self.reap()

    def reap(self) -> None:
        """SIGKILL to every process left in the container, as the runtime does once its main process is gone."""
        if self.process is not None and not self.reaped:
            self.reaped = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def kill_now(self) -> None:
        self.reap()
        if self.process is not None:
            self.process.wait()

    def log_tail(self, size: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log and self.log.exists() else ""


class LocalNode:
    def __init__(
        self,
        api: Api,
        root: Path,
        *,
        name: str = NODE_NAME,
        labels: dict[str, str] | None = None,
        taints: list[dict[str, str]] | None = None,
        node_env: dict[str, str] | None = None,
        stand_in: list[str] | None = None,
        interval: float = 0.2,
    ) -> None:
        """`stand_in`: run this command in the containers of Job pods instead of theirs (a load benchmark
        measures the control path, not fifty trainings)."""
        self.api = api
        self.root = root
        self.name = name
        self.labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"} | (labels or {})
        self.taints = taints or []
        self.node_env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.node_env |= node_env or {}
        self.stand_in = stand_in
        self.interval = interval
        self.pods: dict[str, LocalPod] = {}
        self.ports: dict[str, dict[int, int]] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----- registration and the loop ------------------------------------------------------------------------

    def register(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": self.labels},
            "spec": {"taints": self.taints},
        }
        self.api.create("/api/v1/nodes", node)
        capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "nvidia.com/gpu": "8"}
        status = {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "played by tests/cluster/node.py",
                    "lastHeartbeatTime": now(),
                    "lastTransitionTime": now(),
                }
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.name}],
            "nodeInfo": {
                "machineID": "local",
                "systemUUID": "local",
                "bootID": "local",
                "kernelVersion": os.uname().release,
                "osImage": "local processes",
                "containerRuntimeVersion": "local://1",
                "kubeletVersion": "v1.37.2",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        self.api.merge_patch(f"/api/v1/nodes/{self.name}/status", {"status": status})

    def start(self) -> None:
        self.register()
        self._thread = threading.Thread(target=self._run, name=f"node {self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as exc:
                self.error = exc
                return
            self._stop.wait(self.interval)

    def stop(self) -> None:
        """Stop the loop and kill every process this node started."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for pod in self.pods.values():
            pod.kill_now()

    def check(self) -> bool:
        """Raise what stopped the loop, if anything did; for use inside `eventually` conditions."""
        if self.error is not None:
            raise AssertionError(f"the local node stopped: {self.error!r}") from self.error
        return True

    def sync(self) -> None:
        live = {pod["metadata"]["uid"]: pod for pod in self.api.items("/api/v1/pods")}
        for uid, body in live.items():
            spec = body["spec"]
            if not spec.get("nodeName"):
                if self.fits(body) and not body["metadata"].get("deletionTimestamp"):
                    self._bind(body)
                continue
            if spec["nodeName"] != self.name:
                continue
            local = self.pods.get(uid)
            if body["metadata"].get("deletionTimestamp"):
                self._terminating(body, local)
            elif local is None or (local.process is None and not local.finished):
                self._start(body, local)
        for uid, pod in self.pods.items():
            pod.enforce_grace_period()
            if uid not in live:
                pod.deleted = True
                pod.kill_now()
            elif not pod.finished and not pod.deleted:
                self._watch_exit(pod)

    # ----- scheduling -----------------------------------------------------------------------------------------

    def fits(self, pod: dict[str, Any]) -> bool:
        spec = pod["spec"]
        if not (spec.get("nodeSelector") or {}).items() <= self.labels.items():
            return False
        tolerations = spec.get("tolerations") or []
        return all(
            any(_tolerates(toleration, taint) for toleration in tolerations)
            for taint in self.taints
            if taint.get("effect") in ("NoSchedule", "NoExecute")
        )

    def _bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.name},
        }
        try:
            self.api.request("POST", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding", binding)
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise

    # ----- starting a container -------------------------------------------------------------------------------

    def _start(self, body: dict[str, Any], local: LocalPod | None) -> None:
        meta = body["metadata"]
        if local is None:
            folder = self.root / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"
            local = self.pods[meta["uid"]] = LocalPod(meta["namespace"], meta["name"], meta["uid"], body, folder)
        if len(body["spec"]["containers"]) != 1 or body["spec"].get("initContainers"):
            raise AssertionError(f"pod {meta['name']}: the local node runs exactly one container per pod")
        try:
            self._launch(local)
        except ContainerConfigError as exc:
            waiting = {"waiting": {"reason": exc.reason, "message": str(exc)}}
            self._pod_status(local, "Pending", self._container_status(local, waiting, ready=False))

    def _launch(self, pod: LocalPod) -> None:
        body, container = pod.body, pod.container
        pod.folder.mkdir(parents=True, exist_ok=True)
        image = _image(container["image"])
        mounts = self._mount_volumes(pod)
        termination_path = container.get("terminationMessagePath", DEFAULT_TERMINATION_PATH)
        mounts[termination_path] = pod.folder / "termination-log"
        ports = self._host_ports(body)
        hosts = self._resolvable_hosts(body)

        def localize(value: str) -> str:
            for path in sorted(mounts, key=len, reverse=True):
                if value == path or value.startswith(path.rstrip("/") + "/"):
                    return str(mounts[path]) + value[len(path) :]
            if value in hosts:
                return hosts[value]
            if value.isdigit() and int(value) in ports:
                return str(ports[int(value)])
            for port, host_port in ports.items():
                value = re.sub(rf":{port}\b", f":{host_port}", value)
            return value

        env = {name: localize(value) for name, value in self._env(body, container).items()}
        token = self._service_account_kubeconfig(pod)
        if token is not None:
            env["KUBECONFIG"] = str(token)
        command = container.get("command") or image.entrypoint
        args = container.get("args") if (container.get("command") or container.get("args")) else image.cmd
        pod.command = [localize(arg) for arg in [*command, *(args or [])]]
        if self.stand_in is not None and JOB_NAME in (body["metadata"].get("labels") or {}):
            pod.command = list(self.stand_in)
        pod.env = self.node_env | env
        pod.termination_log = mounts[termination_path]
        pod.termination_log.unlink(missing_ok=True)
        pod.log = pod.folder / "container.log"
        with pod.log.open("ab") as handle:
            pod.process = subprocess.Popen(
                pod.command,
                env=pod.env,
                cwd=pod.folder,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pod.started_at, pod.reaped, pod.kill_at = now(), False, None
        running = self._container_status(pod, {"running": {"startedAt": pod.started_at}}, ready=True)
        self._pod_status(pod, "Running", running, ready=True)

    def _host_ports(self, body: dict[str, Any]) -> dict[int, int]:
        """Container port → host port, shared by the pods of one Job (they reach each other on it)."""
        owners = [ref for ref in body["metadata"].get("ownerReferences") or [] if ref.get("kind") == "Job"]
        key = owners[0]["uid"] if owners else body["metadata"]["uid"]
        if key not in self.ports:
            self.ports[key] = {
                port["containerPort"]: free_port()
                for container in body["spec"]["containers"]
                for port in container.get("ports", [])
            }
        return self.ports[key]

    def _resolvable_hosts(self, body: dict[str, Any]) -> dict[str, str]:
        """`<hostname>.<subdomain>` → 127.0.0.1 for every pod that a headless Service of that name selects."""
        subdomain = body["spec"].get("subdomain")
        namespace = body["metadata"]["namespace"]
        if not subdomain:
            return {}
        service = self.api.get(f"/api/v1/namespaces/{namespace}/services/{subdomain}", missing_ok=True)
        if service is None or service["spec"].get("clusterIP") != "None":
            return {}
        selector = service["spec"].get("selector") or {}
        hosts = {}
        for pod in self.api.items(f"/api/v1/namespaces/{namespace}/pods"):
            labels = pod["metadata"].get("labels") or {}
            hostname = pod["spec"].get("hostname")
            if hostname and pod["spec"].get("subdomain") == subdomain and selector.items() <= labels.items():
                hosts[f"{hostname}.{subdomain}"] = "127.0.0.1"
        return hosts

    def _mount_volumes(self, pod: LocalPod) -> dict[str, Path]:
        volumes = {volume["name"]: volume for volume in pod.body["spec"].get("volumes", [])}
        mounts: dict[str, Path] = {}
        for mount in pod.container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "projected" in volume:
                continue
            local = pod.folder / "volumes" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                data = self._object(pod.namespace, "configmaps", volume["configMap"]["name"]).get("data", {})
                for key, text in data.items():
                    (local / key).write_text(text)
            elif "secret" in volume:
                data = self._object(pod.namespace, "secrets", volume["secret"]["secretName"]).get("data", {})
                for key, value in data.items():
                    (local / key).write_bytes(base64.b64decode(value))
            elif "emptyDir" not in volume:
                raise AssertionError(f"volume {mount['name']}: only configMap, secret and emptyDir are played here")
            mounts[mount["mountPath"]] = local
        return mounts

    def _object(self, namespace: str, plural: str, name: str) -> dict[str, Any]:
        found = self.api.get(f"/api/v1/namespaces/{namespace}/{plural}/{name}", missing_ok=True)
        if found is None:
            kind = {"configmaps": "configmap", "secrets": "secret"}[plural]
            raise ContainerConfigError("CreateContainerConfigError", f'{kind} "{name}" not found')
        return found

    def _env(self, body: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        namespace = body["metadata"]["namespace"]
        env: dict[str, str] = {}
        for item in container.get("env", []):
            source = item.get("valueFrom")
            if source is None:
                env[item["name"]] = item.get("value", "")
            elif "fieldRef" in source:
                env[item["name"]] = _field(body, source["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in source or "configMapKeyRef" in source:
                secret = "secretKeyRef" in source
                ref = source["secretKeyRef" if secret else "configMapKeyRef"]
                plural = "secrets" if secret else "configmaps"
                try:
                    data = self._object(namespace, plural, ref["name"]).get("data", {})
                except ContainerConfigError:
                    if ref.get("optional"):
                        continue
                    raise
                if ref["key"] in data:
                    env[item["name"]] = base64.b64decode(data[ref["key"]]).decode() if secret else data[ref["key"]]
                elif not ref.get("optional"):
                    raise ContainerConfigError(
                        "CreateContainerConfigError", f"couldn't find key {ref['key']} in {plural[:-1]} {ref['name']}"
                    )
            else:
                raise AssertionError(f"env {item['name']}: unsupported valueFrom {sorted(source)}")
        return env

    def _service_account_kubeconfig(self, pod: LocalPod) -> Path | None:
        """A kubeconfig with a token bound to the pod, when admission gave it the projected token volume."""
        projected = [v for v in pod.body["spec"].get("volumes", []) if "projected" in v]
        wants_token = any("serviceAccountToken" in s for v in projected for s in v["projected"].get("sources", []))
        if not wants_token:
            return None
        account = pod.body["spec"].get("serviceAccountName", "default")
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": TOKEN_SECONDS,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "uid": pod.uid},
            },
        }
        path = f"/api/v1/namespaces/{pod.namespace}/serviceaccounts/{account}/token"
        token = self.api.request("POST", path, request)["status"]["token"]
        ca = pod.folder / "ca.crt"
        ca.write_bytes(self.api.ca.read_bytes())
        return write_kubeconfig(pod.folder / "kubeconfig", self.api.server, ca, {"token": token})

    # ----- reporting ------------------------------------------------------------------------------------------

    def _watch_exit(self, pod: LocalPod) -> None:
        code = pod.exit_code()
        if code is None:
            return
        pod.reap()
        terminated = self._terminated(pod, code)
        policy = pod.body["spec"].get("restartPolicy", "Always")
        if policy == "Always" or (policy == "OnFailure" and code != 0):
            pod.restarts += 1
            pod.process = None
            with contextlib.suppress(ContainerConfigError):
                self._launch(pod)
            return
        pod.finished = True
        status = self._container_status(pod, {"terminated": terminated}, ready=False)
        self._pod_status(pod, "Succeeded" if code == 0 else "Failed", status)

    def _terminating(self, body: dict[str, Any], pod: LocalPod | None) -> None:
        meta = body["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        if pod is not None and pod.process is not None and not pod.finished:
            grace = meta.get("deletionGracePeriodSeconds")
            if grace is None:
                grace = body["spec"].get("terminationGracePeriodSeconds", 30)
            pod.terminate(float(grace))
            code = pod.exit_code()
            if code is None:
                return
            pod.reap()
            pod.finished = True
            status = self._container_status(pod, {"terminated": self._terminated(pod, code)}, ready=False)
            self._pod_status(pod, "Succeeded" if code == 0 else "Failed", status)
        if pod is not None:
            if pod.deleted:
                return
            pod.deleted = True
        self.api.delete(path, {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0})

    def _terminated(self, pod: LocalPod, code: int) -> dict[str, Any]:
        return {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "message": pod.termination_message(code),
            "startedAt": pod.started_at,
            "finishedAt": now(),
            "containerID": f"local://{pod.process.pid if pod.process else 0}",
        }

    def _container_status(self, pod: LocalPod, state: dict[str, Any], *, ready: bool) -> dict[str, Any]:
        container = pod.container
        status = {
            "name": container["name"],
            "image": container["image"],
            "imageID": "",
            "ready": ready,
            "started": "running" in state,
            "restartCount": pod.restarts,
            "state": state,
        }
        if pod.process is not None:
            status["containerID"] = f"local://{pod.process.pid}"
        return status

    def _pod_status(self, pod: LocalPod, phase: str, container_status: dict[str, Any], *, ready: bool = False) -> None:
        value = "True" if ready else "False"
        conditions = [
            {"type": "Initialized", "status": "True", "lastTransitionTime": now()},
            {"type": "ContainersReady", "status": value, "lastTransitionTime": now()},
            {"type": "Ready", "status": value, "lastTransitionTime": now()},
        ]
        status = {
            "phase": phase,
            "conditions": conditions,
            "containerStatuses": [container_status],
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": pod.started_at or now(),
        }
        path = f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status"
        try:
            self.api.request("PATCH", path, {"status": status}, content_type="application/strategic-merge-patch+json")
        except ApiError as exc:
            if exc.status != 404:
                raise

    # ----- what a test does to a node -------------------------------------------------------------------------

    def pod(self, namespace: str, name_prefix: str) -> LocalPod:
        """The newest pod this node ran whose name starts with `name_prefix`."""
        found = [p for p in self.pods.values() if p.namespace == namespace and p.name.startswith(name_prefix)]
        if not found:
            raise AssertionError(f"the node ran no pod {namespace}/{name_prefix}*")
        return found[-1]

    def job_pods(self, namespace: str, job: str) -> list[LocalPod]:
        """The pods of a Job that this node ran, by completion index."""
        pods = [
            p
            for p in self.pods.values()
            if p.namespace == namespace and (p.body["metadata"].get("labels") or {}).get(JOB_NAME) == job
        ]
        return sorted(pods, key=lambda p: int(p.body["metadata"]["annotations"][COMPLETION_INDEX]))

    def kill_workers(self, pod: LocalPod) -> list[int]:
        """SIGKILL the processes under the container's main process, as the kernel's OOM killer would."""
        assert pod.process is not None
        workers = psutil.Process(pod.process.pid).children(recursive=True)
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
        return [worker.pid for worker in workers]

    def logs(self) -> str:
        return "\n".join(f"--- {p.namespace}/{p.name}\n{p.log_tail()}" for p in self.pods.values())


def _image(reference: str) -> Image:
    repository = reference.split("@", 1)[0]
    if ":" in repository.rsplit("/", 1)[-1]:
        repository = repository.rsplit(":", 1)[0]
    if repository not in IMAGES:
        raise ContainerConfigError("ErrImagePull", f"image {reference!r} is not on this node")
    return IMAGES[repository]


def _tolerates(toleration: dict[str, Any], taint: dict[str, str]) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("operator", "Equal") == "Exists":
        return not toleration.get("key") or toleration["key"] == taint["key"]
    return toleration.get("key") == taint["key"] and toleration.get("value", "") == taint.get("value", "")


def _field(pod: dict[str, Any], path: str) -> str:
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
    }
    if path in simple:
        return simple[path]
    match = _FIELD.match(path)
    if match is None:
        raise AssertionError(f"fieldRef {path}: not played here")
    return (meta.get(match.group(1)) or {}).get(match.group(2), "")
