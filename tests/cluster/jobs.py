"""What the cluster tests share about UnlearningJobs: documents, status reads and S3 reads."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tests.cluster.api import Api, eventually
from tests.cluster.node import LocalNode

if TYPE_CHECKING:
    from tests.cluster.platform import Kubectl

WORKERS = 2
TRAINER_TIMEOUT = 300.0
GROUP_PATH = "/apis/unlearning.dev/v1alpha1"
S3_SECRET = "s3-credentials"


def job_document(
    name: str,
    namespace: str,
    uris: dict[str, str],
    *,
    steps: int,
    checkpoint_every: int,
    backoff_limit: int = 3,
    workers: int = WORKERS,
    run_policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A small SISS job on the tiny scenario in S3; the S3 endpoint and MLflow come from the chart's defaults."""
    return {
        "apiVersion": "unlearning.dev/v1alpha1",
        "kind": "UnlearningJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"uri": uris["model"]},
            "data": {"forget": {"uri": uris["forget"]}, "retain": {"uri": uris["retain"]}},
            "method": {"name": "siss", "lambda": 0.5, "forgetGradNorm": 5.0},
            "workers": workers,
            "training": {"steps": steps, "batchSize": 8, "checkpointEvery": checkpoint_every},
            "evaluation": {
                "every": steps,
                "numSamples": 8,
                "inferenceSteps": 4,
                "memorizationThreshold": 2.0,
                "retainImages": 16,
                "nll": {"timesteps": 10},
            },
            "output": {"uri": uris["output"]},
            "storage": {"credentialsSecret": S3_SECRET},
            "tracking": {"experiment": "cluster-tests"},
            "audit": {"requestId": f"ticket-{name}"},
            "runPolicy": {"backoffLimit": backoff_limit, **(run_policy or {})},
        },
    }


def patch_suspend(kubectl: Kubectl, namespace: str, name: str, suspend: bool) -> None:
    """`kubectl patch` of runPolicy.suspend, as a user suspends or resumes a job."""
    patch = json.dumps({"spec": {"runPolicy": {"suspend": suspend}}})
    kubectl.run("patch", "uj", name, "-n", namespace, "--type", "merge", "-p", patch)


def get(admin: Api, namespace: str, name: str) -> dict[str, Any] | None:
    return admin.get(f"{GROUP_PATH}/namespaces/{namespace}/unlearningjobs/{name}", missing_ok=True)


def status(admin: Api, namespace: str, name: str) -> dict[str, Any]:
    return (get(admin, namespace, name) or {}).get("status") or {}


def events(admin: Api, namespace: str, reason: str | None = None) -> list[dict[str, Any]]:
    found = admin.items(f"/api/v1/namespaces/{namespace}/events")
    return [e for e in found if reason is None or e.get("reason") == reason]


def until_phase(admin: Api, node: LocalNode, namespace: str, name: str, phase: str, timeout: float = TRAINER_TIMEOUT):
    """Wait for a phase; a job that fails on the way fails the test with its pods' logs."""

    def reached() -> dict[str, Any] | None:
        node.check()
        current = status(admin, namespace, name)
        if current.get("phase") == "Failed" and phase != "Failed":
            raise AssertionError(f"the job failed: {json.dumps(current, indent=1)}\n{node.logs()[-6000:]}")
        return current if current.get("phase") == phase else None

    return eventually(reached, timeout=timeout, what=f"{namespace}/{name} to be {phase}")


def read_json(s3_server, uri: str) -> dict[str, Any]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return json.loads(s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def checkpoint_steps(s3_server, output: str) -> list[int]:
    bucket, _, key = output.removeprefix("s3://").partition("/")
    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix=f"{key}/checkpoints/")
    return sorted(
        int(obj["Key"].split("/")[-2].removeprefix("step-"))
        for obj in listed.get("Contents", [])
        if obj["Key"].endswith("/_MANIFEST.json")
    )


def mlflow_runs_of(mlflow_server, uid: str) -> list[Any]:
    """Every MLflow run, in any experiment, tagged with this UnlearningJob's uid."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.url)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string=f"tags.`unlearning.dev/uid` = '{uid}'")
