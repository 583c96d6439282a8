"""What the publish API reads from a DelayQueue beyond its producer: job states and idempotency keys.

A job's state comes from its record in the queue's Redis (``dq:{tube}:j:{id}``, see
:mod:`queue_engine.dq.records`): revoked, done and buried are written there, a held lease
means a copy is in the app now, and a retry's backoff is its ``next`` time. Otherwise the job
is delayed or ready by its due time, read from a copy on a node (the id carries the due second
only, which is the fallback when no node answers).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import greenstalk
from redis.exceptions import RedisError

from queue_engine.dq.envelope import Envelope, check_job_id, due_of_job_id
from queue_engine.dq.nodes import NodeConnection, NodeDown, check_nodes, check_tube
from queue_engine.dq.records import JobRecords, parse_copies
from queue_engine.dq.redis_client import connect_redis, describe_redis_error
from queue_engine.errors import NotFound, Unavailable
from queue_sidecar.publish.idempotency import RedisKeys

# Claim actions (queue_engine.dq.records) as the states the API names.
_STATES = {"revoked": "revoked", "done": "done", "buried": "buried", "busy": "in_flight", "wait": "delayed"}


@dataclass(frozen=True)
class JobState:
    id: str
    queue: str
    state: str  # delayed, ready, in_flight, buried, done, revoked
    due: float  # epoch seconds
    attempts: int
    next_attempt: float | None  # epoch seconds, while waiting out a retry's backoff
    last_error: str

    def to_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "id": self.id,
            "queue": self.queue,
            "state": self.state,
            "due_at": _rfc3339(self.due),
            "attempts": self.attempts,
        }
        if self.next_attempt is not None:
            answer["next_attempt_at"] = _rfc3339(self.next_attempt)
        if self.last_error:
            answer["last_error"] = self.last_error
        return answer


class DelayJobs:
    """One DelayQueue's job records and idempotency keys, in its Redis."""

    def __init__(
        self, name: str, nodes: Sequence[str], tube: str, redis_url: str, *, connect_timeout: float = 3.0
    ) -> None:
        self.name = name
        self._nodes = check_nodes(nodes)
        self._tube = check_tube(tube)
        self._timeout = connect_timeout
        self._redis = connect_redis(redis_url, connect_timeout)
        self._records = JobRecords(self._redis, self._tube)
        self.keys = RedisKeys(self._redis, f"dq:{self._tube}:idem:")

    def set_nodes(self, nodes: Sequence[str]) -> None:
        """The nodes that may hold copies now (active and draining)."""
        self._nodes = check_nodes(nodes)

    async def state(self, job_id: str) -> JobState:
        """The job's state, due time and attempts; NotFound when Redis has no record of it."""
        check_job_id(job_id)
        now = time.time()
        try:
            record = await self._records.record(job_id)
            claim = await self._records.peek(job_id, now) if record else None
        except RedisError as exc:
            raise Unavailable(
                f"job {job_id} not looked up: the queue's redis is unreachable ({describe_redis_error(exc)})"
            ) from None
        if claim is None:
            raise NotFound(
                f"no job {job_id} in DelayQueue {self.name!r}: it was not published to this queue, "
                "or its record expired (kept 14 days after the job was due)"
            )
        due = await self._due(job_id, record.get("copies", ""))
        return JobState(
            id=job_id,
            queue=self.name,
            state=_STATES.get(claim.action) or ("delayed" if due > now else "ready"),
            due=due,
            attempts=int(record.get("attempts") or 0),
            next_attempt=claim.until if claim.action == "wait" else None,
            last_error=record.get("error", ""),
        )

    async def _due(self, job_id: str, copies: str) -> float:
        """The exact due time from a copy on a node; the id's due second if none answers."""
        for node, jid, _ in parse_copies(copies):
            if node in self._nodes:
                envelope = await asyncio.to_thread(self._peek, node, jid)
                if envelope is not None and envelope.job_id == job_id:
                    return envelope.due
        return due_of_job_id(job_id)

    def _peek(self, node: str, jid: int) -> Envelope | None:
        conn = NodeConnection(node, self._tube, connect_timeout=self._timeout, io_timeout=self._timeout)
        try:
            return Envelope.decode(conn.call(lambda client: client.peek(jid)).body)
        except (NodeDown, greenstalk.Error):
            return None  # the copy is gone (done, revoked) or the node is down
        finally:
            conn.close()

    async def close(self) -> None:
        await self._redis.aclose()


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
