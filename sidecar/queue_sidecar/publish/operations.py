"""What the publish API does, once for HTTP and gRPC: delay, at, revoke, push and job state.

The protocol layers only translate requests and answers; the checks that say what to fix
live here, so both protocols behave the same. The producers count publishes themselves
(``queue_messages_published``), so nothing is counted here. A publish with an idempotency key
answers ``(result, replayed)``; see :mod:`.idempotency`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from queue_engine.errors import InvalidRequest, Unavailable
from queue_engine.kq import Delivered
from queue_sidecar.publish import idempotency
from queue_sidecar.publish.delay_jobs import JobState
from queue_sidecar.publish.idempotency import MemoryKeys, Result
from queue_sidecar.publish.targets import PublishTargets


async def delay(
    targets: PublishTargets,
    queue: str,
    body: bytes,
    *,
    delay: float | None = None,
    at: datetime | None = None,
    idempotency_key: str | None = None,
) -> tuple[Result, bool]:
    """Schedule ``body`` after ``delay`` seconds or at ``at``: ``{"id": ...}`` once a quorum has it."""
    producer = targets.delay_queue(queue)
    if (delay is None) == (at is None):
        raise InvalidRequest("give exactly one of delay (e.g. 30s) or at (an RFC 3339 time)")
    if at is not None and at.tzinfo is None:
        raise InvalidRequest(f"at {at.isoformat()} has no zone: add Z or an offset like +02:00")
    when = f"at={at.astimezone(UTC).isoformat()}" if at is not None else f"delay={delay!r}"
    request = idempotency.fingerprint("delay", queue, when, body)

    async def publish() -> Result:
        if at is not None:
            now = datetime.now(UTC)
            if at <= now:
                raise InvalidRequest(
                    f"at {at.isoformat()} is in the past (now is {now.isoformat(timespec='seconds')}); "
                    "give a future time, or use delay=0s to run now"
                )
            return {"id": await producer.at(body, at)}
        assert delay is not None
        return {"id": await producer.delay(body, delay)}

    if idempotency_key is None:
        return await publish(), False
    store = targets.delay_records(queue).keys
    return await idempotency.once(store, idempotency_key, request, publish)


async def revoke(targets: PublishTargets, queue: str, job_id: str) -> None:
    """Make sure the job is never delivered, even if a copy is being delivered right now."""
    producer = targets.delay_queue(queue)
    if not job_id:
        raise InvalidRequest("the job id is empty; pass the id that publishing the job returned")
    await producer.revoke(job_id)


async def job(targets: PublishTargets, queue: str, job_id: str) -> JobState:
    """A dq job's state (delayed, ready, in_flight, buried, done, revoked), due time and attempts."""
    return await targets.delay_records(queue).state(job_id)


async def push(
    targets: PublishTargets,
    queue: str,
    body: bytes,
    *,
    key: bytes | None = None,
    headers: Sequence[tuple[str, bytes]] = (),
    idempotency_key: str | None = None,
) -> tuple[Result, bool]:
    """Write ``body`` to the queue's topic: ``{"topic", "partition", "offset"}`` once acknowledged."""
    pusher = targets.kafka_queue(queue)
    watch = targets.kafka_watches.get(queue)
    start = targets.kafka_starts.get(queue)

    async def send() -> Delivered:
        return await pusher.push(body, key=key, headers=list(headers) or None)

    async def publish() -> Result:
        down = watch.down if watch is not None else None
        if down is not None:
            raise Unavailable(down)  # at once: the broker would only time out after 30 s
        delivered = await (start.around(send) if start is not None else send())
        return {"topic": delivered.topic, "partition": delivered.partition, "offset": delivered.offset}

    if idempotency_key is None:
        return await publish(), False
    store = targets.kafka_keys.setdefault(queue, MemoryKeys())
    parts = [part for name, value in headers for part in (name, value)]
    request = idempotency.fingerprint("push", queue, key, str(len(headers)), *parts, body)
    return await idempotency.once(store, idempotency_key, request, publish)
