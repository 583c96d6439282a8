"""The operator's own /metrics: leader, reconciliations, queue readiness and webhook admissions.

Real ``queue-operator`` processes on the API emulator, scraped over HTTP and parsed with
prometheus_client's own text parser.
"""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from injection.objects import delay_queue, pod
from injection.webhook_client import ANNOTATIONS, start_webhook
from prometheus_client.parser import text_string_to_metric_families

from harness.chart import by_kind, render
from harness.kube import KubeApi
from harness.kube_operator import REPO, Cluster, OperatorProcess, eventually, example
from harness.prometheus import Prometheus
from harness.servers import free_port

PLURAL = "delayqueues"


def set_ready_pods(cluster: Cluster, name: str) -> None:
    """Play the StatefulSet controller: every node (and the provisioned Redis) ready."""
    ready = {"status": {"replicas": 3, "readyReplicas": 3, "updatedReplicas": 3}}
    cluster.apps.patch_namespaced_stateful_set_status(f"{name}-beanstalkd", cluster.namespace, ready)
    redis = {"status": {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}}
    cluster.apps.patch_namespaced_stateful_set_status(f"{name}-redis", cluster.namespace, redis)


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample at ``port``: (name, labels) -> value."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError as exc:  # not serving yet: "not yet" for eventually()
        raise AssertionError(f"metrics on port {port}: {exc}") from exc
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, /, **labels: str
) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


@pytest.fixture
def replicas(kube: KubeApi, cluster: Cluster, tmp_path: Path) -> Iterator[list[tuple[OperatorProcess, int]]]:
    processes = []
    for i in range(2):
        workdir = tmp_path / f"replica{i}"
        workdir.mkdir()
        process = OperatorProcess(kube, cluster.namespace, workdir)
        port = free_port()
        process.extra_args = [
            *("--leader-elect", "--leader-election-namespace", cluster.namespace, "--lease-seconds", "6"),
            *("--metrics-port", str(port), "--metrics-host", "127.0.0.1"),
        ]
        processes.append((process, port))
    processes[0][0].start()
    eventually(lambda: "became the leader" in processes[0][0].log(), what="the first replica leading")
    processes[1][0].start()
    yield processes
    for process, _ in processes:
        process.stop()


def test_leader_reconciliations_and_queue_readiness_are_exported(
    cluster: Cluster, replicas: list[tuple[OperatorProcess, int]]
) -> None:
    (leader, leader_port), (follower, follower_port) = replicas
    # A follower serves metrics while it waits for the Lease: "no leader" is visible from outside.
    eventually(lambda: value(scrape(follower_port), "queue_operator_leader") == 0.0, what="follower 0")
    assert value(scrape(leader_port), "queue_operator_leader") == 1.0

    cluster.apply(example("delayqueue.yaml"))
    ns = cluster.namespace
    ready = {"kind": "DelayQueue", "namespace": ns, "name": "reminders"}
    eventually(
        lambda: value(scrape(leader_port), "queue_operator_queue_ready", **ready) == 0.0,
        what="a queue without ready nodes exported as not ready",
    )
    success = {"kind": "DelayQueue", "handler": "reconcile", "result": "success"}
    eventually(
        lambda: (value(scrape(leader_port), "queue_operator_reconciliations_total", **success) or 0) >= 1,
        what="a successful reconciliation counted",
    )
    durations = value(
        scrape(leader_port),
        "queue_operator_reconcile_duration_seconds_count",
        kind="DelayQueue",
        handler="reconcile",
    )
    assert durations is not None and durations >= 1

    set_ready_pods(cluster, "reminders")
    eventually(
        lambda: value(scrape(leader_port), "queue_operator_queue_ready", **ready) == 1.0,
        what="the queue exported as ready",
    )

    broken = example("delayqueue.yaml")[-1]
    broken["metadata"]["name"] = "a-delay-queue-name-that-is-far-too-long-for-dns"
    cluster.create(broken)
    invalid = {"kind": "DelayQueue", "handler": "reconcile", "result": "invalid"}
    eventually(
        lambda: (value(scrape(leader_port), "queue_operator_reconciliations_total", **invalid) or 0) >= 1,
        what="an invalid spec counted as such",
    )

    cluster.delete(PLURAL, "reminders")
    eventually(
        lambda: value(scrape(leader_port), "queue_operator_queue_ready", **ready) is None,
        what="a deleted queue's series gone",
    )
    # Only the leader reconciles: the follower counted nothing.
    assert value(scrape(follower_port), "queue_operator_reconciliations_total", **success) is None
    assert leader.running and follower.running


