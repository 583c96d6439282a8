"""What each queuectl command does, on the engines the sidecar uses (no queue logic of its own).

Every command takes the queue's settings and the parsed arguments and returns a
:class:`~queue_sidecar.ctl.base.Report`. Listing and per-item commands for buried jobs and dead
letters live in :mod:`queue_sidecar.ctl.items`.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

from queue_engine.dq.records import RETENTION_S
from queue_engine.errors import NotFound
from queue_engine.kq import KafkaPusher, group_lag
from queue_sidecar.config import DelayQueueConfig
from queue_sidecar.ctl import views
from queue_sidecar.ctl.base import Command, Report, admin, delay_queue, force_base64, kafka_queue, producer
from queue_sidecar.ctl.items import buried, dlq
from queue_sidecar.ctl.output import timestamp
from queue_sidecar.ctl.source import QueueSettings

ALL = 2**31 - 1  # "every buried job" for kick


async def delay(queue: QueueSettings, args: argparse.Namespace) -> Report:
    dq = delay_queue(queue, "delay")
    async with producer(dq, args) as publisher:
        if args.at is not None:
            due = args.at
            job_id = await publisher.at(args.body, due)
        else:
            due = datetime.now(UTC) + timedelta(seconds=args.in_)  # as the producer counts: from now
            job_id = await publisher.delay(args.body, args.in_)
    due_text = timestamp(due)
    return Report(
        {"queue": dq.name, "id": job_id, "due_at": due_text},
        f"job {job_id} scheduled on {dq.name}, due at {due_text}",
    )


async def revoke(queue: QueueSettings, args: argparse.Namespace) -> Report:
    """Revoke, saying what the job was: a tombstone for a pending job, or for an unknown id
    whose record may have been lost (exit 1 then, since no such job is known)."""
    dq = delay_queue(queue, "revoke")
    checker = admin(dq, args)
    try:
        info = await checker.job(args.id)
    finally:
        await checker.close()
    data: dict[str, Any] = {"queue": dq.name, "id": args.id, "previous_state": info.state}
    if info.state in ("done", "revoked") or (info.state == "unknown" and not info.record_may_be_lost):
        data.update(revoked=info.state == "revoked", tombstone=False)
        if info.state == "revoked":
            return Report(data, f"job {args.id} on {dq.name} was already revoked")
        if info.state == "done":
            failure = f"job {args.id} on {dq.name} already ran (done); nothing to revoke"
        else:
            days = RETENTION_S // 86400
            failure = (
                f"no job {args.id} on {dq.name} (already done, revoked, or never published; "
                f"it was due more than {days} days ago, so nothing was written)"
            )
        return Report(data, failure=failure)
    if info.state == "buried":
        repair = admin(dq, args)  # also off the buried list, copies deleted
        try:
            await repair.delete_job(args.id)
        finally:
            await repair.close()
    else:
        async with producer(dq, args) as publisher:
            await publisher.revoke(args.id)
    data["tombstone"] = True
    if info.state == "unknown":
        data["revoked"] = False
        return Report(
            data,
            failure=(
                f"no job {args.id} on {dq.name} (already done, revoked, or never published); "
                "its record may have been lost, so a tombstone was written: if the job exists it never runs"
            ),
        )
    data["revoked"] = True
    return Report(data, f"job {args.id} revoked on {dq.name} (it was {info.state})")


async def get(queue: QueueSettings, args: argparse.Namespace) -> Report:
    dq = delay_queue(queue, "get")
    reader = admin(dq, args)
    try:
        info = await reader.job(args.id)
    finally:
        await reader.close()
    if not info.found:
        raise NotFound(
            f"no job {args.id} on {dq.name} (never published, its record expired "
            f"{RETENTION_S // 86400} days after its due time, or the record was lost)"
        )
    view = views.job(info, dq.name, force_base64(args))
    return Report(view, fields=views.job_fields(view))


async def push(queue: QueueSettings, args: argparse.Namespace) -> Report:
    kq = kafka_queue(queue, "push")
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
        reader = admin(queue, args)
        try:
            nodes = await reader.stats()
        finally:
            await reader.close()
        rows = [
            {
                "node": node.node,
                "ready": node.ready,
                "delayed": node.delayed,
                "reserved": node.reserved,
                "buried": node.buried,
                "error": node.error,
            }
            for node in nodes
        ]
        failure = "no node answered; check the addresses and that beanstalkd runs"
        return Report(
            {"queue": queue.name, "kind": "DelayQueue", "tube": queue.tube, "nodes": rows},
            f"DelayQueue {queue.name} (tube {queue.tube}) on {len(rows)} node(s)",
            rows,
            ["node", "ready", "delayed", "reserved", "buried", "error"],
            failure=failure if all(row["error"] for row in rows) else "",
        )
    lags = await group_lag(
        queue.brokers, queue.topic, queue.group, security=queue.security(), timeout=args.timeout
    )
    rows = [{"partition": p, "lag": lag} for p, lag in sorted(lags.items())]
    total = sum(lags.values())
    return Report(
        {
            "queue": queue.name,
            "kind": "KafkaQueue",
            "topic": queue.topic,
            "group": queue.group,
            "dead_letter_topic": queue.dead_letter_topic,
            "total_lag": total,
            "partitions": rows,
        },
        f"KafkaQueue {queue.name}: topic {queue.topic}, group {queue.group}, total lag {total}",
        rows,
        ["partition", "lag"],
    )


async def kick(queue: QueueSettings, args: argparse.Namespace) -> Report:
    dq = delay_queue(queue, "kick")
    repair = admin(dq, args)
    try:
        kicked = await repair.kick(args.count or ALL)
    finally:
        await repair.close()
    return Report({"queue": dq.name, "kicked": kicked}, f"kicked {kicked} buried job(s) on {dq.name}")


COMMANDS: dict[str, Command] = {
    "delay": delay,
    "revoke": revoke,
    "get": get,
    "push": push,
    "stats": stats,
    "kick": kick,
    "buried": buried,
    "dlq": dlq,
}
