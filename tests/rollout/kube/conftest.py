"""Fixtures of the Kubernetes tests: a kmock API server per test and a client made from a
kubeconfig that names it. The machinery lives in :mod:`apiserver` (a unique module name:
``tests/sd_server`` has a conftest of its own, and two modules named ``conftest`` collide)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from apiserver import Cluster, running_cluster

from rollout.k8s.client import KubeClient


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with running_cluster() as c:
        yield c


@pytest.fixture
def kube(cluster: Cluster, tmp_path: Path) -> KubeClient:
    return cluster.client(tmp_path)
