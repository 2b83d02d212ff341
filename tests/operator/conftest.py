"""Fixtures for the operator tests (each module still selects the emulator class with `pytestmark`)."""

from __future__ import annotations

import pytest

from tests.operator.harness import Cluster, declare_resources


@pytest.fixture
def cluster(kmock) -> Cluster:
    """The emulator with the built-in kinds and UnlearningJob declared, seen as a cluster."""
    declare_resources(kmock)
    return Cluster(kmock)
