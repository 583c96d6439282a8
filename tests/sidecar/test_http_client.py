"""The sidecar's HTTP/1.1 client to the app, against real servers that answer in each legal way.

aiohttp's server (chunked answers, keep-alive), and a raw socket server for what aiohttp never
sends: a body that ends when the connection closes, ``Connection: close``, an idle connection
the server closes, an interim ``100 Continue``, and garbage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest
from aiohttp import web

from harness.servers import free_port
from queue_engine.policy import Outcome, Verdict
from queue_sidecar.delivery.envelope import Envelope
from queue_sidecar.delivery.http import HttpTransport, headers_for

from .in_process import Servers, envelope

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request off the wire: (head, body), by its Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


@pytest.fixture
def raw_server(servers: Servers) -> Callable[[Reply], Awaitable[tuple[int, list[bytes]]]]:
    async def start(reply: Reply) -> tuple[int, list[bytes]]:
        connections: list[bytes] = []

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(b"")
            try:
                await reply(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        return await servers.tcp(on_connect), connections

    return start


async def test_keep_alive_chunked_answers_and_headers_against_aiohttp() -> None:
    seen: list[dict[str, str]] = []
    peers: set[object] = set()

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append({**request.headers, "body": (await request.read()).decode()})
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        body = request.headers["X-Message-Id"]
        if body.endswith("/chunked"):
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(b'{"status": ')
            await response.write(b'"DROP", "error": "split"}')
            await response.write_eof()
            return response
        if body.endswith("/busy"):
            return web.Response(status=503, text="busy", headers={"Retry-After": "7"})
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/messages", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    transport = HttpTransport("127.0.0.1", port, "/messages", 4)
    try:
        for i in range(20):
            assert (
                await transport.send(envelope(f"m{i}".encode(), f"o/0/{i}"), 5)
            ).verdict is Verdict.SUCCESS
        assert len(peers) == 1, "one kept-alive connection for calls one after another"
        drop = await transport.send(envelope(message_id="o/0/chunked"), 5)
        assert (drop.verdict, drop.error) == (Verdict.DROP, "split")
        busy = await transport.send(envelope(message_id="o/0/busy"), 5)
        assert (busy.verdict, busy.retry_after, busy.error) == (Verdict.RETRY, 7.0, "HTTP 503: busy")
        # Concurrent calls each get their own connection, and each its own answer.
        outcomes = await asyncio.gather(
            *(transport.send(envelope(message_id=f"o/1/{i}"), 5) for i in range(4))
        )
        assert {o.verdict for o in outcomes} == {Verdict.SUCCESS}
    finally:
        await transport.close()
        await runner.cleanup()
    first = seen[0]
    assert first["body"] == "m0" and first["Content-Length"] == "2"
    assert first["X-Message-Id"] == "o/0/0" and first["X-Kafka-Offset"] == "1"
    assert first["User-Agent"] == "queue-sidecar" and first["Content-Type"] == "application/octet-stream"


def answer(raw: bytes) -> Reply:
    """A server that reads one request and writes ``raw``, then closes the connection."""

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()

    return reply


async def send_each(port: int, count: int, pause: float = 0.0) -> list[Outcome]:
    """``count`` messages one after another through one transport, ``pause`` seconds apart."""
    transport = HttpTransport("127.0.0.1", port, "/messages", 2)
    outcomes = []
    try:
        for _ in range(count):
            outcomes.append(await transport.send(envelope(), 5))
            await asyncio.sleep(pause)
    finally:
        await transport.close()
    return outcomes


async def test_a_body_that_ends_with_the_connection_and_connection_close(
    raw_server: Callable[[Reply], Awaitable[tuple[int, list[bytes]]]],
) -> None:
    # No length, no chunking: the body is whatever comes until the server closes.
    port, connections = await raw_server(
        answer(b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"status": "RETRY", "error": "eof"}')
    )
    outcomes = await send_each(port, 3)
    assert {(o.verdict, o.error) for o in outcomes} == {(Verdict.RETRY, "eof")}
    assert len(connections) == 3, "a connection the server closes is never reused"


async def test_an_idle_connection_the_server_closed_is_not_reused(
    raw_server: Callable[[Reply], Awaitable[tuple[int, list[bytes]]]],
) -> None:
    # Keep-alive answered (after an interim 100), then the server drops the idle connection
    # (its idle timeout); the pause lets the close reach the client.
    port, connections = await raw_server(
        answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    )
    outcomes = await send_each(port, 2, pause=0.2)
    assert {o.verdict for o in outcomes} == {Verdict.SUCCESS}
    assert len(connections) == 2


async def test_garbage_a_hang_and_a_refusal_are_retries_or_unavailable(
    raw_server: Callable[[Reply], Awaitable[tuple[int, list[bytes]]]],
) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # then closes without answering

    for reply, expected in (
        (garbage, "not HTTP/1.1"),
        (hang, "did not answer within 0.3s"),
        (hang_up, "closed"),
    ):
        port, _ = await raw_server(reply)
        transport = HttpTransport("127.0.0.1", port, "/messages", 2)
        try:
            outcome = await transport.send(envelope(), 0.3)
        finally:
            await transport.close()
        assert outcome.verdict is Verdict.RETRY and outcome.attempted, (reply, outcome)
        assert expected in outcome.error, outcome.error

    nobody = HttpTransport("127.0.0.1", free_port(), "/messages", 2)
    refused = await nobody.send(envelope(), 1)
    await nobody.close()
    assert not refused.attempted and "not reachable" in refused.error


async def test_a_line_break_in_a_message_id_cannot_inject_a_header(
    raw_server: Callable[[Reply], Awaitable[tuple[int, list[bytes]]]],
) -> None:
    heads: list[bytes] = []

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        heads.append(head)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    port, _ = await raw_server(reply)
    transport = HttpTransport("127.0.0.1", port, "/messages", 2)
    try:
        outcome = await transport.send(envelope(message_id="a/0/1\r\nX-Evil: 1"), 5)
    finally:
        await transport.close()
    assert outcome.verdict is Verdict.SUCCESS
    assert b"\r\nX-Evil" not in heads[0] and b"X-Message-Id: a/0/1  X-Evil: 1\r\n" in heads[0]


async def test_each_message_kind_goes_out_with_the_documented_headers_and_its_body(
    raw_server: Callable[[Reply], Awaitable[tuple[int, list[bytes]]]],
) -> None:
    """Single messages are written straight to bytes (no header dict): the same headers must
    arrive as ``headers_for`` lists, each once, in a request any HTTP/1.1 server reads."""
    received: list[tuple[bytes, bytes]] = []

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            received.append(await read_request(reader))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    due = datetime(2026, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)
    envelopes = [
        envelope(b"keyless"),
        Envelope(
            kind="kafka",
            queue="orders",
            id="orders/2/9",
            attempt=3,
            body=b"",
            key=b"\xff\x00k",
            partition=2,
            offset=9,
        ),
        Envelope(
            kind="kafka",
            queue="orders",
            id="orders/1/1",
            attempt=1,
            body=b"k",
            key=b"cust-7",
            partition=1,
            offset=1,
        ),
        Envelope(
            kind="kafka",
            queue="orders",
            id="orders/0/2",
            attempt=1,
            body=b"h",
            partition=0,
            offset=2,
            headers=(("trace-id", b"t1"), ("trace-id", b"t2")),
        ),
        Envelope(kind="delay", queue="mail", id="job-1", attempt=2, body=b"\x00due", due_at=due),
        Envelope(kind="delay", queue="mail", id="job-2", attempt=1, body=b"no due"),
    ]
    port, _ = await raw_server(reply)
    transport = HttpTransport("127.0.0.1", port, "/messages", 2)
    try:
        outcomes = [await transport.send(each, 5) for each in envelopes]
    finally:
        await transport.close()
    assert all(outcome.verdict is Verdict.SUCCESS for outcome in outcomes)
    assert len(received) == len(envelopes)
    for each, (head, body) in zip(envelopes, received, strict=True):
        request_line, *lines = head.decode("latin-1").removesuffix("\r\n\r\n").split("\r\n")
        assert request_line == "POST /messages HTTP/1.1"
        names = [line.split(": ", 1)[0] for line in lines]
        assert len(names) == len(set(names)), names  # no header twice
        sent = dict(line.split(": ", 1) for line in lines)
        expected = {**headers_for(each), "Content-Length": str(len(each.body))}
        assert {name: value for name, value in sent.items() if name not in ("Host", "User-Agent")} == expected
        assert body == each.body
    assert (
        dict(line.split(": ", 1) for line in received[4][0].decode().split("\r\n")[1:] if line)["X-Due-At"]
        == "2026-03-04T05:06:07.891Z"
    )
    assert (
        b"X-Kafka-Key: base64:/wBr\r\n" in received[1][0] and b"X-Header-trace-id: t2\r\n" in received[3][0]
    )
