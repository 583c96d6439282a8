"""Delivering one held copy: from its reservation to the handler, then to settling.

For each copy held (a task of its own; calls on it go to the socket that reserved it):

1. wait until the exact due time (beanstalkd delays are whole seconds, rounded down);
2. if this consumer already holds another copy of the job, wait for that one's outcome;
3. claim the job in Redis (tombstone, done/buried markers, retry time, lease, attempt count:
   one atomic script, see :mod:`~queue_engine.dq.records`) and take a handler slot, the claim
   first while slots turn over, else the slot first; a copy whose job is in progress elsewhere
   waits, held, for the outcome;
4. run the handler while the lease is renewed and the reservation touched
   (:mod:`~queue_engine.dq.leases`);
5. settle (:mod:`~queue_engine.dq.settling`).

Guarantees: at most ``concurrency`` handlers run at once. While slots turn over, copies are
claimed ahead of a free slot (at most ``CLAIMS_AHEAD`` x ``concurrency`` at once, each waiting
at most ``AHEAD_LAPSE`` for a slot, then giving its attempt and its copy back); otherwise the
slot comes before the claim. So a consumer that crashes has counted attempts for the jobs it
was running, plus at most the copies it claimed ahead in its last ``AHEAD_LAPSE`` seconds.
Never early: a copy runs only once Redis's clock reached its due time. At stop, copies not
started are handed back for their due time (claimed ones with their attempts given back), and
a handler still running when the grace runs out is cancelled and its attempt given back.
A bug in this path hands the copy back (its connection is dropped), never stops the consumer.
"""

from __future__ import annotations

import asyncio
import logging
import time
import types
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from queue_engine import eager, metrics
from queue_engine.deadlines import CallTimedOut, Deadlines
from queue_engine.dq.beanstalk import Connection, Job
from queue_engine.dq.consumer_context import KIND, ConsumerContext
from queue_engine.dq.envelope import Envelope
from queue_engine.dq.held import Held, Local, NodeLine, Reserved, Ticket, burier
from queue_engine.dq.job import DelayJob
from queue_engine.dq.leases import LeaseKeeper
from queue_engine.dq.node_io import AsyncNodeConnection
from queue_engine.dq.records import Claim, JobRecords
from queue_engine.dq.settling import Settler
from queue_engine.dq.slots import HandlerSlots
from queue_engine.policy import DeliveryPolicy, Outcome

log = logging.getLogger(__name__)

HOLD_LIMIT = 2.0  # a retry due within this many seconds is waited for while holding the copy
BUSY_HOLD = 5.0  # seconds a copy waits, held, for another copy's attempt to end
CLAIMS_AHEAD = 4  # per handler slot: copies claimed (or being claimed) and waiting for a slot
AHEAD_LAPSE = 0.2  # seconds a copy claimed ahead waits for a slot before giving its claim back

Handler = Callable[[DelayJob], Awaitable[Outcome]]


