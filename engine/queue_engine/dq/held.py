"""A consumer's view of the copies it holds, and the node calls it makes on them.

A reservation belongs to the connection that made it, so every call on a held copy goes to
that very socket (and fails, harmlessly, once the socket is gone: the reservation went with
it). One connection may hold many copies: a worker blocks in ``reserve`` only on a connection
that holds nothing, then takes the other ready copies on the same connection with pipelined
``reserve-with-timeout 0`` (which never blocks), so the calls on held copies never wait behind
a blocking reserve, and a burst of deletes leaves in one write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from queue_engine.dq.beanstalk import Connection, Job, TimedOut
from queue_engine.dq.envelope import Envelope
from queue_engine.dq.node_io import AsyncNodeConnection, Op
from queue_engine.dq.nodes import PRIORITY

RESERVE_TIMEOUT = 1  # seconds a worker blocks in reserve before looking at stop and Redis again
MAX_WAITING_BYTES = 16 << 20  # per node: bytes of the copies held waiting for their due time


@dataclass
class Local:
    """Our first copy of a job, as the other copies this consumer holds see it."""

    settled: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False  # recorded as done in Redis
    # Other copies held here, waiting for this one, by (node, beanstalkd id).
    followers: dict[tuple[str, int], tuple[AsyncNodeConnection, Connection]] = field(default_factory=dict)
    deleted: set[tuple[str, int]] = field(default_factory=set)  # followers' copies already deleted for them


class Ticket:
    """What a held copy counts against on its node (see :class:`NodeLine`): a prefetch permit
    from its reservation until it gets a handler slot, or a place among the copies waiting for
    their due time; nothing once its handler started."""

    __slots__ = ("kind", "line", "size")

    def __init__(self, line: NodeLine, size: int) -> None:
        self.line = line
        self.kind = "prefetch"
        self.size = size  # the copy's bytes, kept in memory while it is held

    def waiting(self) -> None:
        """The copy waits (for its due time, another copy's outcome): its prefetch permit goes
        to the next copy, if there is room among the waiting ones."""
        line = self.line
        if (
            self.kind == "prefetch"
            and line.waiting < line.max_waiting
            and line.waiting_bytes + self.size <= MAX_WAITING_BYTES
        ):
            line.waiting += 1
            line.waiting_bytes += self.size
            line.permits.release()
            self.kind = "waiting"

    def let_go(self) -> None:
        """The copy's handler started, or the copy is gone: it counts no more."""
        if self.kind == "prefetch":
            self.line.permits.release()
        elif self.kind == "waiting":
            self.line.waiting -= 1
            self.line.waiting_bytes -= self.size
        self.kind = ""


@dataclass
class Held:
    """A copy this consumer has reserved."""

    conn: AsyncNodeConnection
    socket: Connection  # the reservation's: calls on the copy go there or nowhere
    job: Job
    envelope: Envelope
    token: str
    ticket: Ticket
    claimed: bool = False
    keeper: asyncio.Task[None] | None = None  # started only if the copy is held long enough
    local: Local | None = None  # set on the first copy of a job this consumer holds
    done_keeping: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def where(self) -> str:
        return f"{self.conn.address}/{self.job.id}"


class NodeLine:
    """One node's idle connections, which connections hold copies, and how many copies may be
    held there at once: ``prefetch`` copies reserved and waiting for a handler slot (so that one
    consumer does not hoard a burst that others could handle), plus up to ``max_waiting``
    copies (and ``MAX_WAITING_BYTES``) waiting for their exact due time or for another copy's
    outcome (beanstalkd makes a copy ready up to a second early: at a high rate of delayed
    jobs, up to a second's worth of them waits). Copies whose handler runs or that are being settled do
    not count."""

    def __init__(self, prefetch: int, max_waiting: int) -> None:
        self.permits = asyncio.Semaphore(prefetch)
        self.gate = asyncio.Lock()  # held by the one worker waiting for permits
        # The node had copies waiting when last asked: several are worth asking for in one
        # round trip. Off while jobs trickle in one by one (delayed jobs coming due): there a
        # batch of non-blocking reserves would mostly come back empty.
        self.backlog = False
        self.waiting = 0
        self.waiting_bytes = 0
        self.max_waiting = max_waiting
        self._idle: list[AsyncNodeConnection] = []
        self._holding: dict[AsyncNodeConnection, int] = {}
        # Kept for reuse, no reconnect churn: delayed copies held until due keep their
        # connections busy, so the reserving workers need spare idle ones.
        self._max_idle = 64

    def take(self) -> AsyncNodeConnection | None:
        """An idle connection: it holds no copy, so it may block in reserve."""
        return self._idle.pop() if self._idle else None

    def hold(self, conn: AsyncNodeConnection) -> None:
        self._holding[conn] = self._holding.get(conn, 0) + 1

    def let_go(self, conn: AsyncNodeConnection) -> None:
        """One use of ``conn`` ended; once none is left it is idle again."""
        left = self._holding[conn] - 1
        if left:
            self._holding[conn] = left
            return
        del self._holding[conn]
        if len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn.close()  # quick, and nothing else uses this connection any more

    def close(self) -> None:
        for conn in [*self._idle, *self._holding]:
            conn.close()
        self._idle.clear()


Reserved = tuple[Connection, Job]


async def reserve_waiting(conn: Connection) -> Reserved | None:
    """Wait up to RESERVE_TIMEOUT for a ready copy (only on a connection holding none)."""
    try:
        return conn, await conn.reserve(RESERVE_TIMEOUT)
    except TimedOut:
        return None


def reserve_ready(count: int) -> Op[tuple[Connection, list[Job]]]:
    """An op taking up to ``count`` copies ready now, in one write; never blocks, so it may
    share a busy connection."""

    async def reserve(conn: Connection) -> tuple[Connection, list[Job]]:
        return conn, await conn.reserve_ready(count)

    return reserve


def on_copy(socket: Connection, action: Callable[[Connection], Awaitable[None]]) -> Op[bool]:
    """An op running ``action`` on a reservation's own socket; False if that socket is gone."""

    async def op(conn: Connection) -> bool:
        if conn is not socket:
            return False
        await action(conn)
        return True

    return op


def burier(socket: Connection, jid: int) -> Op[bool]:
    return on_copy(socket, lambda c: c.bury(jid, priority=PRIORITY))


def toucher(held: Held) -> Op[bool]:
    return on_copy(held.socket, lambda c: c.touch(held.job.id))


def releaser(held: Held, seconds: int) -> Op[bool]:
    return on_copy(held.socket, lambda c: c.release(held.job.id, priority=PRIORITY, delay=seconds))
