"""The operator runtime's pure decisions: status, drift, retry delays."""

from __future__ import annotations

from typing import Any

from queue_operator.handlers import delayqueue, kafkaqueue
from queue_operator.handlers.conditions import ready_condition
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


def test_ready_transition_time_moves_only_when_the_status_flips() -> None:
    old = [{"type": "Ready", "status": "False", "lastTransitionTime": "2020-01-01T00:00:00Z"}]
    assert ready_condition(False, "R", "m", 1, old)["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert ready_condition(True, "R", "m", 1, old)["lastTransitionTime"] != "2020-01-01T00:00:00Z"


def test_delayqueue_status_from_the_statefulset() -> None:
    spec = DelayQueueSpec.from_body(DQ)
    missing = delayqueue.observed_status(DQ, spec, None)
    assert (missing["conditions"][0]["reason"], missing["readyReplicas"]) == ("Provisioning", 0)
    partial = delayqueue.observed_status(DQ, spec, {"status": {"readyReplicas": 2}})
    assert partial["conditions"][0]["status"] == "False" and "2/3" in partial["conditions"][0]["message"]
    full = delayqueue.observed_status(DQ, spec, {"status": {"readyReplicas": 3}})
    assert full["conditions"][0]["status"] == "True"
    assert full["observedGeneration"] == 4 and len(full["endpoints"]) == 3


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
    ready = kafkaqueue.observed_status(KQ, spec, {"orders": 3, "orders.dlq": 3}, {})
    assert ready["conditions"][0]["reason"] == "TopicReady" and ready["partitions"] == 3
    fewer = kafkaqueue.observed_status(KQ, spec, {"orders": 5, "orders.dlq": 3}, {})
    assert fewer["conditions"][0]["reason"] == "PartitionDecreaseRefused"
    assert "set partitions to 5 or more" in fewer["conditions"][0]["message"]
    missing_dlq = kafkaqueue.observed_status(KQ, spec, {"orders": 3}, {})
    assert missing_dlq["conditions"][0]["reason"] == "DeadLetterTopicMissing"
