"""The whole user path on the e2e bed (docs/e2e.md), one step per test, in order.

A Helm-rendered install; a DelayQueue and a KafkaQueue become Ready; an annotated app gets its
sidecar; it publishes delayed, timed and Kafka messages through QUEUE_PUBLISH_URL and receives
them; the operator leader is killed, the DelayQueue scaled up, a beanstalkd pod deleted, the
DelayQueue scaled down (jobs pending on the leaving nodes) and the app rolled while messages are
pending: none is lost; uninstalling leaves nothing hanging.
Each step needs the ones before it (they share the module's bed).
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import greenstalk
import pytest
from e2e import manifests
from e2e.manifests import NAMESPACE
from e2e.user import condition, kill_process, publish, ready_pods, received

from harness.e2e_bed import RELEASE_NAMESPACE, Bed, eventually
from harness.kubelet.probes import is_ready

DQ, KQ = "reminders", "orders"
DQ_PATH = f"/apis/queue-operator.dev/v1alpha1/namespaces/{NAMESPACE}/delayqueues/{DQ}"
KQ_PATH = f"/apis/queue-operator.dev/v1alpha1/namespaces/{NAMESPACE}/kafkaqueues/{KQ}"
STS_PATH = f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets/{DQ}-beanstalkd"
NODES_PATH = f"/api/v1/namespaces/{NAMESPACE}/configmaps/{DQ}-nodes"
APP_PATH = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/app"
LEASE_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NAMESPACE}/leases/qo-queue-operator"
CONTROLLER = {"app.kubernetes.io/component": "controller"}
LEAVING = {f"{DQ}-beanstalkd-3", f"{DQ}-beanstalkd-4"}
WEBHOOK = {"app.kubernetes.io/component": "webhook"}

# Every message published, by body: what must arrive before the end (filled as the steps go).
published: dict[str, str] = {}
# The scale-down's jobs, by body: no delivery may come before this (publish time plus delay).
not_before: dict[str, float] = {}


def _publish_dq(bed: Bed, body: str, query: str) -> None:
    published[body] = publish(bed, "delayqueues", DQ, body, query)["id"]


def _publish_delayed(bed: Bed, body: str, delay: int) -> None:
    not_before[body] = time.time() + delay
    _publish_dq(bed, body, f"delay={delay}s")


def _publish_kq(bed: Bed, body: str) -> None:
    publish(bed, "kafkaqueues", KQ, body)
    published[body] = "kafka"


def _missing(records: Path) -> set[str]:
    return set(published) - {r["body"] for r in received(records)}


def test_helm_install_comes_up(bed: Bed) -> None:
    rendered = bed.install()
    kinds = {o["kind"] for o in rendered}
    assert {"CustomResourceDefinition", "ClusterRole", "Deployment", "MutatingWebhookConfiguration"} <= kinds
    eventually(lambda: len(ready_pods(bed, RELEASE_NAMESPACE, WEBHOOK)) == 2, 30, "both webhook pods ready")
    eventually(lambda: len(ready_pods(bed, RELEASE_NAMESPACE, CONTROLLER)) == 2, 30, "both controllers ready")
    holder = eventually(lambda: bed.get(LEASE_PATH)["spec"].get("holderIdentity"), 30, "a leader")
    names = [p["metadata"]["name"] for p in ready_pods(bed, RELEASE_NAMESPACE, CONTROLLER)]
    assert any(holder.startswith(name) for name in names), (holder, names)
    deployment = bed.get(f"/apis/apps/v1/namespaces/{RELEASE_NAMESPACE}/deployments/qo-queue-operator")
    assert deployment["status"]["readyReplicas"] == 2
    assert deployment["status"]["observedGeneration"] == deployment["metadata"]["generation"]


def test_queues_become_ready(bed: Bed) -> None:
    bed.apply(manifests.namespace())
    bed.apply(manifests.delay_queue(DQ))
    bed.apply(manifests.kafka_queue(KQ, bed.broker.address))
    kq = eventually(
        lambda: condition(bed.get(KQ_PATH)).get("status") == "True" and bed.get(KQ_PATH), 30, "KQ Ready"
    )
    assert kq["status"]["partitions"] == 2
    dq = eventually(
        lambda: condition(bed.get(DQ_PATH)).get("status") == "True" and bed.get(DQ_PATH), 60, "DQ Ready"
    )
    assert dq["status"]["readyReplicas"] == 3
    nodes = ready_pods(bed, NAMESPACE, {"app.kubernetes.io/name": "beanstalkd"})
    assert sorted(p["metadata"]["name"] for p in nodes) == [f"{DQ}-beanstalkd-{i}" for i in range(3)]


def test_app_pod_gets_its_sidecar(bed: Bed, records: Path) -> None:
    bed.apply(manifests.app("app", [f"delayqueue/{DQ}", f"kafkaqueue/{KQ}"], records))
    pods = eventually(lambda: ready_pods(bed, NAMESPACE, {"app": "app"}), 60, "the app pod ready")
    spec = pods[0]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["queue-sidecar"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["QUEUE_PUBLISH_URL"] == "http://127.0.0.1:3500"


def test_app_receives_delayed_timed_and_kafka_messages(bed: Bed, records: Path) -> None:
    start = time.time()
    _publish_dq(bed, "delayed-1", "delay=2s")
    at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=3)
    _publish_dq(bed, "timed-1", "at=" + at.isoformat().replace("+00:00", "Z"))
    _publish_kq(bed, "kafka-1")
    eventually(lambda: not _missing(records), 90, "all delivered")
    by_body = {r["body"]: r for r in received(records)}
    assert by_body["delayed-1"]["id"] == published["delayed-1"]
    assert by_body["timed-1"]["kind"] == "delay" and by_body["kafka-1"]["kind"] == "kafka"
    assert time.time() - start >= 2


def _pending_jobs(bed: Bed, tag: str, count: int) -> None:
    """Jobs due while the next disruption happens, and Kafka messages alongside."""
    for i in range(count):
        _publish_dq(bed, f"{tag}-dq-{i}", f"delay={4 + i}s")
    for i in range(2):
        _publish_kq(bed, f"{tag}-kq-{i}")


def test_operator_leader_killed_another_takes_over(bed: Bed) -> None:
    holder = bed.get(LEASE_PATH)["spec"]["holderIdentity"]
    leader = next(
        p for p in ready_pods(bed, RELEASE_NAMESPACE, CONTROLLER) if holder.startswith(p["metadata"]["name"])
    )
    _pending_jobs(bed, "leader", 3)
    kill_process(leader["status"]["podIP"], "queue-operator")
    others = [
        p["metadata"]["name"] for p in ready_pods(bed, RELEASE_NAMESPACE, CONTROLLER) if p is not leader
    ]
    new = eventually(
        lambda: (h := bed.get(LEASE_PATH)["spec"].get("holderIdentity")) != holder and h, 30, "a new leader"
    )
    assert not new.startswith(leader["metadata"]["name"]) or others == []


def test_delayqueue_scales_up(bed: Bed) -> None:
    _pending_jobs(bed, "scale", 3)
    bed.patch(DQ_PATH, {"spec": {"replicas": 5}})
    eventually(
        lambda: (
            bed.get(DQ_PATH)["status"].get("readyReplicas") == 5
            and condition(bed.get(DQ_PATH))["status"] == "True"
        ),
        60,
        "5 nodes ready",
    )
    sts = bed.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets/{DQ}-beanstalkd")
    assert (
        sts["status"]["readyReplicas"] == 5
        and sts["status"]["observedGeneration"] == sts["metadata"]["generation"]
    )
    endpoints = bed.get(DQ_PATH)["status"]["endpoints"]
    assert len(endpoints) == 5


def test_beanstalkd_pod_deleted_comes_back(bed: Bed) -> None:
    _pending_jobs(bed, "node", 3)
    old = bed.get(f"/api/v1/namespaces/{NAMESPACE}/pods/{DQ}-beanstalkd-1")
    bed.delete(f"/api/v1/namespaces/{NAMESPACE}/pods/{DQ}-beanstalkd-1")

    def back() -> bool:
        pod = bed.get(f"/api/v1/namespaces/{NAMESPACE}/pods/{DQ}-beanstalkd-1")
        return pod["metadata"]["uid"] != old["metadata"]["uid"] and is_ready(pod)

    eventually(back, 60, "beanstalkd-1 recreated and ready")


def _nodes(bed: Bed) -> dict[str, str]:
    """The nodes ConfigMap the sidecars watch: each node's state, by ordinal."""
    listed = json.loads(bed.get(NODES_PATH)["data"]["nodes.json"])["nodes"]
    return {n["address"].split(".")[0].rsplit("-", 1)[1]: n["state"] for n in listed}


