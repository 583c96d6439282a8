"""Pytest fixtures for the Kubernetes API (registered in tests/conftest.py).

``kube`` is a fresh emulator per test; ``kube_session`` one shared by the session (use your
own namespace). With ``QUEUE_OPERATOR_TEST_KUBECONFIG=/path/to/kubeconfig`` both yield that
cluster instead, so the same tests run against kind, k3d or a real cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.kube import KubeApi, kube_from_env


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeApi]:
    """A fresh Kubernetes API emulator (or the real cluster from the environment)."""
    api = kube_from_env(tmp_path / "kube")
    api.start()
    yield api
    api.stop()


@pytest.fixture(scope="session")
def kube_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApi]:
    """One Kubernetes API for the whole session: use a namespace of your own."""
    api = kube_from_env(tmp_path_factory.mktemp("kube-session"))
    api.start()
    yield api
    api.stop()
