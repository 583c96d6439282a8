"""go-queue's kq: a Kafka pusher and consumer on confluent-kafka, at-least-once and ordered per key.

See ``docs/kq.md``. Import from here::

    from queue_engine.kq import KafkaPusher, KafkaConsumer, KafkaMessage, KafkaSecurity
"""

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
