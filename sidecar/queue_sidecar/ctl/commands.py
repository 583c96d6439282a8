"""What each queuectl command does, on the engines the sidecar uses (no logic of its own).

Every command takes the queue's settings and the parsed arguments and returns a
:class:`Report`: the data (printed as is by ``--output json``) and how to show it to a person.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from queue_engine.dq import DelayAdmin, DelayProducer
from queue_engine.errors import InvalidRequest
from queue_engine.kq import (
    ATTEMPTS,
    LAST_ERROR,
    ORIGINAL_OFFSET,
    ORIGINAL_PARTITION,
    ORIGINAL_TOPIC,
    REASON,
    KafkaMessage,
    KafkaPusher,
    group_lag,
    read_dead_letters,
    replay_dead_letters,
)
from queue_sidecar.config import DelayQueueConfig, KafkaQueueConfig
from queue_sidecar.ctl.source import QueueSettings

ALL = 2**31 - 1  # "every buried job" for kick


@dataclass
class Report:
    data: Any
    message: str = ""  # one line for people, printed before the table
    rows: list[dict[str, Any]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    failure: str = ""  # shown after the output; the exit code is then 1 (e.g. no node answered)


Command = Callable[[QueueSettings, argparse.Namespace], Awaitable[Report]]


_INSTEAD_FOR_KAFKA = {
    "delay": "use push",
    "revoke": "a Kafka message cannot be revoked",
    "kick": "use dlq --replay",
}


def _delay_queue(queue: QueueSettings, command: str) -> DelayQueueConfig:
    if not isinstance(queue, DelayQueueConfig):
        instead = _INSTEAD_FOR_KAFKA.get(command, "")
        raise InvalidRequest(f"{command} works on DelayQueues; {queue.name} is a KafkaQueue ({instead})")
    return queue


def _kafka_queue(queue: QueueSettings, command: str) -> KafkaQueueConfig:
    if not isinstance(queue, KafkaQueueConfig):
        raise InvalidRequest(f"{command} works on KafkaQueues; {queue.name} is a DelayQueue (use delay)")
    return queue


def _producer(queue: DelayQueueConfig, args: argparse.Namespace) -> DelayProducer:
    return DelayProducer(
        queue.nodes,
        queue.tube,
        queue.redis_url,
        max_job_bytes=queue.max_job_bytes,
        connect_timeout=min(args.timeout, 5.0),
        name=queue.name,
    )


def _admin(queue: DelayQueueConfig, args: argparse.Namespace) -> DelayAdmin:
    return DelayAdmin(
        queue.nodes, queue.tube, queue.redis_url, name=queue.name, connect_timeout=min(args.timeout, 5.0)
    )


async def delay(queue: QueueSettings, args: argparse.Namespace) -> Report:
    dq = _delay_queue(queue, "delay")
    async with _producer(dq, args) as producer:
        if args.at is not None:
            due = args.at
            job_id = await producer.at(args.body, due)
        else:
            due = datetime.now(UTC) + timedelta(seconds=args.in_)  # as the producer counts: from now
            job_id = await producer.delay(args.body, args.in_)
    due_text = due.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return Report(
        {"queue": dq.name, "id": job_id, "dueAt": due_text},
        f"job {job_id} scheduled on {dq.name}, due at {due_text}",
    )


async def revoke(queue: QueueSettings, args: argparse.Namespace) -> Report:
    dq = _delay_queue(queue, "revoke")
    async with _producer(dq, args) as producer:
        await producer.revoke(args.id)
    return Report({"queue": dq.name, "id": args.id, "revoked": True}, f"job {args.id} revoked on {dq.name}")


async def push(queue: QueueSettings, args: argparse.Namespace) -> Report:
    kq = _kafka_queue(queue, "push")
    pusher = KafkaPusher(
        kq.brokers,
        kq.topic,
        security=kq.security(),
        extra={"message.timeout.ms": int(args.timeout * 1000)},
        name=kq.name,
    )
    try:
        delivered = await pusher.push(args.body, key=args.key, headers=args.header or None)
    finally:
        await pusher.close(timeout=1.0)
    return Report(
        {
            "queue": kq.name,
            "topic": delivered.topic,
            "partition": delivered.partition,
            "offset": delivered.offset,
        },
        f"pushed to {delivered.topic}: partition {delivered.partition}, offset {delivered.offset}",
    )


async def stats(queue: QueueSettings, args: argparse.Namespace) -> Report:
    if isinstance(queue, DelayQueueConfig):
        admin = _admin(queue, args)
        try:
            nodes = await admin.stats()
        finally:
            await admin.close()
        rows = [_node_row(node) for node in nodes]
        failure = "no node answered; check the addresses and that beanstalkd runs"
        return Report(
            {"queue": queue.name, "kind": "DelayQueue", "tube": queue.tube, "nodes": rows},
            f"DelayQueue {queue.name} (tube {queue.tube}) on {len(rows)} node(s)",
            rows,
            ["node", "ready", "delayed", "reserved", "buried", "error"],
            failure if all(row["error"] for row in rows) else "",
        )
    lags = await group_lag(
        queue.brokers, queue.topic, queue.group, security=queue.security(), timeout=args.timeout
    )
    rows = [{"partition": p, "lag": lag} for p, lag in sorted(lags.items())]
    return Report(
        {
            "queue": queue.name,
            "kind": "KafkaQueue",
            "topic": queue.topic,
            "group": queue.group,
            "partitions": rows,
        },
        f"KafkaQueue {queue.name}: topic {queue.topic}, group {queue.group}, total lag {sum(lags.values())}",
        rows,
        ["partition", "lag"],
    )


def _node_row(node: Any) -> dict[str, Any]:
    data = node if isinstance(node, dict) else vars(node)
    return {key: data.get(key) for key in ("node", "ready", "delayed", "reserved", "buried", "error")}


async def kick(queue: QueueSettings, args: argparse.Namespace) -> Report:
    dq = _delay_queue(queue, "kick")
    admin = _admin(dq, args)
    try:
        kicked = await admin.kick(args.count or ALL)
    finally:
        await admin.close()
    return Report({"queue": dq.name, "kicked": kicked}, f"kicked {kicked} buried job(s) on {dq.name}")


async def dlq(queue: QueueSettings, args: argparse.Namespace) -> Report:
    if isinstance(queue, DelayQueueConfig):
        return await (kick(queue, args) if args.replay else _buried(queue, args))
    if args.replay:
        replayed = await replay_dead_letters(
            queue.brokers, queue.dead_letter_topic, args.limit, queue.security()
        )
        return Report(
            {"queue": queue.name, "deadLetterTopic": queue.dead_letter_topic, "replayed": replayed},
            f"replayed {replayed} dead letter(s) from {queue.dead_letter_topic}",
        )
    letters = await read_dead_letters(
        queue.brokers, queue.dead_letter_topic, args.limit or 100, queue.security()
    )
    rows = [_letter_row(letter) for letter in letters]
    return Report(
        {"queue": queue.name, "deadLetterTopic": queue.dead_letter_topic, "deadLetters": rows},
        f"{len(rows)} dead letter(s) in {queue.dead_letter_topic}",
        rows,
        ["partition", "offset", "original", "attempts", "reason", "last_error", "key", "body"],
    )


async def _buried(queue: DelayQueueConfig, args: argparse.Namespace) -> Report:
    admin = _admin(queue, args)
    try:
        records = await admin.buried(args.limit or 100)
    finally:
        await admin.close()
    rows = [
        {
            "id": job.id,
            "node": job.node,
            "attempts": job.attempts,
            "buried_at": job.buried_at.isoformat(timespec="seconds") if job.buried_at else None,
            "error": job.error,
            "body": job.body.decode(errors="replace") if job.body is not None else None,
        }
        for job in records
    ]
    return Report(
        {"queue": queue.name, "buried": rows},
        f"{len(rows)} buried job(s) on {queue.name} (queuectl kick {queue.name} re-queues them)",
        rows,
        ["id", "node", "attempts", "buried_at", "error", "body"],
    )


def _letter_row(letter: KafkaMessage) -> dict[str, Any]:
    def header(name: str) -> str:
        value = letter.header(name)
        return value.decode(errors="replace") if value is not None else ""

    original = f"{header(ORIGINAL_TOPIC)}/{header(ORIGINAL_PARTITION)}@{header(ORIGINAL_OFFSET)}"
    return {
        "partition": letter.partition,
        "offset": letter.offset,
        "original": original,
        "attempts": header(ATTEMPTS),
        "reason": header(REASON),
        "last_error": header(LAST_ERROR),
        "key": letter.key.decode(errors="replace") if letter.key is not None else None,
        "body": letter.value.decode(errors="replace"),
        "headers": {k: v.decode(errors="replace") for k, v in letter.headers},
    }


COMMANDS: dict[str, Command] = {
    "delay": delay,
    "revoke": revoke,
    "push": push,
    "stats": stats,
    "kick": kick,
    "dlq": dlq,
}
