"""Moving a leaving node's jobs to the nodes that stay, so that a scale-down loses nothing.

Run once writers have stopped using the node (it is *draining*: consumers still take its due
jobs meanwhile). Each pass takes the node's buried, delayed and ready copies one at a time:

1. look the job up in Redis: a revoked or settled job's copy is just deleted, and so is a
   copy of a buried job other than the one kept buried;
2. put a copy on a staying node that holds none of the job's copies yet, with the same
   envelope (id, exact due time) and the remaining delay, rounded down like every copy (the
   consumer waits out the rest, so nothing is delivered early); a buried copy is buried there
   again (``reserve-job`` then ``bury``);
3. record the new copy in the job's Redis record in place of the old one (attempts, retry
   time and tombstone live in that record, keyed by job id, so they carry over);
4. delete the old copy.

A crash between 2 and 4 leaves one extra copy: copies of one job id are de-duplicated by the
record, so it is never delivered twice. A copy a consumer holds (reserved) cannot be moved:
the pass leaves it, and the node counts as drained only when its tube is empty.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import greenstalk
from redis.exceptions import RedisError

from queue_engine.dq.envelope import Envelope
from queue_engine.dq.nodes import PRIORITY, NodeConnection, NodeDown, check_nodes, check_tube
from queue_engine.dq.producer import JOB_TTR
from queue_engine.dq.records import Copy, JobRecords, parse_copies
from queue_engine.dq.redis_client import connect_redis, describe_redis_error

log = logging.getLogger(__name__)

# Far enough that no consumer reserves the copy before it is buried (reserve-job takes it).
_PARKED_DELAY = 3600
_KINDS = ("buried", "delayed", "ready")

# Put the new copy in place of the moved one (and as the kept buried copy, if it was).
_MOVE = """
local cur = redis.call('HGET', KEYS[1], 'copies')
if not cur then return 0 end
local out = {}
for item in string.gmatch(cur, '[^,]+') do
  if string.match(item, '^([^@]*)') ~= ARGV[1] then table.insert(out, item) end
