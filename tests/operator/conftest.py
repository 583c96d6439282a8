"""Fixtures: a namespace with the CRDs installed, and the operator process watching it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.kube import KubeApi
from harness.kube_operator import REPO, Cluster, OperatorProcess


@pytest.fixture
def cluster(kube: KubeApi, unique: str) -> Iterator[Cluster]:
    kube.apply_crds(sorted((REPO / "crds").glob("*.yaml")))
    kube.create_namespace(unique)
    with kube.client() as api:
        yield Cluster(kube, unique, api)
    kube.delete_namespace(unique)


@pytest.fixture
def operator(kube: KubeApi, cluster: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    process = OperatorProcess(kube, cluster.namespace, tmp_path)
    process.start()
    yield process
    process.stop()
    if os.environ.get("QUEUE_OPERATOR_TEST_SHOW_LOG"):
        sys.stderr.write(process.log())
