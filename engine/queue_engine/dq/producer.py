"""Publishing delayed and timed jobs: each to min(3, N) nodes, done when a majority acknowledge.

One pipelined asyncio connection per node: the puts of concurrent publishes made in the same
loop iteration leave in one write per node, and their Redis records in one round trip.

One working copy, the others standbys: the first copy written is due at the job's due time
(rounded down to whole seconds, as beanstalkd counts), the others ``standby_delay`` seconds
later. Normally the working copy is delivered and the standbys are deleted while still delayed,
so consumers reserve each job once instead of once per copy. If the working copy's node fails,
a standby takes over: the job is late by at most ``standby_delay`` plus a second, never early
(every copy carries the exact due time, and consumers wait for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from types import TracebackType

from redis.exceptions import RedisError

from queue_engine import metrics
from queue_engine.dq.beanstalk import BeanstalkError, Connection, JobTooBig
from queue_engine.dq.envelope import HEADER_BYTES, Envelope, check_job_id, new_job_id
from queue_engine.dq.membership import Membership
from queue_engine.dq.node_io import AsyncNodeConnection, Op, delete_copy
from queue_engine.dq.nodes import PRIORITY, NodeDown, check_nodes, check_tube, shared_health
from queue_engine.dq.records import Copy, JobRecords
from queue_engine.dq.redis_client import connect_redis, describe_redis_error
from queue_engine.errors import ConfigError, InvalidRequest, TooLarge, Unavailable

log = logging.getLogger(__name__)

# Seconds a consumer may hold a reservation between touches (it touches well before this).
JOB_TTR = 20
REPLICAS = 3
STANDBY_DELAY = 5  # seconds standby copies become ready after the working copy (default)
MAX_NODES = 9  # spec.replicas' maximum
MAX_DELAY_SECONDS = 2**32 - 1  # beanstalkd's delay is an unsigned 32-bit number of seconds


def quorum_of(copies: int) -> int:
    """Acknowledgements a publish needs: a majority, except with two copies, where one will do.

    A majority of two is two: every step of a rolling restart (or any one node down) would then
    fail every publish. One acknowledged copy on a node with a binlog survives that node's
    restart; what is lost is protection against losing that one node's disk before the job is
    due. Use three or more nodes for that.
    """
    return 1 if copies == 2 else copies // 2 + 1


class DelayProducer:
    """Writes jobs to beanstalkd nodes (asyncio; use it from one event loop)."""

    def __init__(
        self,
        nodes: Sequence[str],
        tube: str,
        redis_url: str,
        *,
        max_job_bytes: int = 65535,
        connect_timeout: float = 3.0,
        name: str | None = None,
        standby_delay: int = STANDBY_DELAY,
    ) -> None:
        self._nodes = check_nodes(nodes)
        if not isinstance(standby_delay, int) or standby_delay < 0:
            raise ConfigError(f"standby_delay is {standby_delay!r}; use whole seconds, 0 or more")
        self._standby_delay = standby_delay
        self._tube = check_tube(tube)
        self.queue = name or tube
        if max_job_bytes <= HEADER_BYTES:
            raise ConfigError(
                f"maxJobBytes is {max_job_bytes}; it must exceed the {HEADER_BYTES}-byte job header"
            )
        self.max_body_bytes = max_job_bytes - HEADER_BYTES
        self._connect_timeout = connect_timeout
        self.copies = min(REPLICAS, len(self._nodes))
        self.quorum = quorum_of(self.copies)
        self._pools = {node: self._pool(node) for node in self._nodes}
        self._redis = connect_redis(redis_url, connect_timeout)
        self._records = JobRecords(self._redis, self._tube, batched=True)
        self._turn = 0
        self._closed = False
        self._probes: dict[str, asyncio.Task[None]] = {}

    def _pool(self, node: str) -> AsyncNodeConnection:
        timeout = self._connect_timeout
        # The health is shared with this process's consumers (and other producers) of the node.
        return AsyncNodeConnection(
            node, self._tube, connect_timeout=timeout, io_timeout=timeout, health=shared_health(node)
        )

    def _suspect(self, node: str) -> bool:
        """Whether ``node`` is suspected to hang (a call to it timed out, here or in a consumer
        of this process). Puts skip it, never waiting on it; a probe in the background, not
        waited for by any publish, clears it once the node answers."""
        health = self._pools[node].health
        if health is None or not health.suspect:
            return False
        if health.probe_due() and node not in self._probes and not self._closed:
            task = asyncio.get_running_loop().create_task(self._probe(node))
            self._probes[node] = task
            task.add_done_callback(lambda _: self._probes.pop(node, None))
        return True

    async def _probe(self, node: str) -> None:
        with contextlib.suppress(NodeDown, BeanstalkError):
            await self._pools[node].call(_stats, probe=True)

    @property
    def nodes(self) -> list[str]:
        """The nodes new copies are written to (draining nodes are not among them)."""
        return list(self._nodes)

    def set_nodes(self, active: Sequence[str], draining: Sequence[str] = ()) -> None:
        """Write new jobs to ``active`` from now on; no restart needed.

        A draining node takes no new copies, but its connections are kept so that revoking a
        job still deletes the copies there. Nodes in neither list are forgotten. Publishes in
        flight finish on the nodes they chose.
        """
        membership = Membership.of(active, draining)
        for node in membership.all:
            if node not in self._pools:
                self._pools[node] = self._pool(node)
        gone = [node for node in self._pools if node not in membership.all]
        self._nodes = list(membership.active)
        self.copies = min(REPLICAS, len(self._nodes))
        self.quorum = quorum_of(self.copies)
        self._turn = self._turn % len(self._nodes)
        for node in gone:
            self._pools.pop(node).close()
        log.info(
            "dq %s: writing to %d node(s), quorum %d of %d; draining %s",
            self.queue,
            len(self._nodes),
            self.quorum,
            self.copies,
            list(membership.draining) or "none",
        )

    async def delay(self, body: bytes, delay: float | timedelta) -> str:
        """Deliver ``body`` after ``delay`` (seconds or a timedelta); returns the job id."""
        seconds = _seconds(delay)
        return await self._publish(body, time.time() + seconds)

    async def at(self, body: bytes, when: datetime) -> str:
        """Deliver ``body`` at ``when`` (a timezone-aware datetime); returns the job id."""
        if not isinstance(when, datetime):
            raise InvalidRequest(f"at: expected a datetime, got {type(when).__name__}")
        if when.tzinfo is None or when.utcoffset() is None:
            raise InvalidRequest(
                f"at: {when.isoformat()} has no time zone; pass an aware datetime (e.g. tz=UTC)"
            )
        due = when.timestamp()
        now = time.time()
        if due < now:
            raise InvalidRequest(
                f"at: {when.isoformat()} is {now - due:.3f}s in the past; use a future time or delay(0)"
            )
        if due - now > MAX_DELAY_SECONDS:
            raise InvalidRequest(
                f"at: {when.isoformat()} is {due - now:.0f}s away; beanstalkd accepts at most "
                f"{MAX_DELAY_SECONDS}s (about 136 years)"
            )
        return await self._publish(body, due)

    async def revoke(self, job_id: str) -> None:
        """Make sure the job is never delivered (idempotent; unknown ids are accepted)."""
        check_job_id(job_id)
        try:
            copies = await self._records.revoke(job_id)
        except RedisError as exc:
            raise Unavailable(
                f"revoke of {job_id} not recorded: redis unreachable ({describe_redis_error(exc)}); try again"
            ) from None
        # The tombstone already holds; deleting copies only saves the consumers the work.
        deletions = [self._delete_copy(copy, job_id) for copy in copies if copy.node in self._pools]
        for result in await asyncio.gather(*deletions, return_exceptions=True):
            if isinstance(result, NodeDown):
                log.info("revoke %s: copy left on %s (down); the tombstone stops it", job_id, result.address)
        log.debug("revoked %s", job_id)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for pool in self._pools.values():
            pool.close()
        for probe in self._probes.values():
            probe.cancel()  # it may be connecting to the hung node
        await asyncio.gather(*self._probes.values(), return_exceptions=True)
        await self._records.aclose()
        await self._redis.aclose()

    async def _publish(self, body: bytes, due: float) -> str:
        if self._closed:
            raise InvalidRequest("this producer is closed")
        if not isinstance(body, bytes | bytearray | memoryview):
            raise InvalidRequest(f"body must be bytes, got {type(body).__name__}; encode text first")
        data = bytes(body)
        if len(data) > self.max_body_bytes:
            self._count("too_large")
            raise TooLarge(
                f"body is {len(data)} bytes; queue {self.queue!r} takes at most {self.max_body_bytes} "
                f"(maxJobBytes minus a {HEADER_BYTES}-byte header)"
            )
        envelope = Envelope(new_job_id(due), math.ceil(due * 1_000_000), data)
        written, failures = await self._write_copies(envelope.encode(), envelope.due)
        if len(written) < self.quorum:
            await self._undo(written, envelope.job_id)
            self._count("unavailable")
            failed = ", ".join(f"{node} ({reason})" for node, reason in failures.items())
            if failures and all("JOB_TOO_BIG" in reason for reason in failures.values()):
                raise TooLarge(f"nodes refused the job as too big ({failed}); raise beanstalkd -z")
            raise Unavailable(
                f"job not stored: {len(written)} of {self.copies} copies acknowledged, "
                f"{self.quorum} needed; failed: {failed}; {await self._revoke_strays(envelope.job_id)}"
            )
        try:
            await self._records.record_copies(envelope.job_id, written, keep_s=max(0.0, due - time.time()))
        except RedisError as exc:
            # The job is stored; without this record revoke cannot delete its copies (the
            # tombstone still stops them) and a success cannot clean up sibling copies early.
            log.warning(
                "job %s stored but its copies not recorded: %s", envelope.job_id, describe_redis_error(exc)
            )
        self._count("success")
        return envelope.job_id

    async def _revoke_strays(self, job_id: str) -> str:
        """A put that timed out may still be stored once its node goes on: revoke the id so that
        such a copy is never delivered. Says what happened, for the error message."""
        try:
            await self._records.revoke(job_id)
        except RedisError as exc:
            log.warning("failed publish %s not revoked: %s", job_id, describe_redis_error(exc))
            return (
                f"job {job_id} could not be revoked (redis: {describe_redis_error(exc)}): a copy that "
                "a timed-out node stored anyway may still be delivered"
            )
        return f"job {job_id} revoked, so a copy that a timed-out node stored anyway is never delivered"

    async def _write_copies(self, data: bytes, due: float) -> tuple[list[Copy], dict[str, str]]:
        healthy, failing = self._choose()
        pending, spare = healthy[: self.copies], healthy[self.copies :]
        written: list[Copy] = []
        failures: dict[str, str] = {}
        working = False  # a working copy (due on time) was written
        while True:
            if not pending and len(written) < self.quorum and failing:
                # Nodes that just failed are tried only when the quorum needs them: one may
                # hang, and waiting out its timeout on every publish is what skipping avoids.
                missing = self.copies - len(written)
                pending, failing = failing[:missing], failing[missing:]
            if not pending:
                break
            for node in [n for n in pending if n not in self._pools]:
                failures[node] = "removed from the node list"  # by set_nodes, meanwhile
            pending = [n for n in pending if n in self._pools]
            conns = [self._pools[node] for node in pending]
            # The first node of a round gets the working copy until one is written; a failed
            # one is replaced by the next round's first node (a spare), if there is a round.
            lags = [0 if i == 0 and not working else self._standby_delay for i in range(len(conns))]
            results = await asyncio.gather(
                *(conn.call(_putter(conn, data, due, lag)) for conn, lag in zip(conns, lags, strict=True)),
                return_exceptions=True,
            )
            for node, lag, result in zip(pending, lags, results, strict=True):
                if isinstance(result, Copy):
                    written.append(result)
                    working = working or lag == 0
                elif isinstance(result, NodeDown):
                    failures[node] = result.reason
                elif isinstance(result, JobTooBig):
                    failures[node] = "JOB_TOO_BIG"
                elif isinstance(result, BeanstalkError):
                    failures[node] = result.status
                elif isinstance(result, BaseException):
                    raise result
            missing = self.copies - len(written)
            pending, spare = spare[:missing], spare[missing:]
        return written, failures

    def _choose(self) -> tuple[list[str], list[str]]:
        """The nodes to try, rotated for spread: those in good standing, then those in backoff.

        A node that just failed is tried only when the others cannot make a quorum, so that a
        hung node does not hold up every publish for its timeout.
        """
        self._turn = (self._turn + 1) % len(self._nodes)
        rotated = self._nodes[self._turn :] + self._nodes[: self._turn]
        healthy = [node for node in rotated if not self._pools[node].backing_off and not self._suspect(node)]
        return healthy, [node for node in rotated if node not in healthy]

    async def _undo(self, written: list[Copy], job_id: str) -> None:
        results = await asyncio.gather(
            *(self._delete_copy(copy, job_id) for copy in written), return_exceptions=True
        )
        for copy, result in zip(written, results, strict=True):
            if isinstance(result, BaseException):
                log.error(
                    "could not undo copy %s/%s of a job that missed quorum: %s", copy.node, copy.jid, result
                )

    async def _delete_copy(self, copy: Copy, job_id: str) -> bool:
        pool = self._pools.get(copy.node)
        if pool is None:
            raise NodeDown(copy.node, "removed from the node list")
        return await pool.call(delete_copy(pool, copy.jid, copy.server, job_id))

    def _count(self, result: str) -> None:
        metrics.PUBLISHED.labels(kind="delay", queue=self.queue, result=result).inc()

    async def __aenter__(self) -> DelayProducer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _putter(conn: AsyncNodeConnection, data: bytes, due: float, lag: int) -> Op[Copy]:
    async def put(c: Connection) -> Copy:
        # The node process's id (asked once per connection) goes with the copy's id: deletes
        # later check it, as a node restarted without its binlog reuses ids.
        server = await conn.server_id(c)
        # Whole seconds, rounded down, computed at the last moment: the copy becomes ready no
        # later than its due time, and the consumer waits out the rest.
        # A standby comes ``lag`` seconds later still.
        delay = min(MAX_DELAY_SECONDS, max(0, math.floor(due - time.time())) + lag)
        return Copy(conn.address, await c.put(data, priority=PRIORITY, delay=delay, ttr=JOB_TTR), server)

    return put


async def _stats(conn: Connection) -> None:
    await conn.stats()


def _seconds(delay: float | timedelta) -> float:
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, int | float) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise InvalidRequest(f"delay: expected seconds or a timedelta, got {type(delay).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidRequest(f"delay is {seconds}s; use 0 or more seconds")
    if seconds > MAX_DELAY_SECONDS:
        raise InvalidRequest(
            f"delay is {seconds}s; beanstalkd accepts at most {MAX_DELAY_SECONDS}s (about 136 years)"
        )
    return seconds
