"""What the publish API does, once for HTTP and gRPC: delay, at, revoke and push.

The protocol layers only translate requests and answers; the checks that say what to fix
live here, so both protocols behave the same. The producers count publishes themselves
(``queue_messages_published``), so nothing is counted here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from queue_engine.errors import InvalidRequest
from queue_engine.kq import Delivered
from queue_sidecar.publish.targets import PublishTargets


async def delay(
    targets: PublishTargets,
    queue: str,
    body: bytes,
    *,
    delay: float | None = None,
    at: datetime | None = None,
) -> str:
    """Schedule ``body`` after ``delay`` seconds or at ``at``; returns the job id once a quorum has it."""
    producer = targets.delay_queue(queue)
    if (delay is None) == (at is None):
        raise InvalidRequest("give exactly one of delay (e.g. 30s) or at (an RFC 3339 time)")
    if at is not None:
        if at.tzinfo is None:
            raise InvalidRequest(f"at {at.isoformat()} has no zone: add Z or an offset like +02:00")
        now = datetime.now(UTC)
        if at <= now:
            raise InvalidRequest(
                f"at {at.isoformat()} is in the past (now is {now.isoformat(timespec='seconds')}); "
                "give a future time, or use delay=0s to run now"
            )
        return await producer.at(body, at)
    assert delay is not None
    return await producer.delay(body, delay)


async def revoke(targets: PublishTargets, queue: str, job_id: str) -> None:
    """Make sure the job is never delivered, even if a copy is being delivered right now."""
    producer = targets.delay_queue(queue)
    if not job_id:
        raise InvalidRequest("the job id is empty; pass the id that publishing the job returned")
    await producer.revoke(job_id)


async def push(
    targets: PublishTargets,
    queue: str,
    body: bytes,
    *,
    key: bytes | None = None,
    headers: Sequence[tuple[str, bytes]] = (),
) -> Delivered:
    """Write ``body`` to the queue's topic; returns where it landed once the broker acknowledged."""
    pusher = targets.kafka_queue(queue)
    return await pusher.push(body, key=key, headers=list(headers) or None)
