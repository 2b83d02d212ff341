"""A real Kubernetes control plane for the tests: etcd, kube-apiserver and kube-controller-manager, built from
Go modules by `build.sh` and run as local processes on 127.0.0.1.

The API server has a generated CA and serving certificate, service-account signing keys, the default admission
plugins and `--authorization-mode=Node,RBAC`; requests by ServiceAccounts of `AUDITED_NAMESPACE` are written to
an audit log, which is how the tests see every call the operator makes and what the authorizer answered. The
controller manager runs every controller except the node-lifecycle one (no kubelet sends heartbeats here), each
with its own ServiceAccount credentials, as on a real cluster. There is no scheduler and no kubelet: `node.py`
plays the node.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.api import Api
from tests.cluster.pki import Pki
from tests.servers import free_port

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"
VERSION_LINES = 5
"""build.sh ends its stderr with one version line per binary (etcd, apiserver, controller manager, kubectl, helm)."""
AUDITED_NAMESPACE = "ml-platform"
"""Where the chart is installed: requests by its ServiceAccounts are audited."""
DISABLED_CONTROLLERS = ("node-lifecycle-controller",)
"""Without kubelet heartbeats it would mark the node NotReady and evict every pod."""


class BuildError(RuntimeError):
    """The Go toolchain is missing or the build failed."""


@functools.cache
def build() -> tuple[Path, str]:
    """Build (or reuse) the binaries; returns their folder and their versions."""
    if shutil.which("go") is None:
        raise BuildError("the Go toolchain is missing: the cluster tests build Kubernetes from Go modules (Go 1.26)")
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"{BUILD_SCRIPT} failed:\n{result.stderr[-4000:]}")
    versions = result.stderr.strip().splitlines()[-VERSION_LINES:]
    return Path(result.stdout.strip().splitlines()[-1]), "\n".join(versions)


def binaries() -> Path:
    """The binaries' folder for a test: skipped without Go, except under CI=true, where that fails the run."""
    try:
        return build()[0]
    except BuildError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the control plane cannot be built: {exc}")
        pytest.skip(str(exc))


def write_kubeconfig(path: Path, server: str, ca: Path, user: dict[str, str]) -> Path:
    """A kubeconfig with one cluster, one user (client certificate or token) and one current context."""
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(document))
    path.chmod(0o600)
    return path


AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "userGroups": [f"system:serviceaccounts:{AUDITED_NAMESPACE}"]},
        {"level": "None"},
    ],
}


@dataclass
class ControlPlane:
    bin: Path
    root: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    started_in: float = 0.0

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.log"

    def tool(self, name: str) -> Path:
        return self.bin / name

    def admin_api(self) -> Api:
        """A client with the admin (system:masters) certificate."""
        return Api(self.server, self.pki.ca.cert, cert=(self.pki.admin.cert, self.pki.admin.key))

    # ----- start and stop -------------------------------------------------------------------------------------

    def start(self) -> None:
        began = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        self.pki = Pki.create(self.root / "pki")
        try:
            etcd = self._start_etcd()
            self._start_apiserver(etcd)
            self._wait_ready()
            self._start_controller_manager()
            self._wait_for_default_service_account()
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - began

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.root / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [str(self.tool(name)), *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _start_etcd(self) -> str:
        client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        self._spawn(
            "etcd",
            [
                "--name=test",
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=test={peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        return client

    def _start_apiserver(self, etcd: str) -> None:
        policy = self.root / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        pki = self.pki
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={self.root / 'apiserver-certs'}",
                f"--tls-cert-file={pki.serving.cert}",
                f"--tls-private-key-file={pki.serving.key}",
                f"--client-ca-file={pki.ca.cert}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.service_account_public}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-mode=blocking",
                "--profiling=false",
            ],
        )
        write_kubeconfig(
            self.admin_kubeconfig,
            self.server,
            pki.ca.cert,
            {"client-certificate": str(pki.admin.cert), "client-key": str(pki.admin.key)},
        )

    def _start_controller_manager(self) -> None:
        pki = self.pki
        kubeconfig = write_kubeconfig(
            self.root / "controller-manager.kubeconfig",
            self.server,
            pki.ca.cert,
            {"client-certificate": str(pki.controller_manager.cert), "client-key": str(pki.controller_manager.key)},
        )
        controllers = ",".join(["*", *(f"-{name}" for name in DISABLED_CONTROLLERS)])
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={kubeconfig}",
                f"--controllers={controllers}",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--root-ca-file={pki.ca.cert}",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                "--leader-elect=false",
                "--secure-port=0",
                "--profiling=false",
            ],
        )

    def stop(self) -> None:
        """Stop every process this control plane started, by its PID, the API server's clients first."""
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    # ----- readiness ------------------------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        context.load_cert_chain(str(self.pki.admin.cert), str(self.pki.admin.key))
        return context

    def get(self, path: str) -> Any:
        """An authenticated GET as the admin; JSON responses are decoded."""
        with urllib.request.urlopen(self.server + path, context=self._ssl_context(), timeout=10) as response:
            body = response.read()
        return json.loads(body) if body.startswith(b"{") else body.decode()

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, size: int = 3000) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""

    def _until(self, check, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if check():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        logs = "\n".join(f"--- {name}\n{self.log_tail(name)}" for name in self.processes)
        raise RuntimeError(f"{what} not ready after {timeout} s\n{logs}")

    def _wait_ready(self) -> None:
        self._until(lambda: self.get("/readyz") == "ok", "kube-apiserver", 120)

    def _wait_for_default_service_account(self) -> None:
        def found() -> bool:
            try:
                return bool(self.get("/api/v1/namespaces/default/serviceaccounts/default"))
            except urllib.error.HTTPError:
                return False

        self._until(found, "the default ServiceAccount (kube-controller-manager)", 60)

    def audit_events(self) -> list[dict[str, Any]]:
        """Every audited request so far (ServiceAccounts of AUDITED_NAMESPACE), oldest first."""
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]
