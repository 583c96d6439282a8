"""Two controller replicas with leader election: only the leader acts; a killed leader is replaced.

Real ``queue-operator`` processes on the API emulator, electing through a coordination.k8s.io Lease.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.kube import KubeApi
from harness.kube_operator import Cluster, OperatorProcess, eventually, example
from harness.servers import free_port

LEASE_SECONDS = 6


@pytest.fixture
def lease_seconds() -> int:
    return LEASE_SECONDS


@pytest.fixture
def replicas(
    kube: KubeApi, cluster: Cluster, tmp_path: Path, lease_seconds: int
) -> Iterator[list[OperatorProcess]]:
    processes = []
    for i in range(2):
        workdir = tmp_path / f"replica{i}"
        workdir.mkdir()
        process = OperatorProcess(kube, cluster.namespace, workdir)
        process.extra_args = [
            "--leader-elect",
            "--leader-election-namespace",
            cluster.namespace,
            "--lease-seconds",
            str(lease_seconds),
            "--liveness",
            f"http://127.0.0.1:{free_port()}/healthz",
        ]
        processes.append(process)
    processes[0].start()
    eventually(lambda: "became the leader" in processes[0].log(), what="the first replica leading")
    processes[1].start()
    yield processes
    for process in processes:
        process.stop()


def alive(process: OperatorProcess) -> bool:
    url = process.extra_args[process.extra_args.index("--liveness") + 1]
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def statefulset_replicas(cluster: Cluster, name: str) -> int:
    return int(
        cluster.apps.read_namespaced_stateful_set(f"{name}-beanstalkd", cluster.namespace).spec.replicas
    )


def test_only_the_leader_acts_and_a_killed_leader_is_replaced(
    cluster: Cluster, replicas: list[OperatorProcess]
) -> None:
    leader, follower = replicas
    eventually(lambda: "waiting to become the leader" in follower.log(), what="the follower waiting")
    # A waiting follower is alive: its liveness probe answers, so Kubernetes never restarts it.
    eventually(lambda: alive(follower), what="the follower's liveness probe")
    cluster.apply(example("delayqueue.yaml"))
    eventually(lambda: statefulset_replicas(cluster, "reminders") == 3, what="the leader reconciles")
    time.sleep(2)  # the follower would have acted by now if it could
    assert "applied" not in follower.log() and "Handler 'reconcile'" not in follower.log()
    assert "became the leader" not in follower.log()

    leader.kill()  # SIGKILL: no release, the Lease must expire
    killed = time.monotonic()
    # A change made while nobody leads is reconciled by the new leader.
    cluster.patch("delayqueues", "reminders", {"spec": {"replicas": 5}})
    eventually(lambda: "became the leader" in follower.log(), timeout=30, what="the follower taking over")
    eventually(
        lambda: statefulset_replicas(cluster, "reminders") == 5, timeout=30, what="the change reconciled"
    )
    took_over = time.monotonic() - killed
    assert took_over < LEASE_SECONDS + 10, f"takeover took {took_over:.1f}s"
    assert follower.running
    eventually(lambda: alive(follower), what="kopf's liveness probe on the same port")


@pytest.mark.parametrize("lease_seconds", [30])
def test_a_leader_stopping_normally_hands_over_at_once(
    cluster: Cluster, replicas: list[OperatorProcess]
) -> None:
    """With a 30 s Lease, a takeover within seconds can only come from the release."""
    leader, follower = replicas
    eventually(lambda: "waiting to become the leader" in follower.log(), what="the follower waiting")
    leader.stop()  # SIGTERM: the Lease is released
    assert "released the leadership" in leader.log()
    stopped = time.monotonic()
    eventually(lambda: "became the leader" in follower.log(), timeout=10, what="the handover")
    assert time.monotonic() - stopped < 10
