"""Per-node I/O for the asyncio side (consumer, producer): a reconnecting, pipelined connection.

Guarantees:

- Calls on one :class:`AsyncNodeConnection` may run concurrently; they are pipelined on one
  socket (see :mod:`queue_engine.dq.beanstalk`). No thread, so no thread hop per call.
- Any connection-level failure (reset, EOF, timeout, a reply out of step) drops the socket, and
  the next call reconnects; every call still waiting on the old socket fails with
  :class:`~queue_engine.dq.nodes.NodeDown`. A kept connection that the node closed since its
  last use (a restarted node) is retried once on a new connection; a timeout never is.
- Hung nodes: connections that share a :class:`~queue_engine.dq.nodes.NodeHealth` learn from
  the first timeout, and calls on the node fail at once until a probe (the consumer's reserve)
  gets an answer. Calls on other nodes never wait for it: each node has its own sockets.
- Deletes asked for on one node in the same loop iteration (:meth:`AsyncNodeConnection.delete_soon`,
  :meth:`AsyncNodeConnection.delete_then`) go out together: one call (one write, one timeout,
  one task) for the lot, each with the guarantees of :func:`delete_reserved` or
  :func:`delete_copy`.
- Node identity: :meth:`AsyncNodeConnection.server_id` is the node process's ``stats`` id (new
  each time beanstalkd starts); :func:`delete_copy` deletes a recorded copy by id only on the
  process that took it, and otherwise only after peeking that it still carries the job's id.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple, TypeVar

from queue_engine.dq.beanstalk import BeanstalkError, Closed, Connection, NotFound
from queue_engine.dq.envelope import Envelope
from queue_engine.dq.nodes import NodeDown, NodeHealth, NodeSettings

T = TypeVar("T")
Op = Callable[[Connection], Awaitable[T]]
log = logging.getLogger(__name__)


class _Delete(NamedTuple):
    jid: int
    socket: Connection | None  # a reservation's socket, or None for a recorded copy
    server: str  # for a recorded copy: the node process that took it
    job_id: str  # for a recorded copy: the dq job it must carry
    future: asyncio.Future[bool | None] | None  # or, instead, then is called with the answer
    then: Callable[[bool | None], None] | None


class AsyncNodeConnection:
    """One node, one tube: a connection made on first use and remade after any failure."""

    def __init__(
        self,
        address: str,
        tube: str,
        *,
        connect_timeout: float,
        io_timeout: float,
        health: NodeHealth | None = None,
    ) -> None:
        self.settings = NodeSettings.of(address, tube, connect_timeout=connect_timeout, io_timeout=io_timeout)
        self.address = address
        self.tube = tube
        self._conn: Connection | None = None
        self._connecting: asyncio.Lock | None = None
        self._server_id: str | None = None
        # Call number -> [monotonic start, limit in seconds], while running; one timer per
        # connection (not one per call) gives up on the socket once a call is overdue.
        self._calls: dict[int, list[float]] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self._next_call = 0
        self.last_error: str | None = None
        self.down_until = 0.0  # monotonic time before which callers may prefer other nodes
        self._failures = 0
        self._deletes: list[_Delete] = []  # asked for in this loop iteration
        self._delete_runs: set[asyncio.Task[None]] = set()
        self._deletes_timer: asyncio.Handle | None = None  # the next _send_deletes, if due
        self._deletes_when = 0.0  # its loop time
        self.health = health
        if health is not None:
            health.track(self)

    def delete_soon(
        self,
        jid: int,
        *,
        socket: Connection | None = None,
        server: str = "",
        job_id: str = "",
        within: float = 0.0,
    ) -> asyncio.Future[bool | None]:
        """Delete a copy along with the other deletes asked for on this node meanwhile: one call
        for the lot. It leaves in the next loop iteration, or up to ``within`` seconds later
        (with the deletes asked for by then), or once the batch on its way is back.

        With ``socket``: the copy reserved on that very socket (see :func:`delete_reserved`);
        otherwise the recorded copy of job ``job_id`` taken by node process ``server`` (see
        :func:`delete_copy`). The answer: True deleted; False gone, or not this job's; None when
        the node failed (a timeout, a lost connection, a suspect node, the connection closed).
        """
        future: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        self._add_delete(_Delete(jid, socket, server, job_id, future, None), within)
        return future

    def delete_then(
        self, jid: int, then: Callable[[bool | None], None], *, server: str, job_id: str, within: float
    ) -> None:
        """As :meth:`delete_soon` for a recorded copy, but ``then`` is called with the answer
        when the batch is back (no future, no wake-up: for deletes nobody waits for)."""
        self._add_delete(_Delete(jid, None, server, job_id, None, then), within)

    def _add_delete(self, delete: _Delete, within: float) -> None:
        self._deletes.append(delete)
        if not self._delete_runs:  # else: sent when the batch on its way is back
            self._send_deletes_at(asyncio.get_running_loop().time() + within)

    def flush_deletes(self) -> None:
        """Send the deletes waiting for their batch now."""
        if self._deletes and not self._delete_runs:
            self._send_deletes_at(0.0)

    def _send_deletes_at(self, when: float) -> None:
        if self._deletes_timer is not None:
            if self._deletes_when <= when:
                return
            self._deletes_timer.cancel()
        loop = asyncio.get_running_loop()
        self._deletes_when = when
        if when <= loop.time():
            self._deletes_timer = loop.call_soon(self._send_deletes)
        else:
            self._deletes_timer = loop.call_at(when, self._send_deletes)

    def _send_deletes(self) -> None:
        self._deletes_timer = None
        if not self._deletes:
            return
        batch, self._deletes = self._deletes, []
        task = asyncio.get_running_loop().create_task(self._run_deletes(batch))
        self._delete_runs.add(task)
        task.add_done_callback(self._deletes_sent)

    def _deletes_sent(self, task: asyncio.Task[None]) -> None:
        # One batch on its way at a time: deletes asked for meanwhile leave together when it is
        # back (under load, one write per round trip instead of one per loop iteration).
        self._delete_runs.discard(task)
        if self._deletes:
            self._send_deletes_at(0.0)

    async def _run_deletes(self, batch: list[_Delete]) -> None:
        results: list[bool] | list[None] = [None] * len(batch)
        try:
            results = await self.call(_deleter(self, batch), limit=self.settings.connect_timeout)
        except (NodeDown, BeanstalkError) as exc:
            log.debug("deletes on %s failed: %r", self.address, exc)
        finally:  # also when cancelled (the loop is ending): nobody waits forever
            for delete, result in zip(batch, results, strict=True):
                _answer(delete, result)

    async def call(self, op: Op[T], *, probe: bool = False, limit: float | None = None) -> T:
        """Run ``op`` on the (re)connected connection; raise :class:`NodeDown` on connection
        trouble. ``limit`` replaces the I/O timeout for this call; ``probe`` lets the call try
        a suspect node. A server error answer (:class:`BeanstalkError`) is raised as it is."""
        self._admit(probe)
        self._next_call += 1
        number = self._next_call
        seconds = self.settings.io_timeout if limit is None else limit
        self._calls[number] = [time.monotonic(), seconds]
        if self._watchdog is None:
            self._arm(seconds)
        elif self._watchdog.when() > asyncio.get_running_loop().time() + seconds:
            # Armed for a longer call: this one must be cut at its own limit.
            self._watchdog.cancel()
            self._arm(seconds)
        try:
            reused = self._conn is not None and not self._conn.closed
            try:
                return await self._attempt(op, limit)
            except NodeDown as exc:
                # Not after a timeout (a hung node would cost twice), nor when this side cut
                # the connection (another call's timeout, a stop): only a stale connection.
                if not reused or isinstance(exc.__cause__, TimeoutError | Closed):
                    raise
            self._admit(probe)
            return await self._attempt(op, limit)
        finally:
            del self._calls[number]

    def _arm(self, delay: float) -> None:
        self._watchdog = asyncio.get_running_loop().call_later(delay, self._check_calls)

    def _check_calls(self) -> None:
        """The watchdog: cut the socket under a call that ran past its limit (each of its calls
        then fails with :class:`~queue_engine.dq.beanstalk.Expired`, a timeout)."""
        self._watchdog = None
        if not self._calls:
            return
        now = time.monotonic()
        overdue = [call for call in self._calls.values() if call[0] + call[1] <= now]
        if overdue:
            why = f"no answer within {min(call[1] for call in overdue):g}s"
            for call in overdue:
                # Dealt with: its socket is cut now (or it is connecting: that has a timeout
                # of its own).
                call[1] = math.inf
            if self._conn is not None:
                self._conn.expire(why)
        due = min(start + limit for start, limit in self._calls.values())
        if due < math.inf:
            self._arm(max(0.0, due - now))
        else:
            self._arm(1.0)  # calls ending meanwhile; look again once

    def _admit(self, probe: bool) -> None:
        if self.health is not None:
            refused = self.health.admit(probe=probe)
            if refused is not None:
                raise NodeDown(self.address, f"not answering, skipped for now (last: {refused})")

    async def _attempt(self, op: Op[T], limit: float | None) -> T:
        conn: Connection | None = None
        try:
            conn = await self._connect()  # its own timeout; the call's is the watchdog's
            result = await op(conn)
        except BeanstalkError:
            raise  # an answer from the server: the connection is still in step
        except asyncio.CancelledError:
            # A reply we no longer wait for is dropped by the reader; a reservation made by
            # a cancelled reserve must not stay with us unseen: drop the connection.
            self._drop(conn)
            raise
        except (OSError, ConnectionError, TimeoutError, ValueError, IndexError) as exc:
            self._drop(conn)
            self._note_failure(exc)
            raise NodeDown(self.address, _describe(exc)) from exc
        if self._failures:
            self._failures = 0
            self.last_error = None
            self.down_until = 0.0
        if self.health is not None:
            self.health.answered()
        return result

    async def _connect(self) -> Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # concurrent callers share one new connection
            if self._conn is None or self._conn.closed:
                self._server_id = None
                async with asyncio.timeout(self.settings.connect_timeout):
                    self._conn = await Connection.open(self.settings.host, self.settings.port, self.tube)
            return self._conn

    async def server_id(self, conn: Connection) -> str:
        """Inside a call: the node process's id (``stats``), new each time beanstalkd starts."""
        if self._server_id is None or self._conn is not conn:
            server = (await conn.stats()).get("id", "")
            if self._conn is conn:
                self._server_id = server
            return server
        return self._server_id

    def abort_if_busy(self, older_than: float) -> bool:
        """Cut the socket if a call has been running for ``older_than`` seconds."""
        if self._calls and time.monotonic() - min(start for start, _ in self._calls.values()) >= older_than:
            self._drop(self._conn)
            return True
        return False

    def _note_failure(self, exc: BaseException) -> None:
        if isinstance(exc, Closed):
            return  # cut by us (after another call's timeout, or at stop): no news of the node
        self._failures += 1
        self.last_error = _describe(exc)
        self.down_until = time.monotonic() + min(5.0, 0.1 * 2 ** min(self._failures, 6))
        if self.health is not None:
            if isinstance(exc, TimeoutError):
                self.health.timed_out(self.last_error)
            else:
                self.health.answered()  # refused or reset: fails fast by itself, no need to skip

    def _drop(self, conn: Connection | None) -> None:
        if conn is not None:
            conn.close()
        if conn is self._conn:
            self._conn = None
            self._server_id = None

    def close(self) -> None:
        if self._deletes_timer is not None:  # deletes not sent yet: answered None, never sent
            self._deletes_timer.cancel()
            self._deletes_timer = None
            batch, self._deletes = self._deletes, []
            for delete in batch:
                _answer(delete, None)
        self._drop(self._conn)

    @property
    def backing_off(self) -> bool:
        return time.monotonic() < self.down_until


