"""Looking after a dq tube: per-node counts, buried jobs, kicking them back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import greenstalk
from redis.exceptions import RedisError

from queue_engine import metrics
from queue_engine.dq.envelope import Envelope
from queue_engine.dq.nodes import NodeConnection, NodeDown, check_nodes, check_tube
from queue_engine.dq.records import JobRecords
from queue_engine.dq.redis_client import connect_redis, describe_redis_error
from queue_engine.errors import Unavailable

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
        self._conns = {
            node: NodeConnection(
                node, self._tube, connect_timeout=connect_timeout, io_timeout=connect_timeout
            )
            for node in self._nodes
        }
        self._executor = ThreadPoolExecutor(max_workers=len(self._nodes) + 1, thread_name_prefix="dq-admin")
        self._redis = connect_redis(redis_url, connect_timeout)
        self._records = JobRecords(self._redis, self._tube)

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


def _peek_buried(client: greenstalk.Client[bytes]) -> greenstalk.Job[bytes] | None:
    try:
        return client.peek_buried()
    except greenstalk.NotFoundError:
        return None