class Delivery:
    """Delivers the copies one consumer holds (see the module docs)."""

    def __init__(
        self,
        ctx: ConsumerContext,
        *,
        handler: Handler,
        policy: DeliveryPolicy,
        concurrency: int,
        records: JobRecords,
        keeper: LeaseKeeper,
        settler: Settler,
    ) -> None:
        self._ctx = ctx
        self._handler = handler
        self._policy = policy
        self._records = records
        self._keeper = keeper
        self._settler = settler
        self._slots = HandlerSlots(concurrency)
        self._ahead = 0  # copies claimed (or being claimed) ahead of a slot, waiting for one
        self._ahead_limit = CLAIMS_AHEAD * concurrency
        self._loop = asyncio.get_running_loop()
        # Handlers that await are cut at policy.timeout by one watchdog, not a timer per call.
        self._deadlines = Deadlines(self._loop)
        self.holders: set[asyncio.Task[None]] = set()  # a task per held copy
        self._leaders: dict[str, Local] = {}  # job id -> our first copy's progress
        self._instance = uuid.uuid4().hex[:12]  # lease tokens: this consumer, then a counter
        self._tokens = 0
        self.claimed: dict[str, Held] = {}  # by token: copies whose attempt has not settled
        # Holders running a handler; stop cancels those still running when the grace runs out
        # (and notes them in _cut). _all_ended is made only when stop waits for them: no
        # future per handler.
        self._inflight: set[asyncio.Task[Any]] = set()
        self._all_ended: asyncio.Future[None] | None = None
        self._cut: set[asyncio.Task[Any]] = set()
        queue = ctx.queue
        self._received = metrics.RECEIVED.labels(kind=KIND, queue=queue)
        self._lateness = metrics.DQ_LATENESS.labels(queue=queue)
        self._in_flight = metrics.IN_FLIGHT.labels(kind=KIND, queue=queue)
        self._latency = metrics.DELIVERY_LATENCY.labels(kind=KIND, queue=queue)
        self._duplicates = metrics.DUPLICATES_SUPPRESSED.labels(queue=queue)

    # -- stop ------------------------------------------------------------------------------

    def close(self) -> None:
        """No watchdog timer left behind (the handlers all ended)."""
        self._deadlines.close()

    def stopping(self) -> None:
        """Copies waiting for another copy of ours hand themselves back now."""
        for local in self._leaders.values():
            local.settled.set()

    async def let_handlers_finish(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for running handlers; cancel those still running (their
        attempts are given back)."""
        if not self._inflight:
            return
        self._all_ended = asyncio.get_running_loop().create_future()
        await asyncio.wait({self._all_ended}, timeout=grace)
        for task in list(self._inflight):
            self._cut.add(task)
            task.cancel()

    # -- one copy --------------------------------------------------------------------------

    def start(self, line: NodeLine, conn: AsyncNodeConnection, got: Reserved) -> None:
        """Deliver the copy just reserved on ``conn`` (its permit on ``line`` becomes its ticket)."""
        line.hold(conn)
        # The task leaves the set itself, at its end: no done callback (a loop pass) per copy.
        self.holders.add(asyncio.create_task(self._hold_then_return(line, conn, got)))

    async def _hold_then_return(self, line: NodeLine, conn: AsyncNodeConnection, got: Reserved) -> None:
        ticket = Ticket(line, len(got[1].body))  # the worker's permit, now this copy's
        try:
            await self._hold(conn, *got, ticket)
        except Exception:
            # A bug must not stop the consumer: dropping the connection hands the reservation
            # back to beanstalkd (with the others on it), and the lease (if any) expires.
            log.exception(
                "dq %s: failed handling a copy on %s; handing it back", self._ctx.queue, conn.address
            )
            conn.close()
        finally:
            ticket.let_go()
            line.let_go(conn)
            self.holders.discard(asyncio.current_task())

    async def _hold(self, conn: AsyncNodeConnection, socket: Connection, job: Job, ticket: Ticket) -> None:
        ctx = self._ctx
        envelope = Envelope.decode(job.body)
        if envelope is None:
            log.warning(
                "dq %s: job %s/%s has no dq header; burying it for inspection",
                ctx.queue,
                conn.address,
                job.id,
            )
            await ctx.quietly(conn, burier(socket, job.id))
            return
        self._tokens += 1
        held = Held(conn, socket, job, envelope, token=f"{self._instance}-{self._tokens}", ticket=ticket)
        self._keeper.watch(held)
        job_id = envelope.job_id
        try:
            local = self._leaders.get(job_id)
            if local is not None:
                # This consumer already holds another copy of the job: wait for that one to
                # settle rather than asking Redis again and again.
                local.followers[(conn.address, job.id)] = (conn, socket)
                ticket.waiting()
                if not ctx.stopping.is_set():
                    await local.settled.wait()  # stop sets it too
                if ctx.stopping.is_set():
                    await self._settler.hand_back(held, envelope.due)
                elif local.done:
                    if (conn.address, job.id) in local.deleted:
                        pass  # the first copy deleted this one along with its own
                    elif await conn.delete_soon(job.id, socket=socket):
                        self._duplicates.inc()
                else:
                    await self._process(held)
                return
            self._leaders[job_id] = held.local = Local()
            try:
                await self._process(held)
            finally:
                del self._leaders[job_id]
                held.local.settled.set()
        finally:
            await self._keeper.stop(held)

    async def _process(self, held: Held) -> None:
        ctx = self._ctx
        due = held.envelope.due
        busy_since: float | None = None
        while True:
            if due > ctx.now():
                held.ticket.waiting()
            if not await ctx.sleep_until(due):
                await self._settler.hand_back(held, due)
                return
            if self._slots.busy() and busy_since is not None:
                try:
                    # Polling a job another copy is handling, and all slots busy: a look (no
                    # lease, no slot) is enough to learn that it is still handled, done or
                    # revoked. A first try waits for a slot and claims at once: under load a
                    # look first would cost a Redis call per job for nothing.
                    status = await self._records.peek(held.envelope.job_id, ctx.now())
                except RedisError as exc:
                    ctx.note_redis_error(exc)
                    # Come back a little later, once holders have re-taken their leases.
                    await self._settler.release(held, max(1.0, due - ctx.now()))
                    return
            else:
                status = Claim("free")
            if status.action == "free":
                refused = await self._claim_and_deliver(held, due)
                if refused is None:
                    return
                status = refused
            if status.action == "wait" and status.until - ctx.now() <= HOLD_LIMIT:
                due = status.until  # a retry due soon: wait for it holding the copy
                continue
            if status.action == "busy":
                # Another copy is being handled. Holding this one a while lets it see the
                # outcome (done: delete; retry: wait) instead of coming back later as a stray.
                busy_since = busy_since or time.monotonic()
                held_for = time.monotonic() - busy_since
                if held_for < BUSY_HOLD:
                    due = ctx.now() + min(0.5, 0.05 + held_for / 4)
                    continue
            await self._settler.not_now(held, status)
            return

    async def _claim_and_deliver(self, held: Held, due: float) -> Claim | None:
        """Claim the job's lease, take a handler slot and deliver; the claim if refused.

        While slots are turning over (one free, or one freed within ``AHEAD_LAPSE``) and no copy
        that still has to claim waits for one, a due copy is claimed ahead of a free slot: claims
        leave in batches as copies come due, and a slot that frees starts a claimed job at once,
        so handler starts per second are not bounded by ``concurrency`` / claim round trip. At
        most ``CLAIMS_AHEAD`` x ``concurrency`` copies are claimed (or being claimed) and
        waiting for a slot (counted apart from the node's prefetch, so reserving goes on
        meanwhile); one that gets no slot within ``AHEAD_LAPSE`` gives its attempt back and its
        copy back to the node (ready at once, for any consumer). Otherwise (all slots held by
        handlers that run on) the slot comes first and then the claim. So a consumer that
        crashes has counted attempts for the jobs it was running, plus those it claimed ahead
        in its last ``AHEAD_LAPSE`` seconds (the jobs waiting beside a crash-looping poison job
        keep their attempts, unless claimed just before a crash; a job whose ``max_attempts``
        all ended without an outcome is buried unrun, see settling.not_now). A clean stop gives back the
        attempts of claimed copies that did not start.
        """
        if self._ahead < self._ahead_limit:
            slots = self._slots
            # Not past copies already waiting for a slot (they would wait ever longer).
            turning = not slots.busy() or self._loop.time() - slots.freed_at < AHEAD_LAPSE
            if turning and not slots.queued_unclaimed():
                self._ahead += 1
                # Copies coming due one by one: counted among the copies claimed ahead now
                # (bounded), not the prefetch, so the node's next copies are reserved meanwhile
                # instead of after this claim. Not with a backlog: there the permits freed
                # together by handlers starting make one batch of reserves, not one each.
                if not held.ticket.line.backlog:
                    held.ticket.waiting()
                try:
                    claim = await self._claim(held, due)
                    if claim is None or claim.action != "go":
                        return claim
                    got_slot = await slots.take(claimed=True, within=AHEAD_LAPSE)
                finally:
                    self._ahead -= 1
                if got_slot:
                    await self._deliver(held, claim, due)
                    return None
                # No slot in time: the attempt goes back, and the copy to its node, ready at once
                # for any consumer (waiting here, it would be hoarded beyond the prefetch).
                await self._keeper.stop(held)  # no renewal may take the lease again
                held.claimed = False
                self.claimed.pop(held.token, None)
                await self._settler.give_back(held)
                return None
        if not await self._slots.take(claimed=False):
            raise AssertionError("an unbounded wait for a slot ended without one")
        try:
            claim = await self._claim(held, due)
        except BaseException:
            self._slots.release()
            raise
        if claim is None or claim.action != "go":
            self._slots.release()
            return claim
        await self._deliver(held, claim, due)
        return None

    async def _claim(self, held: Held, due: float) -> Claim | None:
        """The claim's answer (a go marks ``held`` claimed); None if the copy was handed back."""
        ctx = self._ctx
        if ctx.stopping.is_set():
            await self._settler.hand_back(held, due)
            return None
        try:
            claim = await self._records.claim(
                held.envelope.job_id, held.token, self._keeper.lease_ttl, ctx.now(), self._policy.max_attempts
            )
        except RedisError as exc:
            ctx.note_redis_error(exc)
            await self._settler.release(held, max(1.0, due - ctx.now()))
            return None
        if claim.action == "go":
            held.claimed = True
            self.claimed[held.token] = held
        return claim

    async def _deliver(self, held: Held, claim: Claim, due: float) -> None:
        """Run the handler of the attempt ``claim`` in the slot taken, then settle."""
        ctx = self._ctx
        try:
            held.ticket.let_go()  # in the handler: no longer prefetched
            try:
                # Stopping meanwhile: the attempt is given back below, never started.
                outcome = None if ctx.stopping.is_set() else await self._run_handler(held, claim.attempt)
            finally:
                self._slots.release()
            await self._keeper.stop(held)  # settling owns the connection and the lease now
            if outcome is None:  # stopping: give the attempt back
                await self._settler.give_back(held)
            else:
                await self._settler.settle(held, claim, outcome)
        finally:
            self.claimed.pop(held.token, None)

    # -- the handler -----------------------------------------------------------------------

    async def _run_handler(self, held: Held, attempt: int) -> Outcome | None:
        """The handler's outcome; None when stop's grace ran out first."""
        envelope = held.envelope
        job = DelayJob(envelope.job_id, envelope.body, attempt, envelope.due_at, self._ctx.queue)
        if attempt == 1:
            # Messages, not attempts (as for Kafka): retries are counted in queue_messages_retried.
            self._received.inc()
            self._lateness.observe(max(0.0, self._ctx.now() - envelope.due))
        gauge = self._in_flight
        gauge.inc()
        started = time.monotonic()
        # In this task (no task per call): stop cancels it if the grace runs out.
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        try:
            outcome = await self._call_handler(job)
        except asyncio.CancelledError:
            if task not in self._cut:
                raise
            outcome = None
        finally:
            self._inflight.discard(task)
            if not self._inflight and self._all_ended is not None and not self._all_ended.done():
                self._all_ended.set_result(None)
            gauge.dec()
            self._latency.observe(time.monotonic() - started)
        if task in self._cut:
            # Stop's grace ran out: hand the job back without counting this attempt (also
            # when the handler swallowed the cancellation).
            self._cut.discard(task)
            task.uncancel()
            log.info("dq %s: job %s handed back at stop", self._ctx.queue, job.id)
            return None
        return outcome

    async def _call_handler(self, job: DelayJob) -> Outcome:
        queue = self._ctx.queue
        deadline = self._loop.time() + self._policy.timeout
        try:
            called = self._handler(job)
            if isinstance(called, types.CoroutineType):
                # Its first step runs here: a handler that never really awaits (or awaits only
                # what is done) ends in it, with no deadline noted. Synchronous code cannot be
                # cut anyway; the rest, from its first real wait on, is cut at the deadline.
                first = eager.start(called)
                if isinstance(first, eager.Started):
                    outcome = await self._deadlines.run(eager.resume(first), deadline)
                else:
                    outcome = first
            else:
                outcome = await self._deadlines.run(called, deadline)
        except CallTimedOut:
            return Outcome.retry(f"handler took longer than {self._policy.timeout:g}s")
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # stop cancels us: _run_handler hands the job back
            # The handler raised it itself (a cancelled call of its own): a failed attempt
            # like any other, not the end of this worker with the reservation still held.
            log.warning("dq %s: handler raised CancelledError on job %s", queue, job.id)
            return Outcome.retry("handler raised CancelledError")
        except Exception as exc:
            log.warning("dq %s: handler raised on job %s: %r", queue, job.id, exc)
            return Outcome.retry(f"handler raised {type(exc).__name__}: {exc}")
        if not isinstance(outcome, Outcome):
            log.error("dq %s: handler returned %r, not an Outcome; retrying", queue, outcome)
            return Outcome.retry(f"handler returned {type(outcome).__name__}, expected Outcome")
        return outcome
