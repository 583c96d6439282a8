"""A consumer's view of the copies it holds, and the node calls it makes on them.

A reservation belongs to the connection that made it: each held copy keeps its connection
(nothing else is sent on it meanwhile, so a blocking reserve never delays its delete).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from queue_engine.dq.beanstalk import BeanstalkError, Connection, Job, TimedOut
from queue_engine.dq.envelope import Envelope
from queue_engine.dq.node_io import AsyncNodeConnection, Op
from queue_engine.dq.nodes import PRIORITY, NodeDown

RESERVE_TIMEOUT = 1  # seconds a worker blocks in reserve before looking at stop and Redis again


@dataclass
class Local:
    """Our first copy of a job, as the other copies this consumer holds see it."""

    settled: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False  # recorded as done in Redis
    # Other copies held here, waiting for this one, by (node, beanstalkd id).
    followers: dict[tuple[str, int], AsyncNodeConnection] = field(default_factory=dict)
    deleted: set[tuple[str, int]] = field(default_factory=set)  # followers' copies already deleted for them


@dataclass
class Held:
    """A copy this consumer has reserved."""

    conn: AsyncNodeConnection
    job: Job
    envelope: Envelope
    token: str
    claimed: bool = False
    keeper: asyncio.Task[None] | None = None  # started only if the copy is held long enough
    keep_timer: asyncio.TimerHandle | None = None
    local: Local | None = None  # set on the first copy of a job this consumer holds
    done_keeping: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def where(self) -> str:
        return f"{self.conn.address}/{self.job.id}"


class NodeLine:
    """One node's spare connections, and how many copies it may hold at once."""

    def __init__(self, max_held: int) -> None:
        self.permits = asyncio.Semaphore(max_held)
        self._idle: list[AsyncNodeConnection] = []
        self._max_idle = max_held + 8  # every holder gives its connection back: no reconnect churn

    def take(self) -> AsyncNodeConnection | None:
        return self._idle.pop() if self._idle else None

    def give(self, conn: AsyncNodeConnection) -> None:
        if len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn.close()  # quick, and nothing else uses this connection any more


async def _reserve(conn: Connection) -> Job | None:
    try:
        return await conn.reserve(RESERVE_TIMEOUT)
    except TimedOut:
        return None


async def _reserve_now(conn: Connection) -> Job | None:
    try:
        return await conn.reserve(0)
    except TimedOut:
        return None


async def reserve_batch(
    conn: AsyncNodeConnection, spares: list[AsyncNodeConnection], quick_timeout: float
) -> list[tuple[AsyncNodeConnection, Job]]:
    """Wait for a copy on ``conn``; then take copies that are ready at once, one per spare
    connection, all spares asked at the same time. Raises :class:`NodeDown` only for
    ``conn``; trouble on a spare just leaves it out. The reserve on ``conn`` is the probe that
    finds out when a suspect (hung) node answers again."""
    job = await conn.call(_reserve, probe=True)
    if job is None:
        return []
    got = [(conn, job)]
    if spares:
        more = await asyncio.gather(
            *(spare.call(_reserve_now, limit=quick_timeout) for spare in spares), return_exceptions=True
        )
        for spare, result in zip(spares, more, strict=True):
            if isinstance(result, Job):
                got.append((spare, result))
            elif isinstance(result, BaseException) and not isinstance(result, NodeDown | BeanstalkError):
                raise result
    return got


def burier(job: Job) -> Op[bool]:
    async def bury(conn: Connection) -> bool:
        await conn.bury(job.id, priority=PRIORITY)
        return True

    return bury
