"""Consuming dq jobs: each job reaches the handler once in normal operation, at least once under failures.

This module is the delivery loop. Its parts, each with its guarantees in its own docstring:
per-node I/O (:mod:`~queue_engine.dq.beanstalk`: the protocol, pipelined;
:mod:`~queue_engine.dq.node_io`: reconnects, hung-node isolation, node identity;
:mod:`~queue_engine.dq.held`: reservations and the connections holding them) and the Redis
decisions (:mod:`~queue_engine.dq.records`: one atomic script per decision;
:mod:`~queue_engine.dq.redis_batch`: those made together share a round trip;
:mod:`~queue_engine.dq.clock`: due decisions follow Redis's clock) and the clean-up after
settling (:mod:`~queue_engine.dq.siblings`: the other copies of a settled job deleted).

Shape: per node, a few workers wait in ``reserve`` (each on a connection holding nothing) so
that a job is seen the moment it becomes ready, then take the copies ready at that moment on
the same connection. Each reserved copy gets a task of its own; calls on it go to the socket
that reserved it (a reservation can only be deleted, released or buried there). Normally only
a job's working copy is ready: its standbys are due later (see
:mod:`~queue_engine.dq.producer`) and are deleted after the success. At most ``concurrency``
handler calls run at once across all nodes. For each copy held:

1. wait until the exact due time (beanstalkd delays are whole seconds, rounded down);
2. if this consumer already holds another copy of the job, wait for that one's outcome;
3. claim the job in Redis (tombstone, done/buried markers, retry time, lease, attempt count:
   one atomic script, see :mod:`queue_engine.dq.records`); a copy whose job is in progress
   elsewhere waits, held, for the outcome;
4. run the handler while renewing the lease and touching the reservation;
5. settle: done (mark done, delete this copy and the other copies), retry (schedule the next
   attempt for every copy, release with backoff), or bury.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.exceptions import RedisError

from queue_engine import metrics
from queue_engine.dq.beanstalk import BeanstalkError, Connection, Job
from queue_engine.dq.clock import RedisClock
from queue_engine.dq.envelope import Envelope
from queue_engine.dq.held import (
    RESERVE_TIMEOUT,
    Held,
    Local,
    NodeLine,
    Reserved,
    Ticket,
    burier,
    releaser,
    reserve_ready,
    reserve_waiting,
    toucher,
)
from queue_engine.dq.job import DelayJob
from queue_engine.dq.membership import Membership
from queue_engine.dq.node_io import AsyncNodeConnection, Op
from queue_engine.dq.nodes import NodeDown, check_nodes, check_tube, shared_health
from queue_engine.dq.producer import JOB_TTR
from queue_engine.dq.records import Claim, Copy, JobRecords
from queue_engine.dq.redis_client import (
    DEFAULT_POOL,
    connect_redis,
    describe_redis_error,
    durability_warnings,
)
from queue_engine.dq.siblings import Siblings
from queue_engine.errors import ConfigError
from queue_engine.policy import DeliveryPolicy, Outcome, Verdict

log = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[DelayJob], Awaitable[Outcome]]

RESERVERS_PER_NODE = 4  # connections per node blocked in reserve, waiting for the next ready job
RESERVE_BATCH = 16  # non-blocking reserves sent together when several copies are ready
HOLD_LIMIT = 2.0  # a retry due within this many seconds is waited for while holding the copy
BUSY_HOLD = 5.0  # seconds a copy waits, held, for another copy's attempt to end
STOP_MARGIN = 10.0  # seconds past the grace that stop() waits before cancelling what is left
# A node call running this long at stop is stuck on a hung node (a reserve returns within
# RESERVE_TIMEOUT, other calls within milliseconds): its socket is cut.
STUCK_AFTER = RESERVE_TIMEOUT + 0.5
KIND = "delay"
TOUCH_EVERY = JOB_TTR / 4  # seconds between touches of a held reservation


class DelayConsumer:
    """Runs ``handler`` for each due job of ``tube``; see the module docs for how."""

    def __init__(
        self,
        nodes: Sequence[str],
        tube: str,
        redis_url: str,
        handler: Handler,
        *,
        policy: DeliveryPolicy | None = None,
        concurrency: int = 8,
        name: str | None = None,
        lease_ttl: float = 10.0,
        connect_timeout: float = 3.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._nodes = check_nodes(nodes)
        self._tube = check_tube(tube)
        if not callable(handler):
            raise ConfigError("handler must be an async function taking a DelayJob and returning an Outcome")
        if concurrency < 1:
            raise ConfigError(f"concurrency is {concurrency}; use 1 or more")
        if lease_ttl < 1:
            raise ConfigError(f"lease_ttl is {lease_ttl}s; use 1s or more")
        self._redis_url = redis_url
        connect_redis(redis_url, connect_timeout)  # refuse a bad URL now, not when run() starts
        self._handler = handler
        self._policy = policy or DeliveryPolicy()
        self._concurrency = concurrency
        self.queue = name or tube
        self._lease_ttl = lease_ttl
        self._connect_timeout = connect_timeout
        self._renew_every = min(TOUCH_EVERY, lease_ttl / 3)
        self._redis_clock = RedisClock(self.queue, clock)  # due decisions follow Redis's clock
        self._running = False
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._closing = asyncio.Event()
        self._deadline = math.inf
        self._redis_error: str | None = None
        self._node_errors: dict[str, str] = {}
        # Shared by every connection to a node (and with this process's producers): one timeout
        # makes the node suspect, and calls on it then fail at once instead of each waiting out
        # a timeout (see nodes.py).
        self._health = {node: shared_health(node) for node in self._nodes}
        self._reservers = min(concurrency, RESERVERS_PER_NODE)
        self._control: dict[str, AsyncNodeConnection] = {}
        self._lines: dict[str, NodeLine] = {}
        self._workers: dict[str, list[asyncio.Task[None]]] = {}
        # Holders running a handler, each with the future its handler's end sets; stop() cancels
        # those still running when the grace runs out (and notes them in _cut).
        self._inflight: dict[asyncio.Task[Any], asyncio.Future[None]] = {}
        self._cut: set[asyncio.Task[Any]] = set()
        self._sleepers: set[asyncio.Future[None]] = set()  # pauses that stop() cuts short
        # Per node: copies reserved and waiting for a handler slot, at most (the reserving
        # workers' own permits on top: each holds one while it waits in reserve).
        self._prefetch = concurrency + self._reservers
        self._max_waiting = max(1024, 8 * concurrency)  # per node: copies waiting for their due time
        self._holders: set[asyncio.Task[None]] = set()
        self._leaders: dict[str, Local] = {}  # job id -> our first copy's progress
        self._instance = uuid.uuid4().hex[:12]  # lease tokens: this consumer, then a counter
        self._tokens = 0
        self._claimed: dict[str, Held] = {}  # by token: copies whose attempt has not settled
        self._received = metrics.RECEIVED.labels(kind=KIND, queue=self.queue)
        self._lateness = metrics.DQ_LATENESS.labels(queue=self.queue)
        self._in_flight = metrics.IN_FLIGHT.labels(kind=KIND, queue=self.queue)
        self._latency = metrics.DELIVERY_LATENCY.labels(kind=KIND, queue=self.queue)
        self._duplicates = metrics.DUPLICATES_SUPPRESSED.labels(queue=self.queue)
        self._delivered = {
            result: metrics.DELIVERED.labels(kind=KIND, queue=self.queue, result=result)
            for result in ("success", "retry", "drop", "unavailable")
        }
        # Risky Redis settings seen once Redis answered (None: not checked yet). Not part of
        # health(), which is about reachability: the sidecar shows them in /v1/status.
        self.redis_warnings: list[str] | None = None

    # -- public --------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until :meth:`stop`; node and Redis outages are waited out, not raised."""
        if self._running:
            raise RuntimeError("this consumer is already running")
        self._running = True
        nodes = len(self._nodes)
        self._slots = asyncio.Semaphore(self._concurrency)
        # Held copies wait their turn for a connection in a burst; the watchdog has its own,
        # so that its verdict on Redis never waits in that queue.
        pool = max(DEFAULT_POOL, 4 * self._concurrency + 16)
        self._redis = connect_redis(self._redis_url, self._connect_timeout, max_connections=pool)
        self._watch_client = connect_redis(self._redis_url, self._connect_timeout, max_connections=2)
        self._records = JobRecords(self._redis, self._tube, batched=True)
        # Deletes of other copies; quick calls only, so a short I/O timeout.
        self._control = {}
        self._lines = {}
        self._workers = {}
        self._siblings = Siblings(self.queue, self._control, self._records, self._pause)
        with contextlib.suppress(RedisError):
            await self._measure_clock()  # before the first copy is held; the watchdog keeps it up
        watchdog = asyncio.create_task(self._watch_redis(), name=f"dq-{self.queue}-redis")
        for node in self._nodes:
            self._start_node(node)
        log.info("dq consumer %s started on %d node(s), concurrency %d", self.queue, nodes, self._concurrency)
        workers: set[asyncio.Task[None]] = set()
        try:
            while True:  # until every worker ended (stop), including those of nodes added meanwhile
                workers = {t for tasks in self._workers.values() for t in tasks if not t.done()}
                if not workers:
                    break
                await asyncio.wait(workers, return_when=asyncio.FIRST_COMPLETED)
            while self._holders:  # copies still held: they hand themselves back
                await asyncio.wait(set(self._holders))
        finally:
            workers = {t for tasks in self._workers.values() for t in tasks}
            for task in [*workers, *self._holders]:
                task.cancel()  # only left after run() itself was cancelled
            # The watchdog is asked to end, not cancelled: redis-py can swallow a cancellation
            # that lands inside a command, and the task would then never end.
            self._closing.set()
            await asyncio.gather(watchdog, *workers, *self._holders, return_exceptions=True)
            await self._siblings.aclose()
            self._close_connections()
            await self._records.aclose()
            await self._redis.aclose()
            await self._watch_client.aclose()
            self._running = False
            self._finished.set()
            log.info("dq consumer %s stopped", self.queue)

    @property
    def nodes(self) -> list[str]:
        """The nodes consumed now (active and draining)."""
        return list(self._nodes)

    def set_nodes(self, active: Sequence[str], draining: Sequence[str] = ()) -> None:
        """Consume from ``active`` and ``draining`` nodes from now on; no restart needed.

        Call it on the consumer's event loop. A new node gets its reserving workers at once; a
        node in neither list stops being reserved from (copies already held there are still
        settled on their own connections). Draining nodes are consumed like active ones: their
        jobs stay deliverable until they have been moved away.
        """
        nodes = list(Membership.of(active, draining).all)
        added = [node for node in nodes if node not in self._nodes]
        removed = [node for node in self._nodes if node not in nodes]
        self._nodes = nodes
        for node in nodes:
            self._health.setdefault(node, shared_health(node))
        for node in removed:
            self._node_errors.pop(node, None)
        if self._running and not self._stopping.is_set():
            for node in added:
                self._start_node(node)
        if added or removed:
            log.info("dq %s: consuming from %s (added %s, removed %s)", self.queue, nodes, added, removed)

    def _start_node(self, node: str) -> None:
        """Start reserving from ``node`` (its control connection and line are kept once made:
        settled jobs may still name copies there)."""
        if node not in self._control:
            self._control[node] = AsyncNodeConnection(
                node,
                self._tube,
                connect_timeout=self._connect_timeout,
                io_timeout=self._connect_timeout,
                health=self._health[node],
            )
        self._lines.setdefault(node, NodeLine(self._prefetch, self._max_waiting))
        running = [t for t in self._workers.get(node, []) if not t.done()]
        # Workers of a node removed and added back may still be ending: they end on their own.
        self._workers[node] = running + [
            asyncio.create_task(self._work(node), name=f"dq-{self.queue}-{node}-{i}")
            for i in range(self._reservers - len(running))
        ]

    async def stop(self, grace: float = 30.0) -> None:
        """Stop taking jobs; let handlers finish within ``grace`` seconds, hand back the rest."""
        self._stopping.set()
        for woken in self._sleepers:
            _wake(woken)
        for local in self._leaders.values():
            local.settled.set()  # copies waiting for one of ours hand themselves back now
        if not self._running:
            return
        self._deadline = time.monotonic() + grace
        if self._inflight:
            await asyncio.wait(set(self._inflight.values()), timeout=grace)
            for task, ended in list(self._inflight.items()):
                if not ended.done():
                    self._cut.add(task)
                    task.cancel()
        give_up = time.monotonic() + STOP_MARGIN
        while not self._finished.is_set() and time.monotonic() < give_up:
            # Calls stuck on a hung node would each wait out their timeout: cut them.
            for health in self._health.values():
                health.abort_stuck(STUCK_AFTER)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._finished.wait()), 0.25)
        if not self._finished.is_set():
            # Should not happen; if it does, closing the connections hands every held copy back.
            for holder in set(self._holders):
                frames = "; ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in holder.get_stack())
                log.error(
                    "dq %s: copy still held %.0fs after stop; cancelling (%s)",
                    self.queue,
                    STOP_MARGIN,
                    frames,
                )
                holder.cancel()
            await self._finished.wait()

    def health(self) -> tuple[bool, str]:
        if not self._running:
            return False, "consumer not running"
        if self._redis_error is not None:
            return False, f"redis unreachable: {self._redis_error}"
        down = {node: error for node, error in self._node_errors.items() if node in self._nodes}
        if len(down) == len(self._nodes):
            return False, "no beanstalkd node reachable: " + "; ".join(f"{n} ({e})" for n, e in down.items())
        if down:
            return True, "ok; unreachable: " + "; ".join(f"{n} ({e})" for n, e in down.items())
        return True, "ok"

    # -- workers ---------------------------------------------------------------------------

    def _connection(self, node: str) -> AsyncNodeConnection:
        return AsyncNodeConnection(
            node,
            self._tube,
            connect_timeout=self._connect_timeout,
            io_timeout=RESERVE_TIMEOUT + self._connect_timeout,
            health=self._health[node],
        )

    async def _work(self, node: str) -> None:
        """Reserve copies from ``node`` and hand each to a task of its own.

        The worker waits in ``reserve`` on an idle connection; once a copy comes, it takes the
        other copies ready at that moment on the same connection (pipelined, non-blocking), up
        to the free permits, and goes on waiting on another idle connection. Holding a copy
        (until due, or while another copy is handled) never stops it seeing the next job.
        """
        line = self._lines[node]
        backoff = 0.1
        while not self._stopping.is_set() and node in self._nodes:
            if self._redis_error is not None:
                await self._pause(0.1)  # never take a job that cannot be de-duplicated
                continue
            await line.permits.acquire()
            conn = line.take() or self._connection(node)
            line.hold(conn)  # the worker's own use: the connection is not idle meanwhile
            try:
                try:
                    got = await conn.call(reserve_waiting, probe=True)
                except NodeDown as exc:
                    line.permits.release()
                    if node not in self._node_errors:
                        log.warning("dq %s: node %s unreachable: %s", self.queue, node, exc.reason)
                    self._node_errors[node] = exc.reason
                    await self._pause(backoff)
                    backoff = min(2.0, backoff * 2)
                    continue
                if self._node_errors.pop(node, None) is not None:
                    log.info("dq %s: node %s reachable again", self.queue, node)
                backoff = 0.1
                if got is None:
                    line.permits.release()
                    continue
                self._start_holding(line, conn, got)
                await self._take_ready(line, conn)
            finally:
                line.let_go(conn)

    async def _take_ready(self, line: NodeLine, conn: AsyncNodeConnection) -> None:
        """Take the copies ready now on ``conn``, RESERVE_BATCH per round trip, while permits last."""
        while not self._stopping.is_set() and self._redis_error is None:
            wanted = 0
            while wanted < RESERVE_BATCH and not line.permits.locked():
                await line.permits.acquire()  # free: does not wait
                wanted += 1
            if not wanted:
                return
            jobs: list[Job] = []
            with contextlib.suppress(NodeDown, BeanstalkError):
                socket, jobs = await conn.call(reserve_ready(wanted), limit=self._connect_timeout)
            for job in jobs:
                self._start_holding(line, conn, (socket, job))
            for _ in range(wanted - len(jobs)):
                line.permits.release()
            if len(jobs) < wanted:
                return  # the node has no more ready copies (or failed): back to waiting

    def _start_holding(self, line: NodeLine, conn: AsyncNodeConnection, got: Reserved) -> None:
        line.hold(conn)
        holder = asyncio.create_task(self._hold_then_return(line, conn, got))
        self._holders.add(holder)
        holder.add_done_callback(self._holders.discard)

    async def _hold_then_return(self, line: NodeLine, conn: AsyncNodeConnection, got: Reserved) -> None:
        ticket = Ticket(line, len(got[1].body))  # the worker's permit, now this copy's
        try:
            await self._hold(conn, *got, ticket)
        except Exception:
            # A bug must not stop the consumer: dropping the connection hands the reservation
            # back to beanstalkd (with the others on it), and the lease (if any) expires.
            log.exception("dq %s: failed handling a copy on %s; handing it back", self.queue, conn.address)
            conn.close()
        finally:
            ticket.let_go()
            line.let_go(conn)

    async def _hold(self, conn: AsyncNodeConnection, socket: Connection, job: Job, ticket: Ticket) -> None:
        envelope = Envelope.decode(job.body)
        if envelope is None:
            log.warning(
                "dq %s: job %s/%s has no dq header; burying it for inspection",
                self.queue,
                conn.address,
                job.id,
            )
            await self._quietly(conn, burier(socket, job.id))
            return
        self._tokens += 1
        held = Held(conn, socket, job, envelope, token=f"{self._instance}-{self._tokens}", ticket=ticket)
        # Most copies settle in milliseconds: the keeper task only starts once there is
        # something to renew or touch, which saves a task and a timer per copy.
        held.keep_timer = asyncio.get_running_loop().call_later(self._renew_every, self._start_keeping, held)
        job_id = envelope.job_id
        try:
            local = self._leaders.get(job_id)
            if local is not None:
                # This consumer already holds another copy of the job: wait for that one to
                # settle rather than asking Redis again and again.
                local.followers[(conn.address, job.id)] = (conn, socket)
                ticket.waiting()
                if not self._stopping.is_set():
                    await local.settled.wait()  # stop() sets it too
                if self._stopping.is_set():
                    await self._hand_back(held, envelope.due)
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
            await self._stop_keeping(held)

    async def _process(self, held: Held) -> None:
        due = held.envelope.due
        busy_since: float | None = None
        while True:
            if due > self._now():
                held.ticket.waiting()
            if not await self._sleep_until(due):
                await self._hand_back(held, due)
                return
            if self._slots.locked() and busy_since is not None:
                try:
                    # Polling a job another copy is handling, and all slots busy: a look (no
                    # lease, no slot) is enough to learn that it is still handled, done or
                    # revoked. A first try waits for a slot and claims at once: under load a
                    # look first would cost a Redis call per job for nothing.
                    status = await self._records.peek(held.envelope.job_id, self._now())
                except RedisError as exc:
                    self._note_redis_error(exc)
                    # Come back a little later, once holders have re-taken their leases.
                    await self._release(held, max(1.0, due - self._now()))
                    return
            else:
                status = Claim("free")
            if status.action == "free":
                refused = await self._claim_and_deliver(held, due)
                if refused is None:
                    return
                status = refused
            if status.action == "wait" and status.until - self._now() <= HOLD_LIMIT:
                due = status.until  # a retry due soon: wait for it holding the copy
                continue
            if status.action == "busy":
                # Another copy is being handled. Holding this one a while lets it see the
                # outcome (done: delete; retry: wait) instead of coming back later as a stray.
                busy_since = busy_since or time.monotonic()
                held_for = time.monotonic() - busy_since
                if held_for < BUSY_HOLD:
                    due = self._now() + min(0.5, 0.05 + held_for / 4)
                    continue
            await self._not_now(held, status)
            return

    async def _claim_and_deliver(self, held: Held, due: float) -> Claim | None:
        """Take a handler slot, then the job's lease, and deliver; the claim if not delivered.

        The slot comes first so that an attempt is counted only for a handler about to start: a
        consumer that crashes has counted attempts for the jobs it was running and no others
        (a poison job is buried after its crashes; the jobs beside it keep their attempts).
        Claims of slots freed in the same loop pass still share one Redis round trip.
        """
        await self._slots.acquire()
        started = False
        try:
            if self._stopping.is_set():
                await self._hand_back(held, due)
                return None
            try:
                claim = await self._records.claim(
                    held.envelope.job_id, held.token, self._lease_ttl, self._now()
                )
            except RedisError as exc:
                self._note_redis_error(exc)
                await self._release(held, max(1.0, due - self._now()))
                return None
            if claim.action != "go":
                return claim
            held.claimed = True
            self._claimed[held.token] = held
            held.ticket.let_go()  # in the handler: no longer prefetched
            started = True
            try:
                # Stopping meanwhile: the attempt is given back below, never started.
                outcome = None if self._stopping.is_set() else await self._run_handler(held, claim.attempt)
            finally:
                self._slots.release()
            await self._stop_keeping(held)  # settling owns the connection and the lease now
            if outcome is None:  # stopping: give the attempt back
                await self._settle_retry(held, None, attempted=False, error="")
            else:
                await self._settle(held, claim, outcome)
        finally:
            if not started:
                self._slots.release()
            self._claimed.pop(held.token, None)
        return None

    async def _not_now(self, held: Held, claim: Claim) -> None:
        """This copy may not be delivered now: put it where it belongs."""
        job_id = held.envelope.job_id
        if claim.action == "wait":
            await self._release(held, claim.until - self._now())
        elif claim.action == "busy":
            # Another copy is being handled; come back when its lease would have run out, so
            # that this copy takes over if that consumer died.
            await self._release(held, max(1.0, math.ceil(claim.until)))
        elif claim.action == "done":
            if await held.conn.delete_soon(held.job.id, socket=held.socket):
                self._duplicates.inc()
            log.debug("dq %s: copy %s of done job %s deleted", self.queue, held.where, job_id)
        elif claim.action == "revoked":
            await held.conn.delete_soon(held.job.id, socket=held.socket)
            log.info("dq %s: job %s was revoked; copy %s deleted", self.queue, job_id, held.where)
        elif claim.action == "buried":
            if claim.kept and claim.kept != held.where:
                await held.conn.delete_soon(held.job.id, socket=held.socket)  # one buried copy is enough
            else:
                await self._quietly(held.conn, burier(held.socket, held.job.id))
        else:
            log.error("dq %s: unknown claim %r for job %s; releasing it", self.queue, claim.action, job_id)
            await self._release(held, 1.0)

    # -- delivery --------------------------------------------------------------------------

    async def _run_handler(self, held: Held, attempt: int) -> Outcome | None:
        """The handler's outcome; None when stop's grace ran out first."""
        envelope = held.envelope
        job = DelayJob(envelope.job_id, envelope.body, attempt, envelope.due_at, self.queue)
        if attempt == 1:
            # Messages, not attempts (as for Kafka): retries are counted in queue_messages_retried.
            self._received.inc()
            self._lateness.observe(max(0.0, self._now() - envelope.due))
        gauge = self._in_flight
        gauge.inc()
        started = time.monotonic()
        # In this task (no task per call): stop() cancels it if the grace runs out.
        task = asyncio.current_task()
        assert task is not None
        ended = asyncio.get_running_loop().create_future()
        self._inflight[task] = ended
        try:
            outcome = await self._call_handler(job)
        except asyncio.CancelledError:
            if task not in self._cut:
                raise
            outcome = None
        finally:
            ended.set_result(None)
            del self._inflight[task]
            gauge.dec()
            self._latency.observe(time.monotonic() - started)
        if task in self._cut:
            # stop()'s grace ran out: hand the job back without counting this attempt (also
            # when the handler swallowed the cancellation).
            self._cut.discard(task)
            task.uncancel()
            log.info("dq %s: job %s handed back at stop", self.queue, job.id)
            return None
        return outcome

    async def _call_handler(self, job: DelayJob) -> Outcome:
        try:
            async with asyncio.timeout(self._policy.timeout):  # no extra task, unlike wait_for
                outcome = await self._handler(job)
        except TimeoutError:
            return Outcome.retry(f"handler took longer than {self._policy.timeout:g}s")
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # stop() cancels us: _run_handler hands the job back
            # The handler raised it itself (a cancelled call of its own): a failed attempt
            # like any other, not the end of this worker with the reservation still held.
            log.warning("dq %s: handler raised CancelledError on job %s", self.queue, job.id)
            return Outcome.retry("handler raised CancelledError")
        except Exception as exc:
            log.warning("dq %s: handler raised on job %s: %r", self.queue, job.id, exc)
            return Outcome.retry(f"handler raised {type(exc).__name__}: {exc}")
        if not isinstance(outcome, Outcome):
            log.error("dq %s: handler returned %r, not an Outcome; retrying", self.queue, outcome)
            return Outcome.retry(f"handler returned {type(outcome).__name__}, expected Outcome")
        return outcome

    async def _settle(self, held: Held, claim: Claim, outcome: Outcome) -> None:
        attempt = claim.attempt
        result = outcome.verdict.value.lower() if outcome.attempted else "unavailable"
        self._delivered[result].inc()
        job_id = held.envelope.job_id
        if outcome.verdict is Verdict.SUCCESS:
            copies = await self._until_redis(held, lambda: self._records.mark_done(job_id, held.token))
            if copies is not None and held.local is not None:
                held.local.done = True
            if copies is None:
                await self._release(held, 0)  # could not record success: deliver again rather than lose it
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
        metrics.RETRIED.labels(kind=KIND, queue=self.queue).inc()
        # A hand-back while the app is down is not a failed attempt: the delivery side says once
        # that the app is down; a line per waiting job per second would drown the log.
        log.log(
            logging.INFO if outcome.attempted else logging.DEBUG,
            "dq %s: job %s attempt %d failed (%s); retry in %.2fs",
            self.queue,
            job_id,
            attempt,
            outcome.error,
            delay,
        )
        await self._settle_retry(
            held, delay, attempted=outcome.attempted, error=outcome.error, unavailable=not outcome.attempted
        )

    async def _settle_retry(
        self, held: Held, delay: float | None, *, attempted: bool, error: str, unavailable: bool = False
    ) -> None:
        next_at = None if delay is None else self._now() + delay
        job_id = held.envelope.job_id

        async def schedule() -> bool:
            await self._records.schedule_retry(
                job_id, held.token, next_at=next_at, attempted=attempted, error=error, unavailable=unavailable
            )
            return True

        if await self._until_redis(held, schedule) is None:
            log.warning(
                "dq %s: retry of %s not recorded (redis down); its lease will expire", self.queue, job_id
            )
        await self._release(held, delay or 0.0)

    async def _bury(self, held: Held, reason: str, error: str, attempt: int) -> None:
        job_id = held.envelope.job_id
        # Bury first: the record then names a copy that really is kept, and the other copies
        # may delete themselves. If this node is gone, they bury themselves instead.
        kept = await self._quietly(held.conn, burier(held.socket, held.job.id))

        async def mark() -> list[Copy]:
            return await self._records.mark_buried(
                job_id, held.token, error=error, copy=held.where if kept else "", now=self._now()
            )

        copies = await self._until_redis(held, mark)
        if copies is not None and kept:
            await self._siblings.after_bury(held, copies)
        metrics.DEAD_LETTERED.labels(kind=KIND, queue=self.queue, reason=reason).inc()
        log.warning(
            "dq %s: job %s buried after attempt %d (%s): %s", self.queue, job_id, attempt, reason, error
        )

    # -- keeping hold ---------------------------------------------------------------------

    def _start_keeping(self, held: Held) -> None:
        held.keep_timer = None
        if not held.done_keeping.is_set():
            held.keeper = asyncio.create_task(self._keep(held, time.monotonic() - self._renew_every))

    async def _keep(self, held: Held, last_touch: float) -> None:
        """Renew the lease (while claimed) and touch the reservation while the copy is held.

        The touch runs beside the renewals, never before them: on a hung node it waits out a
        timeout, and the lease in Redis must not expire meanwhile (another copy would run).
        """
        touching: asyncio.Task[Any] | None = None
        try:
            while True:
                if held.claimed:
                    with contextlib.suppress(RedisError):
                        await self._records.renew(held.envelope.job_id, held.token, self._lease_ttl)
                if (touching is None or touching.done()) and time.monotonic() - last_touch >= TOUCH_EVERY:
                    touching = asyncio.create_task(self._quietly(held.conn, toucher(held)))
                    last_touch = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(held.done_keeping.wait(), self._renew_every)
                if held.done_keeping.is_set():
                    return
        finally:
            if touching is not None:
                await touching  # settling uses the connection next; it would wait for it anyway

    @staticmethod
    async def _stop_keeping(held: Held) -> None:
        # Asked, not cancelled: cancelling a Redis call midway costs its connection.
        held.done_keeping.set()
        if held.keep_timer is not None:
            held.keep_timer.cancel()
            held.keep_timer = None
        if held.keeper is not None:
            await held.keeper

    async def _until_redis(self, held: Held, op: Callable[[], Awaitable[T]]) -> T | None:
        """Run ``op`` until Redis answers; None if stop's grace ran out first."""
        last_touch = time.monotonic()
        while True:
            try:
                return await op()
            except RedisError as exc:
                self._note_redis_error(exc)
            if time.monotonic() > self._deadline:
                return None
            if time.monotonic() - last_touch > TOUCH_EVERY:
                await self._quietly(held.conn, toucher(held))
                last_touch = time.monotonic()
            await asyncio.sleep(0.2)

    async def _hand_back(self, held: Held, due: float) -> None:
        """Release a copy that was not delivered, for its due time."""
        await self._release(held, due - self._now())

    async def _release(self, held: Held, delay: float) -> None:
        seconds = max(0, math.floor(delay))
        await self._quietly(held.conn, releaser(held, seconds))

    # -- plumbing -------------------------------------------------------------------------

    async def _watch_redis(self) -> None:
        while not self._closing.is_set():
            try:
                await self._measure_clock()  # also the liveness check
            except RedisError as exc:
                self._note_redis_error(exc)
            else:
                if self.redis_warnings is None:
                    await self._check_redis_settings()
                if self._redis_error is not None and await self._retake_leases():
                    log.info("dq %s: redis reachable again; taking jobs", self.queue)
                    self._redis_error = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), 0.25 if self._redis_error else 1.0)

    async def _measure_clock(self) -> None:
        await self._redis_clock.measure(self._watch_client)

    async def _check_redis_settings(self) -> None:
        with contextlib.suppress(RedisError):
            self.redis_warnings = await durability_warnings(self._redis)
            for warning in self.redis_warnings:
                log.warning("dq %s: %s", self.queue, warning)

    async def _retake_leases(self) -> bool:
        """Before taking jobs again, re-take the leases of attempts in progress (Redis may
        have restarted empty), so that their other copies are not delivered meanwhile."""
        try:
            for held in list(self._claimed.values()):
                await self._records.renew(held.envelope.job_id, held.token, self._lease_ttl)
        except RedisError:
            return False
        # Done markers may be gone with the old Redis: delete the other copies of jobs settled
        # just before the outage that still were held by someone then.
        await self._siblings.sweep()
        return True

    def _note_redis_error(self, exc: BaseException) -> None:
        if self._redis_error is None:
            log.warning(
                "dq %s: redis unreachable, not taking jobs: %s", self.queue, describe_redis_error(exc)
            )
        self._redis_error = describe_redis_error(exc)

    def _now(self) -> float:
        """Wall-clock time for due decisions: Redis's clock, the one all consumers share."""
        return self._redis_clock.now()

    async def _sleep_until(self, due: float) -> bool:
        """Wait until wall-clock ``due`` (never earlier); False if stopping first."""
        while True:
            remaining = due - self._now()
            if remaining <= 0:
                return True
            # In steps: the offset to Redis's clock may change meanwhile.
            if await self._pause(min(remaining, 1.0)):
                return False

    async def _pause(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when stop was asked for.

        A future and a timer, no task (thousands of copies may wait for their due time at
        once); stop() wakes them all."""
        if self._stopping.is_set():
            return True
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _wake, woken)
        self._sleepers.add(woken)
        try:
            await woken
        finally:
            timer.cancel()
            self._sleepers.discard(woken)
        return self._stopping.is_set()

    async def _quietly(self, conn: AsyncNodeConnection, op: Op[Any]) -> Any:
        """Run quick ``op`` on ``conn`` (the short timeout, not the reserve's); node trouble is
        logged, not raised (None is returned)."""
        try:
            return await conn.call(op, limit=self._connect_timeout)
        except (NodeDown, BeanstalkError) as exc:
            log.debug("dq %s: %s on %s: %r", self.queue, getattr(op, "__name__", "op"), conn.address, exc)
            return None

    def _close_connections(self) -> None:
        for conn in self._control.values():
            conn.close()
        for line in self._lines.values():
            line.close()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