def _answer(delete: _Delete, result: bool | None) -> None:
    if delete.future is not None:
        if not delete.future.done():
            delete.future.set_result(result)
    elif delete.then is not None:
        try:
            delete.then(result)
        except Exception:  # a bug there must not keep the other answers from their callers
            log.exception("a delete's callback failed")


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return f"timed out ({text})"
    return text


def delete_copy(node: AsyncNodeConnection, jid: int, server: str, job_id: str) -> Op[bool]:
    """An op deleting the recorded copy ``jid`` of dq job ``job_id``, only if it still is that.

    A node restarted without its binlog numbers jobs from 1 again, and beanstalkd deletes by id
    across tubes: an old id may now be someone else's job. Where the node process is the one
    that took the copy (its ``stats`` id, ``server``), the id is ours; otherwise (a restart, or
    a record without it) the job is peeked first and deleted only if it carries ``job_id``.
    """

    async def delete(conn: Connection) -> bool:
        if not server or await node.server_id(conn) != server:
            try:
                envelope = Envelope.decode((await conn.peek(jid)).body)
            except NotFound:
                return False
            if envelope is None or envelope.job_id != job_id:
                return False
        return await _delete(conn, jid)

    return delete


def _deleter(node: AsyncNodeConnection, batch: list[_Delete]) -> Op[list[bool]]:
    """An op running a batch of :meth:`AsyncNodeConnection.delete_soon` deletes: those that
    may go by id (a reservation on this socket; a recorded copy on the node process that took
    it) in one write, the others (after a node restart) checked one by one."""

    async def run(conn: Connection) -> list[bool]:
        recorded = any(d.socket is None and d.server for d in batch)
        server = await node.server_id(conn) if recorded else ""
        results = [False] * len(batch)
        direct, checked = [], []
        for i, d in enumerate(batch):
            if d.socket is conn or (d.socket is None and d.server and d.server == server):
                direct.append(i)
            elif d.socket is None:
                checked.append(i)
            # else: the reservation went with its socket; nothing to delete here
        if direct:
            deleted = await conn.delete_many([batch[i].jid for i in direct])
            for i, result in zip(direct, deleted, strict=True):
                results[i] = result
        for i in checked:  # rare: only after a node restart
            d = batch[i]
            results[i] = await delete_copy(node, d.jid, d.server, d.job_id)(conn)
        return results

    return run


def delete_reserved(jid: int, socket: Connection) -> Op[bool]:
    """An op deleting the copy ``jid`` reserved on ``socket``; False when it is gone.

    Only on that very socket: a reservation ends with its connection, and after a reconnect
    the id may name a ready copy taken over by someone else, or (a node restarted without its
    binlog) another tube's job.
    """

    async def delete(conn: Connection) -> bool:
        return conn is socket and await _delete(conn, jid)

    return delete


async def _delete(conn: Connection, jid: int) -> bool:
    """Delete ``jid`` on ``conn``; False when it is already gone."""
    try:
        await conn.delete(jid)
    except NotFound:
        return False
    return True
