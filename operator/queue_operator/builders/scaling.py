"""KEDA ScaledObjects for ``spec.autoscaling``: scale the consumers' workload on the queue's backlog.

Pure functions. One ScaledObject per queue, named ``<kind>-<queue>`` (``kafkaqueue-orders``,
``delayqueue-reminders``, so a DelayQueue and a KafkaQueue of one name never collide), owned by
the queue, targeting ``spec.autoscaling.target``:

- KafkaQueue: KEDA's ``kafka`` scaler on the queue's group and topic: ``lagThreshold`` is the
  lag one replica is expected to carry; ``offsetResetPolicy`` follows ``spec.offset``. Brokers
  that need SASL or TLS need a KEDA ``TriggerAuthentication``, named in
  ``spec.autoscaling.authenticationRef``.
- DelayQueue: KEDA's ``beanstalkd`` scaler (KEDA 2.16+), one trigger per node on the queue's
  tube, counting jobs ready and reserved (due work; delayed jobs are not counted): ``value`` is
  what one replica is expected to carry. Each job has copies on up to three nodes, so one
  node's count is the queue's backlog; KEDA scales on the largest of the triggers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from queue_operator.builders.labels import common_labels
from queue_operator.spec import Autoscaling

API_VERSION, KIND = "keda.sh/v1alpha1", "ScaledObject"


def name_of(queue_kind: str, queue_name: str) -> str:
    return f"{queue_kind.lower()}-{queue_name}"


def kafka_triggers(
    brokers: Sequence[str], group: str, topic: str, offset: str, scaling: Autoscaling
) -> list[dict[str, Any]]:
    trigger: dict[str, Any] = {
        "type": "kafka",
        "metadata": {
            "bootstrapServers": ",".join(brokers),
            "consumerGroup": group,
            "topic": topic,
            "lagThreshold": str(scaling.threshold),
            "offsetResetPolicy": "earliest" if offset == "first" else "latest",
        },
    }
    if scaling.authentication_ref:
        trigger["authenticationRef"] = {"name": scaling.authentication_ref}
    return [trigger]


def beanstalkd_triggers(endpoints: Sequence[str], tube: str, scaling: Autoscaling) -> list[dict[str, Any]]:
    return [
        {
            "type": "beanstalkd",
            "metadata": {
                "server": endpoint,
                "tube": tube,
                "includeDelayed": "false",
                "value": str(scaling.threshold),
                "timeout": "5",
            },
        }
        for endpoint in endpoints
    ]


def scaled_object(
    queue: Mapping[str, Any], scaling: Autoscaling, triggers: list[dict[str, Any]]
) -> dict[str, Any]:
    meta = queue["metadata"]
    kind = str(queue.get("kind") or "")
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": scaling.target_kind, "name": scaling.target_name},
        "minReplicaCount": scaling.min_replicas,
        "maxReplicaCount": scaling.max_replicas,
        "triggers": triggers,
    }
    if scaling.polling_interval is not None:
        spec["pollingInterval"] = scaling.polling_interval
    if scaling.cooldown_period is not None:
        spec["cooldownPeriod"] = scaling.cooldown_period
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name_of(kind, meta["name"]),
            "namespace": meta["namespace"],
            "labels": common_labels("keda-scaledobject", meta["name"], "autoscaling"),
        },
        "spec": spec,
    }
