"""GPU scheduling on the real control plane: a job's resources, tolerations, node selector and priority class
pass admission and reach its pods, which land on the tainted GPU node and nowhere else."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.jobs import job_document, until_phase
from tests.cluster.node import LocalNode
from tests.cluster.platform import create_namespace, create_s3_secret

NAMESPACE = "team-gpu"
POOL = {"cloud.example.com/pool": "gpu-h100"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


@pytest.fixture(scope="module")
def gpu_node(platform, admin, tmp_path_factory) -> Iterator[LocalNode]:
    """A second node, as a GPU pool is: labelled, and tainted so that only pods that tolerate it land there."""
    node = LocalNode(
        admin,
        tmp_path_factory.mktemp("gpu-node"),
        name="gpu-node-1",
        labels=POOL,
        taints=[GPU_TAINT],
        node_env={"OMP_NUM_THREADS": "1"},
    )
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def priority_class(admin) -> str:
    body = {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": "unlearning-urgent"},
        "value": 1000,
    }
    admin.create("/apis/scheduling.k8s.io/v1/priorityclasses", body)
    return "unlearning-urgent"


def test_a_gpu_job_tolerates_the_taint_selects_the_pool_and_runs_there(
    platform, admin, kubectl, node, gpu_node, priority_class, s3_scenario
):
    create_namespace(admin, NAMESPACE)
    create_s3_secret(admin, NAMESPACE)
    document = job_document("gpu-forget", NAMESPACE, s3_scenario, steps=2, checkpoint_every=2, workers=1)
    document["spec"]["resources"] = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"nvidia.com/gpu": 1}}
    document["spec"]["scheduling"] = {
        "nodeSelector": POOL,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": priority_class,
    }
    kubectl.apply(document)
    until_phase(admin, gpu_node, NAMESPACE, "gpu-forget", "Succeeded")

    pods = admin.items(f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=unlearning.dev/job=gpu-forget")
    assert pods, "the trainer pods are kept after success"
    for pod in pods:
        spec = pod["spec"]
        assert spec["nodeName"] == "gpu-node-1", "only the GPU node may run them"
        assert spec["nodeSelector"] == POOL
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert spec["priorityClassName"] == priority_class and spec["priority"] == 1000, "admission resolved it"
        resources = spec["containers"][0]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == "1" and resources["requests"]["nvidia.com/gpu"] == "1"
        assert resources["requests"]["cpu"] == "500m" and resources["limits"]["memory"] == "1Gi"
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert env["PET_NPROC_PER_NODE"] == "1" and "ACCELERATE_USE_CPU" not in env
    assert not node.job_pods(NAMESPACE, "gpu-forget-r0"), "the untainted node never ran them"
