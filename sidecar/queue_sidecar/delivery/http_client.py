"""A small HTTP/1.1 keep-alive client for the one thing the sidecar does over HTTP: POST to the app.

Why not aiohttp's client: a profile of the sidecar delivering one message per call showed
aiohttp's request machinery (request and response objects, header multidicts, cookie handling,
payload wrappers, tracing hooks, timeout contexts) costing about as much CPU as everything else
together, around 0.13 CPU s per 1,000 calls against a trivial app. Delivery needs far less: one
fixed URL on loopback, a request that is a pre-built header block plus the body, and from the
answer only the status, ``Retry-After`` and the body. Here a request is one ``transport.write``
on a kept-alive connection and the answer is parsed by ``httptools`` (llhttp, the parser
uvicorn uses): no per-request objects beyond a future and a timer.

Connections: one per request in flight, reused while the server keeps them alive; the caller
bounds concurrency (``app.maxConcurrency``), so the pool never outgrows it. A connection that
timed out, failed or was told ``Connection: close`` is dropped, never reused.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import cast

import httptools


class AppUnreachable(Exception):
    """No connection could be made (nothing listening): the app never saw the request."""


class ExchangeFailed(Exception):
    """The connection broke or the answer was not HTTP after the request went out."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    retry_after: str | None
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport: asyncio.Transport | None = None
        self.reusable = False
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._body: list[bytes] = []
        self._retry_after: str | None = None
        self._headers_done = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        self.reusable = True

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ExchangeFailed(f"the app's answer is not HTTP/1.1: {exc}"))

    def eof_received(self) -> bool | None:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and exc is None:
            # An answer without a length ends when the connection does.
            self._finish(self._parser.get_status_code())
            return
        reason = f": {exc}" if exc is not None else ""
        waiter.set_exception(ExchangeFailed(f"the app closed the connection before answering{reason}"))
        self._waiter = None

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 11 and name.lower() == b"retry-after":
            self._retry_after = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._parser.should_keep_alive():
            self.reusable = False
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (we never ask for one): the real one follows
            waiter = self._waiter
            self._reset()
            self._waiter = waiter
            return
        self._finish(status)
        if not self.reusable and self.transport is not None:
            self.transport.close()

    # requests
    def request(self, data: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self._waiter = waiter = self._loop.create_future()
        self.transport.write(data)
        return waiter

    def abandon(self) -> None:
        """Timed out or cancelled: the answer may still come, so the connection cannot be reused."""
        self.reusable = False
        self._waiter = None
        if self.transport is not None:
            self.transport.close()

    def _finish(self, status: int) -> None:
        waiter = self._waiter
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        answer = Answer(status, self._retry_after, body)
        self._reset()
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    def _reset(self) -> None:
        self._waiter = None
        self._body = []
        self._retry_after = None
        self._headers_done = False

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        waiter = self._waiter
        self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


class KeepAliveClient:
    """POSTs to one ``host:port`` over pooled keep-alive connections."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._idle: deque[_Connection] = deque()
        self._closed = False
        # Bound at the first request: on Python 3.11 every asyncio.get_running_loop() makes a
        # getpid() system call (a fork check), and the request path called it twice.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def post(self, data: bytes, seconds: float) -> Answer:
        """Send ``data`` (a whole request: head and body) and wait for the answer.

        Raises :class:`AppUnreachable` when no connection can be made, :class:`TimeoutError`
        past ``seconds``, :class:`ExchangeFailed` when the exchange breaks.
        """
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        connection = self._idle_connection()  # the usual case, without a coroutine of its own
        if connection is None:
            connection = await self._connect(loop, seconds)
        waiter = connection.request(data)
        timer = loop.call_later(seconds, _expire, waiter)
        try:
            answer = await waiter
        except BaseException:
            connection.abandon()
            raise
        finally:
            timer.cancel()
        if connection.reusable and not self._closed:
            self._idle.append(connection)
        return answer

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the least likely to be timed out
            if connection.reusable:
                return connection
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop, seconds: float) -> _Connection:
        try:
            async with asyncio.timeout(seconds):
                _, connection = await loop.create_connection(lambda: _Connection(loop), self.host, self.port)
        except TimeoutError:
            raise
        except OSError as exc:  # refused, reset, no route: nothing took the request
            raise AppUnreachable(str(exc)) from exc
        return connection

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            connection = self._idle.pop()
            if connection.transport is not None:
                connection.transport.close()


def _expire(waiter: asyncio.Future[Answer]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
