"""A consumer's view of the copies it holds, and the blocking calls it makes on them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import greenstalk

from queue_engine.dq.envelope import Envelope
from queue_engine.dq.nodes import PRIORITY, NodeConnection, NodeDown

RESERVE_TIMEOUT = 1  # seconds a worker blocks in reserve before looking at stop and Redis again


@dataclass
class Local:
    """Our first copy of a job, as the other copies this consumer holds see it."""

    settled: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False  # recorded as done in Redis
    # Other copies held here, waiting for this one, by (node, beanstalkd id).
    followers: dict[tuple[str, int], NodeConnection] = field(default_factory=dict)
    deleted: set[tuple[str, int]] = field(default_factory=set)  # followers' copies already deleted for them


@dataclass
class Held:
    """A copy this consumer has reserved."""

    conn: NodeConnection
    job: greenstalk.Job[bytes]
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
        self._idle: list[NodeConnection] = []
        self._max_idle = max_held + 8  # every holder gives its connection back: no reconnect churn

    def take(self) -> NodeConnection | None:
        return self._idle.pop() if self._idle else None

    def give(self, conn: NodeConnection) -> None:
        if len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn.close()  # quick, and nothing else uses this connection any more


def reserve(client: greenstalk.Client[bytes]) -> greenstalk.Job[bytes] | None:
    try:
        return client.reserve(timeout=RESERVE_TIMEOUT)
    except (greenstalk.TimedOutError, greenstalk.DeadlineSoonError):
        return None


def reserve_now(client: greenstalk.Client[bytes]) -> greenstalk.Job[bytes] | None:
    try:
        return client.reserve(timeout=0)
    except (greenstalk.TimedOutError, greenstalk.DeadlineSoonError):
        return None


def reserve_batch(
    conn: NodeConnection, spares: list[NodeConnection], quick_timeout: float
) -> list[tuple[NodeConnection, greenstalk.Job[bytes]]]:
    """Blocking: wait for a copy on ``conn``; then take copies that are ready at once, one per
    spare connection (a reservation belongs to the connection that made it). Raises
    :class:`NodeDown` only for ``conn``; trouble on a spare just ends the batch. The reserve on
    ``conn`` is the probe that finds out when a suspect (hung) node answers again."""
    job = conn.call(reserve, probe=True)
    if job is None:
        return []
    got = [(conn, job)]
    for spare in spares:
        try:
            more = spare.call(reserve_now, timeout=quick_timeout)
        except (NodeDown, greenstalk.Error):
            break
        if more is None:
            break
        got.append((spare, more))
    return got


def burier(job: greenstalk.Job[bytes]) -> Callable[[greenstalk.Client[bytes]], bool]:
    def bury(client: greenstalk.Client[bytes]) -> bool:
        client.bury(job, PRIORITY)
        return True

    return bury
