"""Blocking connections to beanstalkd nodes, safe to share between threads; node checks.

Used where a blocking client fits (admin, drain, the sidecar's job lookups): greenstalk is
synchronous, so those call these from worker threads. The consumer and producer use the
asyncio connections of :mod:`queue_engine.dq.node_io`, which share :class:`NodeHealth`. Every call holds
the connection's lock (one request/response at a time on the socket), and any socket-level
failure drops the connection so that the next call reconnects instead of reading a stream
that is out of step.

A node that hangs (a stopped process, a host gone without resetting its connections) answers
nothing and every call on it costs a full timeout. Connections that share a
:class:`NodeHealth` learn from the first timeout: the node is *suspect*, and calls on it fail at
once, without I/O, until a probe call (the consumer's reserves) gets an answer again.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import greenstalk

from queue_engine.dq.envelope import Envelope
from queue_engine.errors import ConfigError

T = TypeVar("T")

PRIORITY = 1024
_TUBE_RE = re.compile(r"[A-Za-z0-9+/;.$_()][A-Za-z0-9+/;.$_()\-]{0,199}")


class NodeDown(ConnectionError):
    """A node could not be reached or dropped the connection."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"{address}: {reason}")
        self.address = address
        self.reason = reason


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"beanstalkd node {address!r}: expected host:port, e.g. 127.0.0.1:11300")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class NodeSettings:
    """Where and how a connection reaches one node: the blocking :class:`NodeConnection` and the
    asyncio :class:`~queue_engine.dq.node_io.AsyncNodeConnection` take the same ones."""

    address: str
    tube: str
    host: str
    port: int
    connect_timeout: float  # seconds to connect (and use/watch the tube)
    io_timeout: float  # seconds a call may wait for its answer, unless it gives its own

    @classmethod
    def of(cls, address: str, tube: str, *, connect_timeout: float, io_timeout: float) -> NodeSettings:
        host, port = parse_address(address)  # a bad address fails here, before any connection
        return cls(address, tube, host, port, connect_timeout, io_timeout)


def check_nodes(nodes: Sequence[str]) -> list[str]:
    if isinstance(nodes, str):
        raise ConfigError("nodes must be a list of host:port strings, not one string")
    result = [str(node) for node in nodes]
    if not result:
        raise ConfigError("nodes is empty: give at least one beanstalkd host:port")
    for node in result:
        parse_address(node)
    if len(set(result)) != len(result):
        raise ConfigError(f"nodes lists the same node twice: {result}")
    return result


def check_tube(tube: str) -> str:
    if not isinstance(tube, str) or not _TUBE_RE.fullmatch(tube):
        raise ConfigError(
            f"tube {tube!r}: use 1-200 characters of letters, digits and +/;.$_()- (not starting with -)"
        )
    return tube


class Abortable(Protocol):
    def abort_if_busy(self, older_than: float) -> bool: ...


