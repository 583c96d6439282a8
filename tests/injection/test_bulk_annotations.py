"""Bulk delivery asked for by pod annotation or by the queue resource reaches the sidecar's config."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from injection.objects import delay_queue, kafka_queue, pod

from queue_operator.injection import (
    SIDECAR_CONFIG,
    InjectionError,
    SidecarSettings,
    inject,
    read_request,
    sidecar_queue,
)
from queue_operator.spec import KafkaQueueSpec, SpecError
from queue_sidecar.config import SidecarConfig, parse_config

BASIC = {
    "queue-operator.dev/inject": "true",
    "queue-operator.dev/queues": "delayqueue/reminders,kafkaqueue/orders",
    "queue-operator.dev/app-port": "8080",
}


def config_for(annotations: dict[str, str], bodies: dict[str, dict[str, Any]]) -> SidecarConfig:
    original = pod(annotations)
    request = read_request(original)
    queues = [sidecar_queue(ref, bodies[ref.name], i) for i, ref in enumerate(request.queues)]
    mutated = inject(original, request, queues, SidecarSettings())
    return parse_config(yaml.safe_load(mutated["metadata"]["annotations"][SIDECAR_CONFIG]))


def test_bulk_annotations_turn_on_bulk_for_every_queue_of_the_pod() -> None:
    annotations = {
        **BASIC,
        "queue-operator.dev/bulk-max-messages": "50",
        "queue-operator.dev/bulk-max-wait": "5ms",
    }
    bodies = {
        "reminders": delay_queue("reminders", delivery={"maxAttempts": 7}),
        "orders": kafka_queue("orders", delivery={"bulk": {"maxMessages": 500}}),
    }
    config = config_for(annotations, bodies)
    for queue in config.queues:
        assert queue.delivery.bulk is not None, queue.name
        assert (queue.delivery.bulk.max_messages, queue.delivery.bulk.max_wait) == (50, 0.005)
    # The rest of the queue's delivery policy stays as the resource says.
    assert config.queue("reminders").policy().max_attempts == 7


def test_one_annotation_is_enough_and_the_other_setting_defaults() -> None:
    config = config_for(
        {**BASIC, "queue-operator.dev/bulk-max-wait": "20ms"},
        {"reminders": delay_queue("reminders"), "orders": kafka_queue("orders")},
    )
    bulk = config.queue("orders").delivery.bulk
    assert bulk is not None and (bulk.max_messages, bulk.max_wait) == (100, 0.02)


def test_without_annotations_the_queue_resource_decides() -> None:
    config = config_for(
        BASIC,
        {
            "reminders": delay_queue("reminders"),
            "orders": kafka_queue("orders", delivery={"bulk": {"maxMessages": 20, "maxWait": "1ms"}}),
        },
    )
    assert config.queue("reminders").delivery.bulk is None
    bulk = config.queue("orders").delivery.bulk
    assert bulk is not None and (bulk.max_messages, bulk.max_wait) == (20, 0.001)


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        ("queue-operator.dev/bulk-max-messages", "0"),
        ("queue-operator.dev/bulk-max-messages", "1001"),
        ("queue-operator.dev/bulk-max-messages", "lots"),
        ("queue-operator.dev/bulk-max-wait", "soon"),
        ("queue-operator.dev/bulk-max-wait", "1m"),
    ],
)
def test_bad_bulk_annotations_are_refused_naming_the_annotation(annotation: str, value: str) -> None:
    with pytest.raises(InjectionError, match=annotation):
        read_request(pod({**BASIC, annotation: value}))


def test_a_bad_bulk_setting_in_the_queue_resource_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match=r"delivery\.bulk: unknown key\(s\) maxMesages"):
        KafkaQueueSpec.from_body(kafka_queue("orders", delivery={"bulk": {"maxMesages": 5}}))
