"""A small asyncio beanstalkd client with pipelining (beanstalkd's doc/protocol.md).

Guarantees: replies are matched to requests in order (the server answers each connection's
commands serially, in the order received), so any number of requests may be in flight on one
connection without a thread or a lock per request. A reply the caller stopped waiting for
(cancelled) is still read and thrown away, so the stream never gets out of step; a connection
that is closed or lost fails every request still waiting with :class:`ConnectionError`.

Only what the dq engine uses is here: put, reserve (with a timeout; several non-blocking ones
in one write), reserve-job, delete (several in one write),
release, bury, touch, peek, stats. A server error answer (``NOT_FOUND``, ``JOB_TOO_BIG``, ...)
raises :class:`BeanstalkError` and leaves the connection usable. Blocking tools (queuectl,
admin, drain) keep using greenstalk in threads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from typing import NamedTuple, cast

# Replies followed by a body of <bytes> bytes and CRLF; the byte count is the last field.
_WITH_BODY = frozenset({b"RESERVED", b"FOUND", b"OK"})
_MAX_LINE = 1024  # a reply line longer than this means the stream is not beanstalkd's


class Job(NamedTuple):
    id: int
    body: bytes


class BeanstalkError(Exception):
    """The server answered with an error or an unexpected status; the connection is fine."""

    def __init__(self, status: str, command: str) -> None:
        super().__init__(f"{command}: {status}")
        self.status = status


class NotFound(BeanstalkError):
    pass


class JobTooBig(BeanstalkError):
    pass


class TimedOut(BeanstalkError):
    """``reserve-with-timeout`` found nothing (``TIMED_OUT``) or ``DEADLINE_SOON``."""


class Closed(ConnectionError):
    """This side closed the connection (a timeout, a stop): says nothing about the server."""


class Expired(TimeoutError):
    """No answer in time: the caller's watchdog gave up on the connection (see :meth:`Connection.expire`)."""


class _Reply(NamedTuple):
    status: bytes
    args: list[bytes]
    body: bytes | None


def _error(status: bytes, command: bytes) -> BeanstalkError:
    name, cmd = status.decode("ascii", "replace"), command.split(b" ", 1)[0].decode("ascii", "replace")
    if status == b"NOT_FOUND":
        return NotFound(name, cmd)
    if status == b"JOB_TOO_BIG":
        return JobTooBig(name, cmd)
    if status in (b"TIMED_OUT", b"DEADLINE_SOON"):
        return TimedOut(name, cmd)
    return BeanstalkError(name, cmd)