def _jobs_on(bed: Bed, ordinal: int) -> int:
    """The DelayQueue's jobs (any state) on one beanstalkd node, asked directly."""
    pod = bed.get(f"/api/v1/namespaces/{NAMESPACE}/pods/{DQ}-beanstalkd-{ordinal}")
    with greenstalk.Client((pod["status"]["podIP"], 11300), use=DQ, watch=DQ) as client:
        try:
            stats = client.stats_tube(DQ)
        except greenstalk.NotFoundError:
            return 0
    counts = [stats["current-jobs-ready"], stats["current-jobs-delayed"], stats["current-jobs-reserved"]]
    return sum(counts) + stats["current-jobs-buried"]


def _check_scale_down_deliveries(records: Path) -> None:
    """Each scale-down job arrived exactly once, with its id, and not before it was due."""
    deliveries: dict[str, list[dict[str, Any]]] = {}
    for record in received(records):
        deliveries.setdefault(record["body"], []).append(record)
    for body, floor in not_before.items():
        got = deliveries.get(body, [])
        assert len(got) == 1, (body, got)
        due = datetime.datetime.fromisoformat(got[0]["due"].replace("Z", "+00:00")).timestamp()
        assert got[0]["id"] == published[body], (body, got[0])
        assert due >= floor - 0.001, (body, due, floor)  # X-Due-At is cut to milliseconds
        assert got[0]["at"] >= due, (body, got[0]["at"], due)


