"""Settling a held copy: after its handler ran, or when the record says it may not run now.

Guarantees:

- Success: the done marker is recorded first, then this copy and the job's other copies are
  deleted (:mod:`~queue_engine.dq.siblings`). If Redis cannot record it before stop's grace
  runs out, the copy is released for another delivery rather than lost.
- Retry: the next attempt's time is recorded for every copy (in the job's record) and the
  lease let go, then this copy is released with the backoff. An attempt given back (the app
  unavailable, a stop) is not counted; hand-backs in a row while the app is unavailable grow
  the backoff instead.
- Drop, or the last attempt failed: the copy is buried first, so that the record names a copy
  that really is kept; then the record is marked buried and the other copies deleted.
- Not now (the claim refused): ``wait`` releases the copy until the retry time; ``busy`` until
  the other attempt's lease would run out (so that this copy takes over if that consumer
  died); ``done`` and ``revoked`` delete it; ``buried`` deletes it, or buries it when it is the
  copy the record keeps (or none is).
- Redis calls are tried again until Redis answers or stop's grace runs out, the reservation
  touched meanwhile; node trouble is logged, never raised (the reservation then goes back to
  beanstalkd with its connection).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import RedisError

from queue_engine import metrics
from queue_engine.dq.consumer_context import KIND, ConsumerContext
from queue_engine.dq.held import Held, burier, releaser, toucher
from queue_engine.dq.leases import TOUCH_EVERY
from queue_engine.dq.records import Claim, Copy, JobRecords
from queue_engine.dq.siblings import Siblings
from queue_engine.policy import DeliveryPolicy, Outcome, Verdict

log = logging.getLogger(__name__)

T = TypeVar("T")


class Settler:
    """Puts each held copy of one consumer where its outcome says."""

    def __init__(
        self, ctx: ConsumerContext, records: JobRecords, siblings: Siblings, policy: DeliveryPolicy
    ) -> None:
        self._ctx = ctx
        self._records = records
        self._siblings = siblings
        self._policy = policy
        queue = ctx.queue
        self._duplicates = metrics.DUPLICATES_SUPPRESSED.labels(queue=queue)
        self._retried = metrics.RETRIED.labels(kind=KIND, queue=queue)
        self._delivered = {
            result: metrics.DELIVERED.labels(kind=KIND, queue=queue, result=result)
            for result in ("success", "retry", "drop", "unavailable")
        }

    async def settle(self, held: Held, claim: Claim, outcome: Outcome) -> None:
        """After the handler of the attempt ``claim`` ran with ``outcome``."""
        attempt = claim.attempt
        result = outcome.verdict.value.lower() if outcome.attempted else "unavailable"
        self._delivered[result].inc()
        job_id = held.envelope.job_id
        if outcome.verdict is Verdict.SUCCESS:
            copies = await self._until_redis(held, lambda: self._records.mark_done(job_id, held.token))
            if copies is not None and held.local is not None:
                held.local.done = True
            if copies is None:
                await self.release(held, 0)  # could not record success: deliver again rather than lose it
                return
            await self._siblings.after_success(held, copies)
            return
        gave_up = outcome.verdict is Verdict.DROP
        if gave_up or (outcome.attempted and attempt >= self._policy.max_attempts):
            await self._bury(held, "drop" if gave_up else "max_attempts", outcome.error, attempt)
            return
        # While the app is down the attempt is given back, so the attempt number stays put: the
        # hand-backs in a row drive the backoff instead, or every job would come back every
        # `initial` seconds for as long as the app is down.
        delay = self._policy.next_delay(attempt if outcome.attempted else claim.unavailable + 1, outcome)
        self._retried.inc()
        # A hand-back while the app is down is not a failed attempt: the delivery side says once
        # that the app is down; a line per waiting job per second would drown the log.
        log.log(
            logging.INFO if outcome.attempted else logging.DEBUG,
            "dq %s: job %s attempt %d failed (%s); retry in %.2fs",
            self._ctx.queue,
            job_id,
            attempt,
            outcome.error,
            delay,
        )
        await self.retry(
            held, delay, attempted=outcome.attempted, error=outcome.error, unavailable=not outcome.attempted
        )

    async def give_back(self, held: Held) -> None:
        """The claimed attempt never started (stopping): not counted, due again at once."""
        await self.retry(held, None, attempted=False, error="")

    async def retry(
        self, held: Held, delay: float | None, *, attempted: bool, error: str, unavailable: bool = False
    ) -> None:
        next_at = None if delay is None else self._ctx.now() + delay
        job_id = held.envelope.job_id

        async def schedule() -> bool:
            await self._records.schedule_retry(
                job_id, held.token, next_at=next_at, attempted=attempted, error=error, unavailable=unavailable
            )
            return True

        if await self._until_redis(held, schedule) is None:
            log.warning(
                "dq %s: retry of %s not recorded (redis down); its lease will expire", self._ctx.queue, job_id
            )
        await self.release(held, delay or 0.0)

    async def not_now(self, held: Held, claim: Claim) -> None:
        """This copy may not be delivered now: put it where it belongs."""
        job_id = held.envelope.job_id
        queue = self._ctx.queue
        if claim.action == "wait":
            await self.release(held, claim.until - self._ctx.now())
        elif claim.action == "busy":
            # Another copy is being handled; come back when its lease would have run out, so
            # that this copy takes over if that consumer died.
            await self.release(held, max(1.0, math.ceil(claim.until)))
        elif claim.action == "done":
            if await held.conn.delete_soon(held.job.id, socket=held.socket):
                self._duplicates.inc()
            log.debug("dq %s: copy %s of done job %s deleted", queue, held.where, job_id)
        elif claim.action == "revoked":
            await held.conn.delete_soon(held.job.id, socket=held.socket)
            log.info("dq %s: job %s was revoked; copy %s deleted", queue, job_id, held.where)
        elif claim.action == "exhausted":
            # A poison job: each of its attempts took its consumer down (crash, OOM kill) or
            # ended unrecorded. Buried unrun, as a failure at the last attempt would be.
            error = f"{claim.attempt} attempts ended without an outcome (the consumer crashed or was killed)"
            await self._bury(held, "max_attempts", error, claim.attempt)
        elif claim.action == "buried":
            if claim.kept and claim.kept != held.where:
                await held.conn.delete_soon(held.job.id, socket=held.socket)  # one buried copy is enough
            else:
                await self._ctx.quietly(held.conn, burier(held.socket, held.job.id))
        else:
            log.error("dq %s: unknown claim %r for job %s; releasing it", queue, claim.action, job_id)
            await self.release(held, 1.0)

    async def hand_back(self, held: Held, due: float) -> None:
        """Release a copy that was not delivered, for its due time."""
        await self.release(held, due - self._ctx.now())

    async def release(self, held: Held, delay: float) -> None:
        seconds = max(0, math.floor(delay))
        await self._ctx.quietly(held.conn, releaser(held, seconds))

    async def _bury(self, held: Held, reason: str, error: str, attempt: int) -> None:
        job_id = held.envelope.job_id
        # Bury first: the record then names a copy that really is kept, and the other copies
        # may delete themselves. If this node is gone, they bury themselves instead.
        kept = await self._ctx.quietly(held.conn, burier(held.socket, held.job.id))

        async def mark() -> list[Copy]:
            return await self._records.mark_buried(
                job_id, held.token, error=error, copy=held.where if kept else "", now=self._ctx.now()
            )

        copies = await self._until_redis(held, mark)
        if copies is not None and kept:
            await self._siblings.after_bury(held, copies)
        metrics.DEAD_LETTERED.labels(kind=KIND, queue=self._ctx.queue, reason=reason).inc()
        log.warning(
            "dq %s: job %s buried after attempt %d (%s): %s", self._ctx.queue, job_id, attempt, reason, error
        )

    async def _until_redis(self, held: Held, op: Callable[[], Awaitable[T]]) -> T | None:
        """Run ``op`` until Redis answers; None if stop's grace ran out first."""
        last_touch = time.monotonic()
        while True:
            try:
                return await op()
            except RedisError as exc:
                self._ctx.note_redis_error(exc)
            if time.monotonic() > self._ctx.deadline:
                return None
            if time.monotonic() - last_touch > TOUCH_EVERY:
                await self._ctx.quietly(held.conn, toucher(held))
                last_touch = time.monotonic()
            await asyncio.sleep(0.2)
