"""Looking after a dq tube: per-node counts, one job's state, buried jobs, kicking them back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import greenstalk
from redis.exceptions import RedisError

from queue_engine import metrics
from queue_engine.dq.envelope import Envelope, check_job_id, due_of_job_id
from queue_engine.dq.membership import Membership
from queue_engine.dq.nodes import NodeConnection, NodeDown, check_nodes, check_tube, deleter
from queue_engine.dq.producer import MAX_NODES
from queue_engine.dq.records import RETENTION_S, Copy, JobRecords, parse_copies
from queue_engine.dq.redis_client import connect_redis, describe_redis_error
from queue_engine.errors import NotFound, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
_STATES = ("ready", "delayed", "reserved", "buried")


@dataclass(frozen=True)
class NodeStats:
    node: str
    ready: int
    delayed: int
    reserved: int
    buried: int
    error: str | None = None  # why the node could not be asked; counts are 0 then


@dataclass(frozen=True)
class BuriedJob:
    id: str  # the job id (for a job not written by dq: node/beanstalkd-id)
    body: bytes | None  # None when the node holding it could not be reached
    node: str
    attempts: int
    error: str  # the last failure, if Redis kept it
    buried_at: datetime | None


@dataclass(frozen=True)
class CopyInfo:
    """One copy of a job on one node, as that node sees it now."""

    node: str
    job: int  # the node's own (beanstalkd) job id
    state: str | None  # delayed | ready | reserved | buried; None when gone or not reachable
    error: str | None = None  # why the node could not be asked


@dataclass(frozen=True)
class JobInfo:
    """A job looked up by id: its state from the Redis record, its copies from the nodes."""

    id: str
    # delayed | ready | reserved | buried | done | revoked, or unknown: Redis has no record
    state: str
    due_at: datetime  # exact when a copy was read, else the whole second the id carries
    attempts: int
    last_error: str
    next_attempt_at: datetime | None  # a retry waits until then
    buried_at: datetime | None
    copies: list[CopyInfo]
    body: bytes | None  # None when no copy could be read
    record_may_be_lost: bool = False  # unknown, yet a record would still be kept for this id

    @property
    def found(self) -> bool:
        return self.state != "unknown"


@dataclass(frozen=True)
class BuriedCursor:
    """Where a page of buried jobs ended: after a Redis entry, or at a node's unrecorded jobs."""

    score: float = 0.0
    job_id: str = ""
    node_index: int | None = None  # set once the Redis list is exhausted


@dataclass(frozen=True)
class BuriedPage:
    jobs: list[BuriedJob]
    total: int  # buried jobs Redis lists (jobs only a node knows of are not counted)
    next: BuriedCursor | None  # None: this was the last page