def test_delayqueue_scales_down_while_jobs_wait_on_leaving_nodes(bed: Bed, records: Path) -> None:
    # Written to 3 of the 5 nodes each: the leaving nodes 3 and 4 hold copies of most.
    for i, delay in enumerate((3, 6, 9, 12, 15, 18, 20, 20)):
        _publish_delayed(bed, f"down-before-{i}", delay)
    eventually(lambda: _jobs_on(bed, 3) and _jobs_on(bed, 4), 10, "jobs pending on nodes 3 and 4")
    bed.patch(DQ_PATH, {"spec": {"replicas": 3}})
    draining = {"0": "active", "1": "active", "2": "active", "3": "draining", "4": "draining"}
    eventually(
        lambda: _nodes(bed) == draining and bed.get(DQ_PATH)["status"].get("drain"),
        30,
        "nodes 3 and 4 marked draining (ConfigMap and status.drain)",
    )
    # Published while the sidecar may still write to them (the drain grace covers that).
    for i, delay in enumerate((2, 5, 10, 15, 20)):
        _publish_delayed(bed, f"down-during-{i}", delay)

    def shrunk() -> bool:
        sts = bed.get(STS_PATH)
        leaving = [p for p in bed.pods(NAMESPACE) if p["metadata"]["name"] in LEAVING]
        return (
            sts["spec"]["replicas"] == 3
            and sts["status"]["readyReplicas"] == 3 == sts["status"]["replicas"]
            and not leaving
            and _nodes(bed) == {"0": "active", "1": "active", "2": "active"}
        )

    eventually(shrunk, 60, "the StatefulSet at 3 nodes, nodes 3 and 4 gone")
    dq = eventually(
        lambda: (
            (dq := bed.get(DQ_PATH))["status"].get("readyReplicas") == 3
            and condition(dq)["status"] == "True"
            and not dq["status"].get("drain")
            and dq
        ),
        30,
        "the DelayQueue Ready at 3 nodes",
    )
    assert len(dq["status"]["endpoints"]) == 3
    try:
        eventually(lambda: not set(not_before) - {r["body"] for r in received(records)}, 60, "delivered")
    except AssertionError as exc:
        missing = set(not_before) - {r["body"] for r in received(records)}
        raise AssertionError(f"{exc}; missing: {sorted(missing)}") from None
    _check_scale_down_deliveries(records)


