"""go-queue's kq: a Kafka pusher and consumer on confluent-kafka, at-least-once and ordered per key.

See ``docs/kq.md``. Import from here::

    from queue_engine.kq import KafkaPusher, KafkaConsumer, KafkaMessage, KafkaSecurity
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from queue_engine.kq.consumer import KafkaConsumer
    from queue_engine.kq.dead_letter_headers import (
        ATTEMPTS,
        LAST_ERROR,
        ORIGINAL_OFFSET,
        ORIGINAL_PARTITION,
        ORIGINAL_TOPIC,
        REASON,
    )
    from queue_engine.kq.dead_letters import read_dead_letters, replay_dead_letters
    from queue_engine.kq.lag import group_lag
    from queue_engine.kq.message import Delivered, KafkaMessage
    from queue_engine.kq.pusher import KafkaPusher, SyncKafkaPusher
    from queue_engine.kq.security import SASL_MECHANISMS, KafkaSecurity
    from queue_engine.kq.sync_consumer import SyncKafkaConsumer

# Loaded on first use (PEP 562): a process that needs only a light part (the operator reads
# KafkaSecurity and the group start) does not load the consumer and pusher with them.
_WHERE = {
    "ATTEMPTS": "queue_engine.kq.dead_letter_headers",
    "Delivered": "queue_engine.kq.message",
    "KafkaConsumer": "queue_engine.kq.consumer",
    "KafkaMessage": "queue_engine.kq.message",
    "KafkaPusher": "queue_engine.kq.pusher",
    "KafkaSecurity": "queue_engine.kq.security",
    "LAST_ERROR": "queue_engine.kq.dead_letter_headers",
    "ORIGINAL_OFFSET": "queue_engine.kq.dead_letter_headers",
    "ORIGINAL_PARTITION": "queue_engine.kq.dead_letter_headers",
    "ORIGINAL_TOPIC": "queue_engine.kq.dead_letter_headers",
    "REASON": "queue_engine.kq.dead_letter_headers",
    "SASL_MECHANISMS": "queue_engine.kq.security",
    "SyncKafkaConsumer": "queue_engine.kq.sync_consumer",
    "SyncKafkaPusher": "queue_engine.kq.pusher",
    "group_lag": "queue_engine.kq.lag",
    "read_dead_letters": "queue_engine.kq.dead_letters",
    "replay_dead_letters": "queue_engine.kq.dead_letters",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "ATTEMPTS",
    "LAST_ERROR",
    "ORIGINAL_OFFSET",
    "ORIGINAL_PARTITION",
    "ORIGINAL_TOPIC",
    "REASON",
    "SASL_MECHANISMS",
    "Delivered",
    "KafkaConsumer",
    "KafkaMessage",
    "KafkaPusher",
    "KafkaSecurity",
    "SyncKafkaConsumer",
    "SyncKafkaPusher",
    "group_lag",
    "read_dead_letters",
    "replay_dead_letters",
]