class Connection(asyncio.Protocol):
    """One connection; every method may be awaited concurrently with the others (pipelined).

    Do not pipeline anything behind a ``reserve`` that may block: the server answers it, and
    everything sent after it, only once a job is ready or its timeout ran out.
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiting: collections.deque[tuple[asyncio.Future[_Reply], bytes]] = collections.deque()
        self._lost: BaseException | None = None
        self._closed_here = False
        self._out: list[bytes] = []  # requests of this loop iteration, sent in one write

    @classmethod
    async def open(cls, host: str, port: int, tube: str) -> Connection:
        """Connect and ``use`` and ``watch`` ``tube`` only (``default`` is ignored)."""
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(cls, host, port)
        try:
            use, watch, *_ = await asyncio.gather(
                conn._request(b"use " + tube.encode("ascii")),
                conn._request(b"watch " + tube.encode("ascii")),
                *([] if tube == "default" else [conn._request(b"ignore default")]),
            )
            if use.status != b"USING" or watch.status != b"WATCHING":
                raise ConnectionError(f"unexpected answer to use/watch: {use.status!r} {watch.status!r}")
        except BaseException:
            conn.close()
            raise
        return conn

    # -- commands --------------------------------------------------------------------------

    async def put(self, body: bytes, *, priority: int, delay: int, ttr: int) -> int:
        line = b"put %d %d %d %d" % (priority, delay, ttr, len(body))
        reply = await self._request(line, body)
        if reply.status == b"INSERTED":
            return int(reply.args[0])
        raise _error(reply.status, line)  # BURIED <id> (out of memory) is a failure too

    async def reserve(self, seconds: int) -> Job:
        """The next ready job, reserved on this connection; :class:`TimedOut` if none came."""
        reply = await self._request(b"reserve-with-timeout %d" % seconds)
        if reply.status == b"RESERVED" and reply.body is not None:
            return Job(int(reply.args[0]), reply.body)
        raise _error(reply.status, b"reserve-with-timeout")

    async def reserve_ready(self, count: int) -> list[Job]:
        """Up to ``count`` jobs ready now, reserved on this connection; never blocks.

        ``count`` requests of ``reserve-with-timeout 0`` leave in one write; every reply is
        read, so a job that became ready between two of them is taken, not left reserved here
        unseen. Error answers other than ``TIMED_OUT`` are skipped (the jobs are what matter).
        """
        futures = [self._request(b"reserve-with-timeout 0") for _ in range(count)]
        jobs = []
        for future in futures:
            reply = await future
            if reply.status == b"RESERVED" and reply.body is not None:
                jobs.append(Job(int(reply.args[0]), reply.body))
        return jobs

    async def delete_many(self, jids: list[int]) -> list[bool]:
        """Delete each of ``jids`` (one write); False for those not found. Any other error
        answer is raised once every reply has been read."""
        futures = [self._request(b"delete %d" % jid) for jid in jids]
        results = []
        error: BeanstalkError | None = None
        for future in futures:
            status = (await future).status
            results.append(status == b"DELETED")
            if status not in (b"DELETED", b"NOT_FOUND") and error is None:
                error = _error(status, b"delete")
        if error is not None:
            raise error
        return results

    async def reserve_job(self, jid: int) -> Job:
        reply = await self._request(b"reserve-job %d" % jid)
        if reply.status == b"RESERVED" and reply.body is not None:
            return Job(int(reply.args[0]), reply.body)
        raise _error(reply.status, b"reserve-job")

    async def delete(self, jid: int) -> None:
        await self._expect(b"delete %d" % jid, b"DELETED")

    async def release(self, jid: int, *, priority: int, delay: int) -> None:
        await self._expect(b"release %d %d %d" % (jid, priority, delay), b"RELEASED")

    async def bury(self, jid: int, *, priority: int) -> None:
        await self._expect(b"bury %d %d" % (jid, priority), b"BURIED")

    async def touch(self, jid: int) -> None:
        await self._expect(b"touch %d" % jid, b"TOUCHED")

    async def peek(self, jid: int) -> Job:
        reply = await self._request(b"peek %d" % jid)
        if reply.status == b"FOUND" and reply.body is not None:
            return Job(int(reply.args[0]), reply.body)
        raise _error(reply.status, b"peek")

    async def stats(self) -> dict[str, str]:
        """The server's ``stats`` (a flat YAML mapping), values as text."""
        reply = await self._request(b"stats")
        if reply.status != b"OK" or reply.body is None:
            raise _error(reply.status, b"stats")
        result = {}
        for raw in reply.body.decode("utf-8", "replace").splitlines():
            key, sep, value = raw.partition(":")
            if sep and not raw.startswith("---"):
                result[key.strip()] = value.strip()
        return result

    def close(self) -> None:
        self._closed_here = self._closed_here or self._lost is None
        if self._transport is not None:
            self._transport.abort()  # at once: a hung peer must not hold anything up
        self._fail(ConnectionError("connection closed"))

    def expire(self, why: str) -> None:
        """Give up on a connection that does not answer: every request still waiting fails with
        :class:`Expired` (a :class:`TimeoutError`), and the socket is cut."""
        if self._lost is None:
            self._lost = Expired(why)
            while self._waiting:
                fut, _ = self._waiting.popleft()
                _fail_quietly(fut, Expired(why))
        if self._transport is not None:
            self._transport.abort()

    @property
    def closed(self) -> bool:
        return self._lost is not None

    @property
    def pending(self) -> int:
        return len(self._waiting)

    # -- the protocol ------------------------------------------------------------------------

    async def _expect(self, line: bytes, status: bytes) -> None:
        reply = await self._request(line)
        if reply.status != status:
            raise _error(reply.status, line)

    def _request(self, line: bytes, data: bytes | None = None) -> asyncio.Future[_Reply]:
        fut: asyncio.Future[_Reply] = asyncio.get_running_loop().create_future()
        if self._lost is not None or self._transport is None:
            kind = Closed if self._closed_here else ConnectionError
            fut.set_exception(kind(f"connection lost: {self._lost}"))
            return fut
        self._waiting.append((fut, line))
        if not self._out:
            # Requests made by other tasks in the same loop iteration go out with this one:
            # one system call for many (a burst of deletes, 64 concurrent puts).
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(line + b"\r\n" if data is None else b"".join((line, b"\r\n", data, b"\r\n")))
        return fut

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._transport is not None and self._lost is None and out:
            self._transport.write(b"".join(out))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        # Notice a peer that vanished while the connection sat idle (uvloop's socket stand-in
        # may refuse options: keepalive is a nicety, not a guarantee).
        with contextlib.suppress(OSError, AttributeError, TypeError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        buf = self._buffer
        start = 0
        while True:
            end = buf.find(b"\r\n", start)
            if end < 0:
                if len(buf) - start > _MAX_LINE:
                    return self._out_of_step(b"reply line too long")
                break
            status, *args = bytes(buf[start:end]).split(b" ")
            body = None
            if status in _WITH_BODY and args:
                size = int(args[-1])
                if len(buf) < end + 2 + size + 2:
                    break  # the rest of the body is still on its way
                body = bytes(buf[end + 2 : end + 2 + size])
                end += size + 2
            start = end + 2
            if not self._waiting:
                return self._out_of_step(b"reply without a request: " + status)
            fut, _ = self._waiting.popleft()
            if not fut.done():  # a caller that gave up: the reply is read and dropped
                fut.set_result(_Reply(status, args, body))
        del buf[:start]

    def _out_of_step(self, why: bytes) -> None:
        self._fail(ConnectionError(why.decode("ascii", "replace")))
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("connection closed by the server"))

    def _fail(self, exc: BaseException) -> None:
        if self._lost is None:
            self._lost = exc
        kind = Closed if self._closed_here else ConnectionError
        while self._waiting:
            fut, _ = self._waiting.popleft()
            _fail_quietly(fut, kind(str(exc) or type(exc).__name__))


def _fail_quietly(fut: asyncio.Future[_Reply], exc: BaseException) -> None:
    """Fail a waiting request. A batch (deletes, reserves) awaits its replies in order and stops
    at the first failure, so nobody reads the others': marked as read, asyncio logs no
    "exception was never retrieved" for each (the caller still gets it when it awaits)."""
    if not fut.done():
        fut.set_exception(exc)
        fut.exception()