def test_app_rolled(bed: Bed, records: Path) -> None:
    _pending_jobs(bed, "roll", 3)
    before = {p["metadata"]["name"] for p in bed.pods(NAMESPACE, {"app": "app"})}
    bed.patch(
        APP_PATH, {"spec": {"template": {"metadata": {"annotations": {"e2e/restartedAt": str(time.time())}}}}}
    )

    def rolled() -> list[dict[str, Any]]:
        pods = bed.pods(NAMESPACE, {"app": "app"})
        names = {p["metadata"]["name"] for p in pods}
        return [p for p in pods if is_ready(p)] if len(pods) == 1 and not names & before else []

    pods = eventually(rolled, 90, "the app rolled to a new pod")
    assert pods[0]["spec"]["initContainers"][0]["name"] == "queue-sidecar"
    eventually(
        lambda: (status := bed.get(APP_PATH)["status"])["updatedReplicas"] == 1 == status["replicas"],
        10,
        "the Deployment's status: rolled",
    )
    _pending_jobs(bed, "after-roll", 2)


def test_nothing_lost(bed: Bed, records: Path) -> None:
    try:
        eventually(lambda: not _missing(records), 120, "every message delivered")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; missing: {sorted(_missing(records))}") from None
    dq_ids = [r["id"] for r in received(records) if r["kind"] == "delay"]
    expected = {published[b] for b in published if published[b] != "kafka"}
    assert expected <= set(dq_ids)
    _check_scale_down_deliveries(records)  # still once each, after the app rolled


def _bare_pod(name: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "annotations": annotations},
        "spec": {"containers": [{"name": "c", "image": "localhost/sleep:dev", "command": ["sleep", "600"]}]},
    }


ASKS = {
    "queue-operator.dev/inject": "true",
    "queue-operator.dev/queues": f"delayqueue/{DQ}",
    "queue-operator.dev/app-port": "8080",
}


def test_webhook_down_refuses_only_pods_asking_for_injection(bed: Bed) -> None:
    webhook_path = f"/apis/apps/v1/namespaces/{RELEASE_NAMESPACE}/deployments/qo-queue-operator-webhook"
    bed.patch(webhook_path, {"spec": {"replicas": 0}})
    eventually(lambda: not bed.pods(RELEASE_NAMESPACE, WEBHOOK), 30, "the webhook pods gone")
    bed.apply(_bare_pod("plain", {}))  # matchConditions keep it away from the webhook
    with pytest.raises(RuntimeError, match="failed calling webhook"):  # failurePolicy: Fail
        bed.apply(_bare_pod("asks", ASKS))
    eventually(
        lambda: is_ready(bed.get(f"/api/v1/namespaces/{NAMESPACE}/pods/plain")), 30, "the plain pod runs"
    )
    bed.patch(webhook_path, {"spec": {"replicas": 2}})
    eventually(lambda: len(ready_pods(bed, RELEASE_NAMESPACE, WEBHOOK)) == 2, 30, "the webhook back")
    injected = bed.apply(_bare_pod("asks", ASKS))
    assert injected["spec"]["initContainers"][0]["name"] == "queue-sidecar"


def test_uninstall_nothing_hangs(bed: Bed) -> None:
    bed.delete(APP_PATH)
    bed.delete(f"/api/v1/namespaces/{NAMESPACE}")
    eventually(
        lambda: not bed.exists(DQ_PATH) and not bed.exists(KQ_PATH), 60, "the queues' finalizers cleared"
    )
    eventually(lambda: not bed.pods(NAMESPACE), 60, "the user's pods gone")
    bed.uninstall()
    eventually(lambda: not bed.pods(RELEASE_NAMESPACE), 60, "the operator's pods gone")
    assert not bed.exists(f"/api/v1/namespaces/{RELEASE_NAMESPACE}")
