"""A small HTTP/1.1 server on asyncio protocols and httptools (llhttp), for the publish routes.

aiohttp's server spent most of the publish API's CPU per request (its request and response
objects, router, middleware chain and stream reader; see docs/publish.md). The publish routes
need little of that: a whole small body, a few headers, a short JSON answer. This server parses
with httptools (already the sidecar's client parser) and hands a :class:`Request` with the whole
body to one handler, which answers a :class:`Response`.

What it keeps of HTTP/1.1: keep-alive (HTTP/1.0 only with ``Connection: keep-alive``),
pipelined requests answered in order, ``Content-Length`` and chunked bodies, ``Expect:
100-continue``, ``HEAD``, a body limit (413 once the whole body was read, so the client sees
the answer rather than a reset), 400 on a request it cannot parse, idle connections closed
after ``keepalive_timeout``. The handler's own errors are the handler's to answer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import cast
from urllib.parse import parse_qsl, unquote

import httptools

log = logging.getLogger(__name__)

# Requests parsed but not yet answered on one connection before it stops reading (pipelining).
MAX_QUEUED = 32
IDLE_SWEEP_S = 5.0
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE = b"Connection: close\r\n"
_KEEP_ALIVE = b"Connection: keep-alive\r\n"


def _connection_header(parser: httptools.HttpRequestParser) -> bytes | None:
    """What the answer says of the connection: close, keep-alive (HTTP/1.0 asked for it), or
    nothing (HTTP/1.1 keeps it by default)."""
    if not parser.should_keep_alive():
        return _CLOSE
    return _KEEP_ALIVE if parser.get_http_version() == "1.0" else None


class Request:
    """One parsed request with its whole body. ``headers`` keeps every header as sent (name case
    too); :meth:`header` looks one up case-insensitively (the first of repeated ones)."""

    __slots__ = ("_by_name", "_query", "body", "headers", "method", "query_text", "raw_path")

    def __init__(self, method: str, raw_path: str, query_text: str, headers: list[tuple[str, str]]) -> None:
        self.method = method
        self.raw_path = raw_path
        self.query_text = query_text
        self.headers = headers
        self.body = b""
        self._by_name: dict[str, str] | None = None
        self._query: dict[str, str] | None = None

    @property
    def path(self) -> str:
        return unquote(self.raw_path)

    def header(self, name: str) -> str | None:
        """``name`` in lower case."""
        by_name = self._by_name
        if by_name is None:
            by_name = self._by_name = {}
            for key, value in self.headers:
                by_name.setdefault(key.lower(), value)
        return by_name.get(name)

    @property
    def query(self) -> dict[str, str]:
        """Query parameters decoded as a form (``+`` is a space); the first of repeated ones."""
        query = self._query
        if query is None:
            query = self._query = {}
            if self.query_text:
                for name, value in parse_qsl(self.query_text, keep_blank_values=True):
                    query.setdefault(name, value)
        return query


class Response:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str | None = "application/json",
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type if body or status != 204 else None
        self.headers = headers if headers is not None else []


Handler = Callable[[Request], Awaitable[Response]]
ErrorResponse = Callable[[int, str], Response]


class _HttpDate:
    """The Date header, formatted once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._header = b""

    def header(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._header = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._header


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order, one handler task per busy spell."""

    def __init__(self, server: LeanHttpServer) -> None:
        self._server = server
        self._loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        # Parsed requests (and the server's own ready answers), in order, with the
        # Connection header their answer needs (None: HTTP/1.1's default, keep-alive).
        self._queued: collections.deque[tuple[Request | Response, bytes | None]] = collections.deque()
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        self._paused_writing = False
        self._paused_reading = False
        self.idle_since = self._loop.time()
        # the request being parsed
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._too_large = False

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # small answers go out at once, not after the client's delayed ACK
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._queued.clear()  # a handler still running finishes (a publish is not cut short)
        self._server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported by the publish API")
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed HTTP request: {exc}")

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        if not self._busy:
            self._next()

    # ------------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._size = 0
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        if self._busy or self._queued:
            return  # a 100 now would come before earlier answers; the client sends on anyway
        for name, value in self._headers:
            if len(name) == 6 and name.lower() == "expect" and value.lower() == "100-continue":
                if self._transport is not None:
                    self._transport.write(_CONTINUE)
                break

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._server.max_body:
            self._too_large = True
            self._body = []  # read on and drop the rest: the client then reads the 413
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        connection = _connection_header(parser)
        if self._too_large:
            limit = self._server.max_body
            message = f"the request body is over the publish API's limit of {limit} bytes"
            self._queue(self._server.error(413, message), connection)
            return
        url = self._url
        if url[:1] != b"/":  # absolute form: http://host/path?query
            parsed = httptools.parse_url(url)
            path, query = parsed.path or b"/", parsed.query or b""
        else:
            path, _, query = url.partition(b"?")
            query = query.partition(b"#")[0]
        request = Request(
            parser.get_method().decode("ascii", "replace"),
            path.decode("utf-8", "surrogateescape"),
            query.decode("utf-8", "surrogateescape"),
            self._headers,
        )
        body = self._body
        request.body = body[0] if len(body) == 1 else b"".join(body)
        self._queue(request, connection)

    # ------------------------------------------------------------------ answering in order

    def _queue(self, item: Request | Response, connection: bytes | None) -> None:
        self._queued.append((item, connection))
        if len(self._queued) > MAX_QUEUED and self._transport is not None and not self._paused_reading:
            self._paused_reading = True
            self._transport.pause_reading()
        if not self._busy:
            self._next()

    def _next(self) -> None:
        """Answer what is queued: ready answers at once, a request in a task of its own."""
        while self._queued and not self._paused_writing and self._transport is not None:
            item, connection = self._queued.popleft()
            if isinstance(item, Response):
                self._write(item, connection, head=False)
                continue
            self._busy = True
            self._task = self._loop.create_task(self._answer(item, connection))
            return
        if self._paused_reading and self._transport is not None and len(self._queued) <= MAX_QUEUED // 2:
            self._paused_reading = False
            self._transport.resume_reading()

    async def _answer(self, request: Request, connection: bytes | None) -> None:
        try:
            response = await self._server.handle(request)
        except Exception:  # the handler answers its own errors; this is a bug in it
            log.exception("publish %s %s failed", request.method, request.raw_path)
            response = self._server.error(500, "internal error; see the sidecar's log")
        self._busy = False
        if self._transport is None:
            return
        self._write(response, connection, head=request.method == "HEAD")
        self._next()

    def _write(self, response: Response, connection: bytes | None, *, head: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        body = response.body
        parts = [
            b"HTTP/1.1 %d %s\r\n" % (response.status, _REASONS.get(response.status, b"Unknown")),
            self._server.date.header(),
        ]
        if response.content_type is not None:
            parts.append(b"Content-Type: " + response.content_type.encode() + b"\r\n")
        parts.append(b"Content-Length: %d\r\n" % len(body))
        for name, value in response.headers:
            parts.append(f"{name}: {value}\r\n".encode())
        if connection is not None:
            parts.append(connection)
        parts.append(b"\r\n")
        if not head:
            parts.append(body)
        transport.write(b"".join(parts))
        self.idle_since = self._loop.time()
        if connection is _CLOSE:
            self._queued.clear()
            transport.close()

    def _reject(self, status: int, message: str) -> None:
        """Unparseable input: answer (after whatever is in progress) and close."""
        self._queue(self._server.error(status, message), _CLOSE)
        if self._transport is not None and not self._paused_reading:
            self._paused_reading = True
            self._transport.pause_reading()  # nothing after a broken request can be parsed

    def close_if_idle(self, before: float) -> None:
        if not self._busy and not self._queued and self.idle_since < before and self._transport is not None:
            self._transport.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The task answering this connection's requests, if any."""
        return self._task


class LeanHttpServer:
    """Serve ``handle`` on ``host:port``; ``error(status, message)`` makes the server's own
    answers (400 for a malformed request, 413 over ``max_body``, 500 if ``handle`` raised)."""

    def __init__(
        self,
        handle: Handler,
        error: ErrorResponse,
        *,
        max_body: int,
        keepalive_timeout: float = 75.0,
    ) -> None:
        self.handle = handle
        self.error = error
        self.max_body = max_body
        self.keepalive_timeout = keepalive_timeout
        self.connections: set[_Connection] = set()
        self.date = _HttpDate()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()

    async def start(self, host: str, port: int) -> None:
        self._server = await self.loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True
        )
        self._sweeper = self.loop.call_later(IDLE_SWEEP_S, self._sweep)

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def _sweep(self) -> None:
        before = self.loop.time() - self.keepalive_timeout
        for connection in list(self.connections):
            connection.close_if_idle(before)
        self._sweeper = self.loop.call_later(IDLE_SWEEP_S, self._sweep)

    async def close(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - a grace period, not a deadline
        """Stop listening, let requests in progress answer (up to ``timeout``), close the rest."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        answering = [c.task for c in self.connections if c.task is not None and not c.task.done()]
        if answering:
            await asyncio.wait(answering, timeout=timeout)
        for connection in list(self.connections):
            connection.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