end
table.insert(out, ARGV[2])
redis.call('HSET', KEYS[1], 'copies', table.concat(out, ','))
local kept = redis.call('HGET', KEYS[1], 'buried_copy')
if kept and string.match(kept, '^([^@]*)') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'buried_copy', ARGV[3])
end
return 1
"""


@dataclass(frozen=True)
class DrainResult:
    moved: int  # copies written to a staying node
    dropped: int  # copies deleted because their job was revoked, settled or kept elsewhere
    remaining: int  # jobs still in the tube on the node (reserved by consumers, or not moved)
    error: str | None = None  # why the pass stopped early (a node or Redis unreachable)

    @property
    def done(self) -> bool:
        return self.remaining == 0 and self.error is None


class NodeDrainer:
    """Moves one tube's jobs off leaving nodes; asyncio-friendly (node calls run in threads)."""

    def __init__(self, tube: str, redis_url: str, *, connect_timeout: float = 3.0) -> None:
        self._tube = check_tube(tube)
        self._timeout = connect_timeout
        self._redis = connect_redis(redis_url, connect_timeout)
        self._records = JobRecords(self._redis, self._tube)
        self._move = self._redis.register_script(_MOVE)
        self._conns: dict[str, NodeConnection] = {}
        self._turn = 0

    def _conn(self, node: str) -> NodeConnection:
        if node not in self._conns:
            timeout = self._timeout
            self._conns[node] = NodeConnection(node, self._tube, connect_timeout=timeout, io_timeout=timeout)
        return self._conns[node]

    async def remaining(self, node: str) -> int:
        """Jobs of the tube on ``node`` in any state (raises NodeDown)."""
        stats = await asyncio.to_thread(self._conn(node).call, _tube_stats(self._tube))
        return sum(int(stats.get(f"current-jobs-{k}", 0)) for k in ("ready", "delayed", "buried", "reserved"))

    async def drain(self, node: str, targets: Sequence[str], *, limit: int = 100_000) -> DrainResult:
        """One pass over ``node``: move what can be moved to ``targets``; see the module docs."""
        targets = check_nodes(targets)
        moved = dropped = 0
        try:
            for kind in _KINDS:
                seen: set[int] = set()
                while moved + dropped < limit:
                    job = await asyncio.to_thread(self._conn(node).call, _peeker(kind))
                    if job is None or job.id in seen:
                        break  # none left, or one that could not be deleted (reserved meanwhile)
                    seen.add(job.id)
                    outcome = await self._move_one(node, job, kind == "buried", targets)
                    moved += outcome == "moved"
                    dropped += outcome == "dropped"
            left = await self.remaining(node)
        except NodeDown as exc:
            return DrainResult(moved, dropped, -1, f"node {exc.address} unreachable: {exc.reason}")
        except RedisError as exc:
            return DrainResult(moved, dropped, -1, f"redis unreachable: {describe_redis_error(exc)}")
        except _NoTarget as exc:
            return DrainResult(moved, dropped, -1, str(exc))
        if moved or dropped:
            log.info(
                "dq %s: drain of %s moved %d, dropped %d, %d left", self._tube, node, moved, dropped, left
            )
        return DrainResult(moved, dropped, left)

    async def _move_one(self, node: str, job: greenstalk.Job[bytes], buried: bool, targets: list[str]) -> str:
        source = self._conn(node)
        envelope = Envelope.decode(job.body)
        where = f"{node}/{job.id}"
        copies: list[Copy] = []
        if envelope is not None:
            claim = await self._records.peek(envelope.job_id, time.time())
            if claim.action in ("revoked", "done") or (claim.action == "buried" and claim.kept != where):
                await asyncio.to_thread(source.call, _deleter(job.id))
                return "dropped"
            record = await self._records.record(envelope.job_id)
            copies = parse_copies(record.get("copies", ""))
            due = envelope.due
        else:
            # Not written by a dq producer: keep it as it is, with its remaining delay.
            stats = await asyncio.to_thread(source.call, lambda c: c.stats_job(job.id))
            due = time.time() + float(stats.get("time-left", 0))
        holding = {c.node for c in copies}
        candidates = [t for t in self._rotated(targets) if t not in holding] or self._rotated(targets)
        new: Copy | None = None
        failures: list[str] = []
        for target in candidates:
            try:
                new = await asyncio.to_thread(
                    self._conn(target).call, _putter(self._conn(target), job.body, due, buried)
                )
                break
            except (NodeDown, greenstalk.Error) as exc:
                failures.append(f"{target}: {exc}")
        if new is None:
            raise _NoTarget(f"no staying node took a moved job ({'; '.join(failures)})")
        if envelope is not None:
            new_text = f"{new.node}/{new.jid}@{new.server}" if new.server else f"{new.node}/{new.jid}"
            await self._move(
                keys=[f"dq:{self._tube}:j:{envelope.job_id}"], args=[where, new_text, f"{new.node}/{new.jid}"]
            )
        # Deleted last: until here the job has a copy on the node it is leaving.
        await asyncio.to_thread(source.call, _deleter(job.id))
        return "moved"

    def _rotated(self, targets: list[str]) -> list[str]:
        self._turn = (self._turn + 1) % len(targets)
        return targets[self._turn :] + targets[: self._turn]

    async def close(self) -> None:
        for conn in self._conns.values():
            await asyncio.to_thread(conn.close)
        await self._redis.aclose()


class _NoTarget(Exception):
    pass


def _tube_stats(tube: str) -> Callable[[greenstalk.Client[bytes]], dict[str, Any]]:
    def ask(client: greenstalk.Client[bytes]) -> dict[str, Any]:
        try:
            return dict(client.stats_tube(tube))
        except greenstalk.NotFoundError:
            return {}  # the tube exists only while it has jobs or watchers

    return ask


def _peeker(kind: str) -> Callable[[greenstalk.Client[bytes]], greenstalk.Job[bytes] | None]:
    def peek(client: greenstalk.Client[bytes]) -> greenstalk.Job[bytes] | None:
        try:
            if kind == "buried":
                return client.peek_buried()
            if kind == "delayed":
                return client.peek_delayed()
            return client.peek_ready()
        except greenstalk.NotFoundError:
            return None

    return peek


def _deleter(jid: int) -> Callable[[greenstalk.Client[bytes]], bool]:
    def delete(client: greenstalk.Client[bytes]) -> bool:
        try:
            client.delete(jid)
        except greenstalk.NotFoundError:
            return False  # reserved by a consumer meanwhile: it settles that copy itself
        return True

    return delete


def _putter(
    conn: NodeConnection, body: bytes, due: float, buried: bool
) -> Callable[[greenstalk.Client[bytes]], Copy]:
    def put(client: greenstalk.Client[bytes]) -> Copy:
        server = conn.server_id(client)
        if buried:
            jid = int(client.put(body, priority=PRIORITY, delay=_PARKED_DELAY, ttr=JOB_TTR))
            client.bury(client.reserve_job(jid), PRIORITY)
        else:
            delay = max(0, math.floor(due - time.time()))  # rounded down, as the producer does
            jid = int(client.put(body, priority=PRIORITY, delay=delay, ttr=JOB_TTR))
        return Copy(conn.address, jid, server)

    return put
