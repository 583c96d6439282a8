"""The operator runtime's pure decisions: status, drift, retry delays."""

from __future__ import annotations

from typing import Any

from queue_operator.handlers import delayqueue, kafkaqueue
from queue_operator.handlers.conditions import Verdict, condition, status_of
from queue_operator.handlers.options import Options
from queue_operator.spec import DelayQueueSpec, KafkaQueueSpec

DQ: dict[str, Any] = {
    "metadata": {"name": "jobs", "namespace": "ns", "generation": 4},
    "spec": {"replicas": 3, "redis": {"url": "redis://r:6379/0"}},
}
KQ: dict[str, Any] = {
    "metadata": {"name": "orders", "namespace": "ns", "generation": 2},
    "spec": {"brokers": ["k:9092"], "topic": {"partitions": 3}},
}


def test_retry_delays_double_up_to_the_cap() -> None:
    options = Options(retry_delay=0.5, retry_delay_max=3)
    assert [options.backoff(n) for n in range(5)] == [0.5, 1, 2, 3, 3]


def test_transition_time_moves_only_when_the_status_flips() -> None:
    old = [{"type": "Ready", "status": "False", "lastTransitionTime": "2020-01-01T00:00:00Z"}]
    assert condition("Ready", (False, "R", "m"), 1, old)["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert condition("Ready", (True, "R", "m"), 1, old)["lastTransitionTime"] != "2020-01-01T00:00:00Z"


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_every_status_has_the_three_conditions_with_the_generation_they_describe() -> None:
    status = status_of(DQ, Verdict(True, "NodesReady", "3/3", applied=True))
    assert [c["type"] for c in status["conditions"]] == ["Ready", "Progressing", "Degraded"]
    assert {c["observedGeneration"] for c in status["conditions"]} == {4}
    for c in status["conditions"]:
        assert set(c) == {"type", "status", "reason", "message", "observedGeneration", "lastTransitionTime"}


def test_observed_generation_moves_only_when_the_generation_was_applied() -> None:
    body = {**DQ, "status": {"observedGeneration": 3}}
    assert "observedGeneration" not in status_of(body, Verdict.problem("ApplyFailed", "422"))
    assert status_of(body, Verdict(True, "NodesReady", "", applied=True))["observedGeneration"] == 4


def test_delayqueue_status_from_the_statefulset() -> None:
    spec = DelayQueueSpec.from_body(DQ)
    missing = delayqueue.observed_status(DQ, spec, None)
    assert conditions(missing)["Ready"] == ("False", "Provisioning")
    assert conditions(missing)["Progressing"] == ("True", "Provisioning") and missing["readyReplicas"] == 0
    settled = {"replicas": 3, "updatedReplicas": 3}
    partial = delayqueue.observed_status(DQ, spec, {"status": {**settled, "readyReplicas": 2}})
    assert conditions(partial)["Ready"] == ("False", "NodesNotReady")
    assert "2/3" in partial["conditions"][0]["message"]
    full = delayqueue.observed_status(DQ, spec, {"status": {**settled, "readyReplicas": 3}})
    assert conditions(full) == {
        "Ready": ("True", "NodesReady"),
        "Progressing": ("False", "Reconciled"),
        "Degraded": ("False", "AsExpected"),
    }
    assert full["observedGeneration"] == 4 and len(full["endpoints"]) == 3


def test_a_statefulset_rolling_out_is_progressing_not_ready() -> None:
    spec = DelayQueueSpec.from_body(DQ)
    for status in (
        {"replicas": 3, "readyReplicas": 3, "updatedReplicas": 1},
        {
            "replicas": 3,
            "readyReplicas": 3,
            "updatedReplicas": 3,
            "currentRevision": "a",
            "updateRevision": "b",
        },
    ):
        rolling = delayqueue.observed_status(DQ, spec, {"status": status})
        assert conditions(rolling)["Ready"] == ("False", "RollingOut")
        assert conditions(rolling)["Progressing"] == ("True", "RollingOut")
    unseen = {
        "metadata": {"generation": 7},
        "status": {"observedGeneration": 6, "replicas": 3, "readyReplicas": 3, "updatedReplicas": 3},
    }
    assert conditions(delayqueue.observed_status(DQ, spec, unseen))["Progressing"] == ("True", "RollingOut")


def test_a_statefulset_shrinking_after_a_drain_is_scaling_down_not_rolling_out() -> None:
    """spec.replicas 3, the StatefulSet still at 5 and its controller behind: no rollout."""
    spec = DelayQueueSpec.from_body(DQ)
    shrinking = {
        "metadata": {"generation": 9},
        "status": {
            **{"observedGeneration": 8, "replicas": 5, "readyReplicas": 5, "updatedReplicas": 5},
            **{"currentRevision": "a", "updateRevision": "a"},
        },
    }
    found = conditions(delayqueue.observed_status(DQ, spec, shrinking))
    assert found["Ready"] == ("True", "ScalingDown")
    assert found["Progressing"] == ("True", "ScalingDown")


def test_a_refused_apply_is_degraded_with_the_api_message_and_keeps_the_generation() -> None:
    spec = DelayQueueSpec.from_body(DQ)
    body = {**DQ, "status": {"observedGeneration": 3}}
    settled = {"status": {"replicas": 3, "updatedReplicas": 3, "readyReplicas": 3}}
    refused = delayqueue.observed_status(
        body,
        spec,
        settled,
        ("ApplyFailed", "applying StatefulSet jobs-beanstalkd failed: 422 Invalid: forbidden"),
        applied=False,
    )
    assert conditions(refused)["Degraded"] == ("True", "ApplyFailed")
    assert "422 Invalid: forbidden" in refused["conditions"][2]["message"]
    assert conditions(refused)["Ready"] == ("True", "ApplyFailed")  # the previous spec still serves
    assert "observedGeneration" not in refused


def test_drift_ignores_fields_the_api_server_adds() -> None:
    desired = {"replicas": 3, "template": {"spec": {"containers": [{"name": "b", "image": "i"}]}}}
    actual = {
        "replicas": 3,
        "revisionHistoryLimit": 10,
        "template": {"spec": {"containers": [{"name": "b", "image": "i", "terminationMessagePath": "/x"}]}},
    }
    assert delayqueue.contains(actual, desired)
    assert not delayqueue.contains({**actual, "replicas": 5}, desired)
    assert not delayqueue.contains(
        actual, {**desired, "template": {"spec": {"containers": [{"image": "j"}]}}}
    )


def test_kafkaqueue_status_explains_partition_mismatches() -> None:
    spec = KafkaQueueSpec.from_body(KQ)
    ready = kafkaqueue.topics_verdict(spec, {"orders": 3, "orders.dlq": 3}, [])
    assert (ready.ready, ready.reason, ready.applied, ready.degraded) == (True, "TopicReady", True, False)
    refused = "topic orders has 5 partitions and spec asks for 3: set partitions to 5 or more"
    fewer = kafkaqueue.topics_verdict(spec, {"orders": 5, "orders.dlq": 3}, [refused])
    assert (fewer.ready, fewer.degraded, fewer.degraded_reason, fewer.applied) == (
        True,
        True,
        "PartitionDecreaseRefused",
        False,
    )
    assert fewer.degraded_message == refused
    missing_dlq = kafkaqueue.topics_verdict(spec, {"orders": 3}, [])
    assert (missing_dlq.ready, missing_dlq.reason, missing_dlq.progressing) == (
        False,
        "DeadLetterTopicMissing",
        True,
    )


def test_kafkaqueues_on_the_same_brokers_and_credentials_share_one_admin_client() -> None:
    from queue_engine.kq.security import KafkaSecurity  # noqa: PLC0415
    from queue_operator.topics import AdminPool  # noqa: PLC0415

    pool = AdminPool(idle_seconds=60)
    alice = KafkaSecurity(sasl_mechanism="PLAIN", username="alice", password="a", tls=True)
    first = pool.get(["k:9092"], alice, timeout=1)
    assert pool.get(["k:9092"], alice, timeout=1) is first
    rotated = KafkaSecurity(sasl_mechanism="PLAIN", username="alice", password="b", tls=True)
    assert pool.get(["k:9092"], rotated, timeout=1) is not first
    assert pool.get(["other:9092"], alice, timeout=1) is not first
    assert len(pool) == 3
    idle = AdminPool(idle_seconds=0)
    idle.get(["k:9092"], None, timeout=1)
    idle.get(["other:9092"], None, timeout=1)
    assert len(idle) == 1, "idle clients are dropped"
