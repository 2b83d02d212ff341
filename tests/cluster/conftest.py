"""Fixtures for the tests on the real control plane.

`control_plane` (session): build or reuse the binaries, start etcd, kube-apiserver and kube-controller-manager.
`node` (session): the local node that runs pods as processes. `platform` (module): the chart installed with
helm into `ml-platform` (cluster-wide), its operator running as the chart's own Deployment pod on the node,
with S3 and MLflow defaults pointing at the real test servers. Without Go the tests are skipped, except under
CI=true, where a missing toolchain or a failed build fails the run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.api import Api
from tests.cluster.control_plane import AUDITED_NAMESPACE, ControlPlane, binaries, build
from tests.cluster.node import LocalNode
from tests.cluster.platform import (
    Kubectl,
    Platform,
    create_namespace,
    forbidden_requests,
    install,
    operator_requests,
    platform_values,
    uninstall,
)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    plane = ControlPlane(binaries(), tmp_path_factory.mktemp("control-plane"))
    plane.start()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        for line in build()[1].splitlines():
            reporter.write_line(line)
        reporter.write_line(f"control plane (etcd, kube-apiserver, controller manager) up in {plane.started_in:.1f} s")
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def admin(control_plane: ControlPlane) -> Api:
    return control_plane.admin_api()


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    return Kubectl(control_plane)


@pytest.fixture(scope="session")
def node(control_plane: ControlPlane, admin: Api, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNode]:
    local = LocalNode(admin, tmp_path_factory.mktemp("node"), node_env={"OMP_NUM_THREADS": "1"})
    local.start()
    yield local
    local.stop()


@pytest.fixture(scope="module")
def platform(control_plane, admin, kubectl, node, s3_server, mlflow_server) -> Iterator[Platform]:
    """The chart installed cluster-wide into ml-platform, its operator running; removed after the module."""
    create_namespace(admin, AUDITED_NAMESPACE)
    before = len(operator_requests(control_plane))
    values = platform_values(s3_server, mlflow_server)
    install(kubectl, *values)
    installed = Platform(kubectl, admin, node, control_plane, values)
    try:
        installed.wait_for_operator()
        yield installed
    finally:
        # Judged up to the uninstall: helm removes the RBAC while the operator pod is still stopping.
        refused = forbidden_requests(control_plane, before, until=len(operator_requests(control_plane)))
        uninstall(kubectl)
    assert not refused, f"the chart does not grant calls the operator made: {refused}"