def test_webhook_admissions_are_counted_by_result(kube: KubeApi, unique: str, tmp_path: Path) -> None:
    kube.apply_crds(sorted((REPO / "crds").glob("*.yaml")))
    kube.create_namespace(unique)
    with kube.client() as api:
        body = delay_queue("reminders")
        body["metadata"]["namespace"] = unique
        Cluster(kube, unique, api).create(body)
    port = free_port()
    hook, process = start_webhook(
        kube,
        unique,
        tmp_path,
        role="webhook",
        extra=["--metrics-port", str(port), "--metrics-host", "127.0.0.1"],
    )
    try:
        injected = hook.review(
            unique, pod({**ANNOTATIONS, "queue-operator.dev/queues": "delayqueue/reminders"})
        )
        assert injected["allowed"] is True and "patch" in injected
        plain = hook.review(unique, pod({}))
        assert plain["allowed"] is True and "patch" not in plain
        refused = hook.review(unique, pod({**ANNOTATIONS, "queue-operator.dev/queues": "delayqueue/missing"}))
        assert refused["allowed"] is False

        samples = scrape(port)
        for result in ("injected", "unchanged", "refused"):
            assert value(samples, "queue_operator_webhook_admissions_total", result=result) == 1.0, result
        # start_webhook's probe posted one body that is no AdmissionReview: an error.
        assert value(samples, "queue_operator_webhook_admissions_total", result="error") == 1.0
        assert value(samples, "queue_operator_webhook_admission_duration_seconds_count") == 4.0
        # The webhook role holds no Lease and reconciles nothing.
        assert value(samples, "queue_operator_leader") == 0.0
    finally:
        process.stop()
        sys.stderr.write(process.log())


def test_operator_alerts_fire_and_resolve_in_a_real_prometheus(
    kube: KubeApi, cluster: Cluster, tmp_path: Path
) -> None:
    """The chart's operator alerts, evaluated by Prometheus on the real operator's /metrics: a queue
    that is not Ready, then ready; the operator gone (no leader)."""
    objects = render(
        "monitoring.serviceMonitor.enabled=true",
        "monitoring.rules.enabled=true",
        "monitoring.rules.for=1s",
        "monitoring.rules.window=20s",
    )
    (rule,) = by_kind(objects, "PrometheusRule")
    (monitor,) = by_kind(objects, "ServiceMonitor")
    port = free_port()
    operator = OperatorProcess(kube, cluster.namespace, tmp_path)
    operator.extra_args = ["--metrics-port", str(port), "--metrics-host", "127.0.0.1"]
    operator.start()
    prometheus = Prometheus(
        tmp_path / "prometheus",
        [f"127.0.0.1:{port}"],
        metrics_path=monitor["spec"]["endpoints"][0]["path"],
        rules=rule["spec"],
    )
    prometheus.start()
    try:
        eventually(lambda: prometheus.target_health() == ["up"], what="prometheus scrapes the operator")
        cluster.apply(example("delayqueue.yaml"))

        def firing() -> set[tuple[str, str]]:
            return {
                (a["labels"]["alertname"], a["labels"].get("name", ""))
                for a in prometheus.alerts()
                if a["state"] == "firing"
            }

        eventually(lambda: ("QueueNotReady", "reminders") in firing(), timeout=60, what="QueueNotReady fires")
        assert ("QueueOperatorNoLeader", "") not in firing()
        set_ready_pods(cluster, "reminders")
        eventually(lambda: ("QueueNotReady", "reminders") not in firing(), timeout=60, what="it resolves")

        operator.kill()
        eventually(
            lambda: ("QueueOperatorNoLeader", "") in firing(), timeout=60, what="QueueOperatorNoLeader fires"
        )
    finally:
        prometheus.kill()
        operator.stop()