class DelayAdmin:
    """Inspection and repair for one tube on its nodes; asyncio-friendly."""

    def __init__(
        self,
        nodes: Sequence[str],
        tube: str,
        redis_url: str,
        *,
        name: str | None = None,
        connect_timeout: float = 3.0,
    ) -> None:
        self._nodes = check_nodes(nodes)
        self._tube = check_tube(tube)
        self.queue = name or tube
        self._connect_timeout = connect_timeout
        self._conns = {node: self._connection(node) for node in self._nodes}
        self._executor = ThreadPoolExecutor(
            max_workers=max(MAX_NODES, len(self._nodes)) + 1, thread_name_prefix="dq-admin"
        )
        self._redis = connect_redis(redis_url, connect_timeout)
        self._records = JobRecords(self._redis, self._tube)

    def _connection(self, node: str) -> NodeConnection:
        timeout = self._connect_timeout
        return NodeConnection(node, self._tube, connect_timeout=timeout, io_timeout=timeout)

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes)

    def set_nodes(self, active: Sequence[str], draining: Sequence[str] = ()) -> None:
        """Look at ``active`` and ``draining`` nodes from now on (both still hold jobs)."""
        nodes = list(Membership.of(active, draining).all)
        for node in nodes:
            if node not in self._conns:
                self._conns[node] = self._connection(node)
        for node in [n for n in self._conns if n not in nodes]:
            self._conns.pop(node).close()
        self._nodes = nodes

    async def stats(self) -> list[NodeStats]:
        """Jobs per node and state (copies: each job is counted once per node holding it)."""
        results = await asyncio.gather(*(self._node_stats(node) for node in self._nodes))
        for stats in results:
            for state in _STATES:
                gauge = metrics.DQ_JOBS.labels(queue=self.queue, node=stats.node, state=state)
                gauge.set(getattr(stats, state))
        return list(results)

    async def _node_stats(self, node: str) -> NodeStats:
        def ask(client: greenstalk.Client[bytes]) -> dict[str, Any]:
            try:
                return dict(client.stats_tube(self._tube))
            except greenstalk.NotFoundError:
                return {}  # the tube exists only while it has jobs or watchers

        try:
            tube = await self._call(self._conns[node].call, ask)
        except NodeDown as exc:
            return NodeStats(node, 0, 0, 0, 0, error=exc.reason)
        return NodeStats(
            node,
            ready=int(tube.get("current-jobs-ready", 0)),
            delayed=int(tube.get("current-jobs-delayed", 0)),
            reserved=int(tube.get("current-jobs-reserved", 0)),
            buried=int(tube.get("current-jobs-buried", 0)),
        )

    async def kick(self, bound: int = 100) -> int:
        """Re-queue up to ``bound`` buried jobs from every node, attempts reset; returns how many jobs."""
        if bound < 1:
            return 0
        kicked: set[str] = set()
        for node in self._nodes:
            while len(kicked) < bound:
                try:
                    job = await self._call(self._conns[node].call, _peek_buried)
                except NodeDown as exc:
                    log.warning("dq %s: kick skipped node %s: %s", self.queue, node, exc.reason)
                    break
                if job is None:
                    break
                envelope = Envelope.decode(job.body)
                if envelope is not None:
                    try:
                        await self._records.unbury(envelope.job_id)
                    except RedisError as exc:
                        raise Unavailable(
                            f"kick stopped after {len(kicked)} job(s): redis unreachable "
                            f"({describe_redis_error(exc)}); attempts could not be reset"
                        ) from None
                try:
                    await self._call(self._conns[node].call, lambda c, jid=job.id: c.kick_job(jid))
                except (NodeDown, greenstalk.Error) as exc:
                    log.warning("dq %s: could not kick %s/%s: %r", self.queue, node, job.id, exc)
                    break
                kicked.add(envelope.job_id if envelope else f"{node}/{job.id}")
        if kicked:
            log.info("dq %s: kicked %d buried job(s)", self.queue, len(kicked))
        return len(kicked)

    async def buried(self, limit: int = 20) -> list[BuriedJob]:
        """Buried jobs, oldest first: those Redis lists, then any a node holds that it does not."""
        found: dict[str, BuriedJob] = {}
        try:
            records = await self._records.buried(limit)
        except RedisError as exc:
            log.warning(
                "dq %s: buried list from redis unavailable: %s", self.queue, describe_redis_error(exc)
            )
            records = []
        for record in records:
            node, _, jid = record.copy.rpartition("/")
            body = None
            if node in self._conns and jid.isdigit():
                job = await self._peek(node, int(jid))
                envelope = Envelope.decode(job.body) if job is not None else None
                # The id may be another job's by now (a node restarted without its binlog).
                body = envelope.body if envelope is not None and envelope.job_id == record.job_id else None
            found[record.job_id] = BuriedJob(
                record.job_id,
                body,
                node,
                record.attempts,
                record.error,
                datetime.fromtimestamp(record.buried_at, UTC),
            )
        for node in self._nodes:
            if len(found) >= limit:
                break
            try:
                job = await self._call(self._conns[node].call, _peek_buried)
            except NodeDown:
                continue
            if job is None:
                continue
            envelope = Envelope.decode(job.body)
            key = envelope.job_id if envelope else f"{node}/{job.id}"
            if key not in found:
                body = envelope.body if envelope else job.body
                found[key] = BuriedJob(key, body, node, 0, "", None)
        return list(found.values())[:limit]

    async def buried_page(self, limit: int, after: BuriedCursor | None = None) -> BuriedPage:
        """Up to ``limit`` buried jobs, oldest first, after ``after``; then the ones only a node knows.

        beanstalkd shows only the first buried job of a tube per node, so jobs that Redis does
        not list (not written by dq, or their record lost) come one per node, on the last page.
        """
        records = self._records
        try:
            total = int(await records.redis.zcard(records._buried))
            entries = [] if after and after.node_index is not None else await self._buried_after(limit, after)
        except RedisError as exc:
            raise Unavailable(f"buried jobs: redis unreachable ({describe_redis_error(exc)})") from None
        jobs = [await self._buried_job(job_id, score) for job_id, score in entries[:limit]]
        if len(entries) > limit:
            last = entries[limit - 1]
            return BuriedPage(jobs, total, BuriedCursor(last[1], last[0]))
        start = after.node_index if after and after.node_index is not None else 0
        for index in range(start, len(self._nodes)):
            extra = await self._unrecorded_buried(self._nodes[index])
            if extra is None:
                continue
            if len(jobs) >= limit:
                return BuriedPage(jobs, total, BuriedCursor(node_index=index))
            jobs.append(extra)
        return BuriedPage(jobs, total, None)

    async def _buried_after(self, limit: int, after: BuriedCursor | None) -> list[tuple[str, float]]:
        """Up to limit + 1 (job id, buried time) after the cursor, in the sorted set's order."""
        records = self._records
        low: float | str = after.score if after else "-inf"
        found: list[tuple[str, float]] = []
        start = 0
        while len(found) <= limit:
            batch = cast(
                list[tuple[bytes, float]],
                await records.redis.zrangebyscore(
                    records._buried, low, "+inf", start=start, num=limit + 1, withscores=True
                ),
            )
            if not batch:
                break
            start += len(batch)
            for member, score in batch:
                job_id = member.decode()
                # Equal times sort by id: skip what the previous page already showed.
                if after and score == after.score and job_id <= after.job_id:
                    continue
                found.append((job_id, float(score)))
        return found

    async def _buried_job(self, job_id: str, score: float) -> BuriedJob:
        data = await self._records.record(job_id)
        node, _, jid = data.get("buried_copy", "").rpartition("/")
        body = None
        if node in self._conns and jid.isdigit():
            job = await self._peek(node, int(jid))
            envelope = Envelope.decode(job.body) if job is not None else None
            body = envelope.body if envelope is not None else None
        attempts = int(data.get("attempts", "0") or 0)
        buried_at = datetime.fromtimestamp(score, UTC)
        return BuriedJob(job_id, body, node, attempts, data.get("error", ""), buried_at)

    async def _unrecorded_buried(self, node: str) -> BuriedJob | None:
        """The first buried job on ``node`` if Redis does not list it."""
        try:
            job = await self._call(self._conns[node].call, _peek_buried)
        except NodeDown:
            return None
        if job is None:
            return None
        envelope = Envelope.decode(job.body)
        if envelope is not None:
            if await self._records.redis.zscore(self._records._buried, envelope.job_id) is not None:
                return None
            return BuriedJob(envelope.job_id, envelope.body, node, 0, "", None)
        return BuriedJob(f"{node}/{job.id}", job.body, node, 0, "", None)

    async def job(self, job_id: str) -> JobInfo:
        """The job's state, due time, attempts and copies; ``unknown`` when Redis has no record."""
        check_job_id(job_id)
        now = time.time()
        try:
            data = await self._records.record(job_id)
            claim = await self._records.peek(job_id, now) if data else None
            score = await self._records.redis.zscore(self._records._buried, job_id) if data else None
        except RedisError as exc:
            raise Unavailable(f"job {job_id}: redis unreachable ({describe_redis_error(exc)})") from None
        copies = parse_copies(data.get("copies", ""))
        kept = parse_copies(data.get("buried_copy", ""))
        copies += [copy for copy in kept if copy not in copies]
        infos, envelope = await self._copies(job_id, copies)
        due = due_of_job_id(job_id)
        if not data:
            state = "unknown"
        elif claim is None or claim.action in ("revoked", "done", "buried"):
            state = claim.action if claim else "unknown"
        elif claim.action == "busy":
            state = "reserved"
        elif claim.action == "wait" or (envelope.due if envelope else due) > now:
            state = "delayed"
        else:
            state = "ready"
        nxt = float(data["next"]) if data.get("next") else None
        return JobInfo(
            id=job_id,
            state=state,
            due_at=envelope.due_at if envelope else datetime.fromtimestamp(due, UTC),
            attempts=int(data.get("attempts", "0") or 0),
            last_error=data.get("error", ""),
            next_attempt_at=datetime.fromtimestamp(nxt, UTC) if nxt and nxt > now else None,
            buried_at=datetime.fromtimestamp(float(score), UTC) if score is not None else None,
            copies=infos,
            body=envelope.body if envelope else None,
            # The producer keeps a record until due + retention: none before then may be a loss.
            record_may_be_lost=not data and now < due + RETENTION_S,
        )

    async def _copies(self, job_id: str, copies: list[Copy]) -> tuple[list[CopyInfo], Envelope | None]:
        infos: list[CopyInfo] = []
        found: Envelope | None = None
        for node, jid, _ in copies:
            if node not in self._conns:
                infos.append(CopyInfo(node, jid, None, "not one of the queue's nodes now"))
                continue
            try:
                seen = await self._call(self._conns[node].call, _inspect(jid))
            except NodeDown as exc:
                infos.append(CopyInfo(node, jid, None, exc.reason))
                continue
            if seen is None:
                infos.append(CopyInfo(node, jid, None))
                continue
            state, data = seen
            envelope = Envelope.decode(data)
            if envelope is None or envelope.job_id != job_id:
                infos.append(CopyInfo(node, jid, None, "the node's job of that number is another job"))
                continue
            found = found or envelope
            infos.append(CopyInfo(node, jid, state))
        return infos, found

    async def kick_job(self, job_id: str) -> int:
        """Re-queue one buried job (attempts reset): its buried copies become ready; returns how many."""
        info = await self._buried_only(job_id, "kick")
        buried = [copy for copy in info.copies if copy.state == "buried"]
        if not buried:
            raise Unavailable(f"job {job_id} is buried but no node holding a copy answered; try again")
        try:
            await self._records.unbury(job_id)
        except RedisError as exc:
            raise Unavailable(f"kick of {job_id}: redis unreachable ({describe_redis_error(exc)})") from None
        kicked = 0
        for copy in buried:
            try:
                await self._call(self._conns[copy.node].call, lambda c, jid=copy.job: c.kick_job(jid))
                kicked += 1
            except (NodeDown, greenstalk.Error) as exc:
                log.warning("dq %s: could not kick %s/%s: %r", self.queue, copy.node, copy.job, exc)
        return kicked

    async def delete_job(self, job_id: str) -> int:
        """Delete one buried job for good: a tombstone, then its copies; returns copies deleted."""
        info = await self._buried_only(job_id, "delete")
        try:
            await self._records.revoke(job_id)  # the tombstone: no copy left anywhere ever runs
            await self._records.unbury(job_id)  # off the buried list
        except RedisError as exc:
            reason = describe_redis_error(exc)
            raise Unavailable(f"delete of {job_id}: redis unreachable ({reason})") from None
        deleted = 0
        for copy in info.copies:
            if copy.node in self._conns and copy.state is not None:
                try:
                    deleted += await self._call(self._conns[copy.node].call, deleter(copy.job))
                except NodeDown as exc:
                    log.info("delete %s: copy left on %s (down); the tombstone stops it", job_id, exc.address)
        return deleted

    async def _buried_only(self, job_id: str, what: str) -> JobInfo:
        info = await self.job(job_id)
        if info.state == "unknown":
            raise NotFound(f"no job {job_id} on {self.queue} (never published, or its record expired)")
        if info.state != "buried":
            raise NotFound(f"cannot {what} job {job_id} on {self.queue}: it is {info.state}, not buried")
        return info

    async def _peek(self, node: str, jid: int) -> greenstalk.Job[bytes] | None:
        try:
            return await self._call(self._conns[node].call, lambda c: c.peek(jid))
        except (NodeDown, greenstalk.Error):
            return None

    async def close(self) -> None:
        await self._call(self._close_conns)
        self._executor.shutdown(wait=False)
        await self._redis.aclose()

    def _close_conns(self) -> None:
        for conn in self._conns.values():
            conn.close()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def _inspect(jid: int) -> Callable[[greenstalk.Client[bytes]], tuple[str, bytes] | None]:
    """An op reading job ``jid``'s state and data on one node; None when the node has no such job."""

    def inspect(client: greenstalk.Client[bytes]) -> tuple[str, bytes] | None:
        try:
            stats = client.stats_job(jid)
            job = client.peek(jid)
        except greenstalk.NotFoundError:
            return None
        return str(stats.get("state", "")), job.body

    return inspect


def _peek_buried(client: greenstalk.Client[bytes]) -> greenstalk.Job[bytes] | None:
    try:
        return client.peek_buried()
    except greenstalk.NotFoundError:
        return None