class NodeHealth:
    """Whether one node answers, as seen by all of one client's connections to it.

    A timeout makes the node suspect: calls fail at once instead of each waiting out a timeout
    of its own (and the calls queued behind it). After a backoff (0.5 s doubling to 5 s) one
    probe call at a time may try the node; an answer clears the suspicion. Only timeouts count:
    a refused or reset connection fails fast by itself.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self._lock = threading.Lock()
        self.suspect = False
        self._retry_at = 0.0  # monotonic time from which a probe may try the node again
        self._failures = 0
        self._probing = False
        self.reason = ""
        self._conns: weakref.WeakSet[Abortable] = weakref.WeakSet()

    def admit(self, *, probe: bool) -> str | None:
        """None if a call may go to the node now; otherwise why not."""
        if not self.suspect:  # the common case, without the lock
            return None
        with self._lock:
            if not self.suspect:
                return None
            if probe and not self._probing and time.monotonic() >= self._retry_at:
                self._probing = True
                return None
            return self.reason

    def probe_due(self) -> bool:
        """Suspect, and a probe may try the node now (none running, the backoff over)."""
        return self.suspect and not self._probing and time.monotonic() >= self._retry_at

    def timed_out(self, reason: str) -> None:
        with self._lock:
            self._failures += 1
            self.suspect = True
            self._probing = False
            self.reason = reason
            self._retry_at = time.monotonic() + min(5.0, 0.5 * 2 ** min(self._failures - 1, 4))

    def answered(self) -> None:
        if self.suspect or self._probing:
            with self._lock:
                self.suspect = self._probing = False
                self._failures = 0

    def track(self, conn: Abortable) -> None:
        self._conns.add(conn)

    def abort_stuck(self, older_than: float) -> int:
        """Cut connections whose call has run for ``older_than`` seconds; how many were cut.

        A call blocked on a hung node cannot be interrupted otherwise; shutting its socket down
        wakes it with an error at once.
        """
        return sum(conn.abort_if_busy(older_than) for conn in list(self._conns))


_SHARED: weakref.WeakValueDictionary[str, NodeHealth] = weakref.WeakValueDictionary()


def shared_health(address: str) -> NodeHealth:
    """This process's :class:`NodeHealth` of ``address``: the producers and consumers of one
    process (the sidecar's) learn from each other's timeouts that a node hangs."""
    health = _SHARED.get(address)
    if health is None:
        health = _SHARED[address] = NodeHealth(address)
    return health


class NodeConnection:
    """One connection to one node, using and watching ``tube``."""

    def __init__(
        self,
        address: str,
        tube: str,
        *,
        connect_timeout: float,
        io_timeout: float,
        health: NodeHealth | None = None,
    ) -> None:
        self.settings = settings = NodeSettings.of(
            address, tube, connect_timeout=connect_timeout, io_timeout=io_timeout
        )
        self.address = address
        self.tube = tube
        self._client: greenstalk.Client[bytes] | None = None
        self._sock: socket.socket | None = None
        self._sock_timeout = settings.io_timeout
        self._lock = threading.Lock()
        self._busy_since = 0.0  # monotonic start of the call in progress; 0 when idle
        self._server_id: str | None = None  # the node process's `stats` id, once asked
        self.last_error: str | None = None
        self.down_until = 0.0  # monotonic time before which callers may prefer other nodes
        self._failures = 0
        self.health = health
        if health is not None:
            health.track(self)

    def call(
        self,
        op: Callable[[greenstalk.Client[bytes]], T],
        *,
        probe: bool = False,
        timeout: float | None = None,
    ) -> T:
        """Run ``op`` on the (re)connected client; raise :class:`NodeDown` on connection trouble.

        A kept connection that the node closed since its last use (the node restarted, as in
        every step of a rolling restart) fails at once with EOF or a reset: ``op`` is then tried
        once more on a new connection, so that the first call after a restart does not fail.
        Timeouts are not retried (a hung node would cost twice). ``timeout`` replaces the
        connection's I/O timeout for this call; ``probe`` lets the call try a suspect node.
        """
        self._admit(probe)  # before waiting for the lock: a hung call may hold it
        with self._lock:
            self._admit(probe)
            self._busy_since = time.monotonic()
            try:
                reused = self._client is not None
                try:
                    return self._attempt(op, timeout)
                except NodeDown as exc:
                    if not reused or isinstance(exc.__cause__, TimeoutError | socket.timeout):
                        raise
                return self._attempt(op, timeout)
            finally:
                self._busy_since = 0.0

    def _admit(self, probe: bool) -> None:
        if self.health is not None:
            refused = self.health.admit(probe=probe)
            if refused is not None:
                raise NodeDown(self.address, f"not answering, skipped for now (last: {refused})")

    def _attempt(self, op: Callable[[greenstalk.Client[bytes]], T], timeout: float | None) -> T:
        try:
            client = self._connect()
            wanted = self.settings.io_timeout if timeout is None else timeout
            if wanted != self._sock_timeout and self._sock is not None:
                self._sock.settimeout(wanted)
                self._sock_timeout = wanted
            result = op(client)
        except greenstalk.BeanstalkdError:
            raise  # an answer from the server: the connection is still in step
        except (OSError, greenstalk.Error, AssertionError, ValueError) as exc:
            self._drop()
            self._note_failure(exc)
            raise NodeDown(self.address, _describe(exc)) from exc
        if self._failures:
            self._failures = 0
            self.last_error = None
            self.down_until = 0.0
        if self.health is not None:
            self.health.answered()
        return result

    def _connect(self) -> greenstalk.Client[bytes]:
        if self._client is None:
            target = self.settings
            sock = socket.create_connection((target.host, target.port), timeout=target.connect_timeout)
            try:
                sock.settimeout(self.settings.io_timeout)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                self._client = greenstalk.Client(sock, encoding=None, use=self.tube, watch=self.tube)
            except BaseException:
                sock.close()
                raise
            self._sock = sock
            self._sock_timeout = self.settings.io_timeout
        return self._client

    def server_id(self, client: greenstalk.Client[bytes]) -> str:
        """Inside a call: the node process's id (``stats``), new each time beanstalkd starts."""
        if self._server_id is None:
            self._server_id = str(client.stats().get("id", ""))
        return self._server_id

    def abort_if_busy(self, older_than: float) -> bool:
        """Shut the socket of a call running for ``older_than`` seconds (no lock: it is held)."""
        since, sock = self._busy_since, self._sock
        if since and sock is not None and time.monotonic() - since >= older_than:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            return True
        return False

    def _note_failure(self, exc: BaseException) -> None:
        self._failures += 1
        self.last_error = _describe(exc)
        self.down_until = time.monotonic() + min(5.0, 0.1 * 2 ** min(self._failures, 6))
        if self.health is not None:
            if isinstance(exc, TimeoutError | socket.timeout):
                self.health.timed_out(self.last_error)
            else:
                self.health.answered()  # refused or reset: fails fast by itself, no need to skip

    def _drop(self) -> None:
        if self._client is not None:
            with contextlib.suppress(OSError):
                self._client.close()
            self._client = None
        self._sock = None
        self._server_id = None

    def close(self) -> None:
        # A call stuck on a hung node holds the lock: cut its socket rather than wait for it.
        if not self._lock.acquire(timeout=0.5):
            self.abort_if_busy(0.0)
            self._lock.acquire()
        try:
            self._drop()
        finally:
            self._lock.release()

    @property
    def backing_off(self) -> bool:
        return time.monotonic() < self.down_until


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"timed out ({text})"
    return text


class NodePool:
    """A few connections per node so that concurrent publishers do not queue behind one socket."""

    def __init__(
        self, address: str, tube: str, *, size: int, connect_timeout: float, io_timeout: float
    ) -> None:
        self.address = address
        self._conns = [
            NodeConnection(address, tube, connect_timeout=connect_timeout, io_timeout=io_timeout)
            for _ in range(max(1, size))
        ]
        self._next = 0

    def pick(self) -> NodeConnection:
        self._next = (self._next + 1) % len(self._conns)
        return self._conns[self._next]

    @property
    def backing_off(self) -> bool:
        return any(conn.backing_off for conn in self._conns)

    @property
    def last_error(self) -> str | None:
        return next((conn.last_error for conn in self._conns if conn.last_error), None)

    def close(self) -> None:
        for conn in self._conns:
            conn.close()


def copy_deleter(
    conn: NodeConnection, jid: int, server: str, job_id: str
) -> Callable[[greenstalk.Client[bytes]], bool]:
    """An op deleting the recorded copy ``jid`` of dq job ``job_id``, only if it still is that.

    A node restarted without its binlog numbers jobs from 1 again, and beanstalkd deletes by id
    across tubes: an old id may now be someone else's job. Where the node process is the one
    that took the copy (its ``stats`` id, ``server``), the id is ours; otherwise (a restart, or
    a record without it) the job is peeked first and deleted only if it carries ``job_id``.
    """

    def delete(client: greenstalk.Client[bytes]) -> bool:
        if not server or conn.server_id(client) != server:
            try:
                envelope = Envelope.decode(client.peek(jid).body)
            except greenstalk.NotFoundError:
                return False
            if envelope is None or envelope.job_id != job_id:
                return False
        try:
            client.delete(jid)
        except greenstalk.NotFoundError:
            return False
        return True

    return delete


def deleter(jid: int) -> Callable[[greenstalk.Client[bytes]], bool]:
    """An op deleting job ``jid``; False when it is gone or reserved by another connection."""

    def delete(client: greenstalk.Client[bytes]) -> bool:
        try:
            client.delete(jid)
        except greenstalk.NotFoundError:
            return False
        return True

    return delete
