"""What every queuectl command shares: its result (:class:`Report`) and the engines it talks to."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from queue_engine.dq import DelayAdmin, DelayProducer
from queue_engine.errors import InvalidRequest
from queue_sidecar.config import DelayQueueConfig, KafkaQueueConfig
from queue_sidecar.ctl.source import QueueSettings


@dataclass
class Report:
    """A command's result: ``data`` for ``-o json|yaml``; the rest is how a table shows it."""

    data: Any
    message: str = ""  # one line for people, printed before the table
    rows: list[dict[str, Any]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    wide_columns: list[str] = field(default_factory=list)  # added by -o wide
    fields: list[tuple[str, Any]] = field(default_factory=list)  # one object, shown as "Label: value"
    after: str = ""  # the next page's --after value, printed after the table
    failure: str = ""  # shown after the output; the exit code is then 1 (e.g. no node answered)


Command = Callable[[QueueSettings, argparse.Namespace], Awaitable[Report]]

_INSTEAD_FOR_KAFKA = {
    "delay": "use push",
    "revoke": "a Kafka message cannot be revoked",
    "kick": "use dlq {name} replay",
    "get": "use dlq {name} get PARTITION:OFFSET",
    "buried": "use dlq {name}",
}


def delay_queue(queue: QueueSettings, command: str) -> DelayQueueConfig:
    if not isinstance(queue, DelayQueueConfig):
        instead = _INSTEAD_FOR_KAFKA.get(command, "").format(name=queue.name)
        raise InvalidRequest(f"{command} works on DelayQueues; {queue.name} is a KafkaQueue ({instead})")
    return queue


def kafka_queue(queue: QueueSettings, command: str) -> KafkaQueueConfig:
    if not isinstance(queue, KafkaQueueConfig):
        raise InvalidRequest(f"{command} works on KafkaQueues; {queue.name} is a DelayQueue (use delay)")
    return queue


def producer(queue: DelayQueueConfig, args: argparse.Namespace) -> DelayProducer:
    return DelayProducer(
        queue.membership().active,
        queue.tube,
        queue.redis_url,
        max_job_bytes=queue.max_job_bytes,
        connect_timeout=min(args.timeout, 5.0),
        name=queue.name,
    )


def admin(queue: DelayQueueConfig, args: argparse.Namespace) -> DelayAdmin:
    return DelayAdmin(
        queue.membership().all,
        queue.tube,
        queue.redis_url,
        name=queue.name,
        connect_timeout=min(args.timeout, 5.0),
    )


def force_base64(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "body_encoding", "auto") == "base64")
