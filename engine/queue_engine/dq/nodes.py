"""Blocking connections to beanstalkd nodes, safe to share between threads.

greenstalk is synchronous, so the engine calls these from worker threads. Every call holds
the connection's lock (one request/response at a time on the socket), and any socket-level
failure drops the connection so that the next call reconnects instead of reading a stream
that is out of step.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import greenstalk

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


class NodeConnection:
    """One connection to one node, using and watching ``tube``."""

    def __init__(self, address: str, tube: str, *, connect_timeout: float, io_timeout: float) -> None:
        self.address = address
        self.tube = tube
        self._target = parse_address(address)
        self._connect_timeout = connect_timeout
        self._io_timeout = io_timeout
        self._client: greenstalk.Client[bytes] | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.down_until = 0.0  # monotonic time before which callers may prefer other nodes
        self._failures = 0

    def call(self, op: Callable[[greenstalk.Client[bytes]], T]) -> T:
        """Run ``op`` on the (re)connected client; raise :class:`NodeDown` on connection trouble.

        A kept connection that the node closed since its last use (the node restarted, as in
        every step of a rolling restart) fails at once with EOF or a reset: ``op`` is then tried
        once more on a new connection, so that the first call after a restart does not fail.
        Timeouts are not retried (a hung node would cost twice).
        """
        with self._lock:
            reused = self._client is not None
            try:
                return self._attempt(op)
            except NodeDown as exc:
                if not reused or isinstance(exc.__cause__, TimeoutError | socket.timeout):
                    raise
            return self._attempt(op)

    def _attempt(self, op: Callable[[greenstalk.Client[bytes]], T]) -> T:
        try:
            client = self._connect()
            result = op(client)
        except greenstalk.BeanstalkdError:
            raise  # an answer from the server: the connection is still in step
        except (OSError, greenstalk.Error, AssertionError, ValueError) as exc:
            self._drop()
            self._note_failure(exc)
            raise NodeDown(self.address, _describe(exc)) from exc
        self._failures = 0
        self.last_error = None
        self.down_until = 0.0
        return result

    def _connect(self) -> greenstalk.Client[bytes]:
        if self._client is None:
            sock = socket.create_connection(self._target, timeout=self._connect_timeout)
            try:
                sock.settimeout(self._io_timeout)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                self._client = greenstalk.Client(sock, encoding=None, use=self.tube, watch=self.tube)
            except BaseException:
                sock.close()
                raise
        return self._client

    def _note_failure(self, exc: BaseException) -> None:
        self._failures += 1
        self.last_error = _describe(exc)
        self.down_until = time.monotonic() + min(5.0, 0.1 * 2 ** min(self._failures, 6))

    def _drop(self) -> None:
        if self._client is not None:
            with contextlib.suppress(OSError):
                self._client.close()
            self._client = None

    def close(self) -> None:
        with self._lock:
            self._drop()

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


def deleter(jid: int) -> Callable[[greenstalk.Client[bytes]], bool]:
    """An op deleting job ``jid``; False when it is gone or reserved by another connection."""

    def delete(client: greenstalk.Client[bytes]) -> bool:
        try:
            client.delete(jid)
        except greenstalk.NotFoundError:
            return False
        return True

    return delete
