"""HTTP/1.1 as clients speak it to the publish API, byte by byte over a real socket: pipelining,
chunked bodies, ``Expect: 100-continue``, HTTP/1.0, ``HEAD``, ``Connection: close`` and
malformed requests. The publish API has its own small server (publish/http_server.py); these
pin what aiohttp's server used to do for it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from publish.conftest import Queues, _serve_http
from publish.records import read_at_async

Address = tuple[str, int, Queues]
PUSH = b"POST /v1/kafkaqueues/orders/messages HTTP/1.1\r\nHost: x\r\n"


@pytest.fixture
async def address(queues: Queues) -> AsyncIterator[Address]:
    server, _ = await _serve_http(queues.targets)
    yield "127.0.0.1", server.port, queues
    await server.close()


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One answer: status, headers (lower-case names), body (by Content-Length)."""
    status_line = await asyncio.wait_for(reader.readline(), 15)
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def test_pipelined_requests_are_answered_in_order_on_one_connection(address: Address) -> None:
    host, port, queues = address
    reader, writer = await asyncio.open_connection(host, port)
    requests = [PUSH + f"Content-Length: 2\r\n\r\np{i}".encode() for i in range(5)]
    writer.write(b"".join(requests))  # all five before any answer
    places = []
    for i in range(5):
        status, headers, body = await _read_answer(reader)
        assert status == 201, body
        assert headers["content-type"] == "application/json"
        answer = json.loads(body)
        record = await read_at_async(queues.bootstrap, queues.topic, answer["partition"], answer["offset"])
        assert record.value == f"p{i}".encode()
        places.append((answer["partition"], answer["offset"]))
    assert len(set(places)) == 5
    writer.close()


async def test_a_chunked_body_is_published_whole(address: Address) -> None:
    host, port, queues = address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(PUSH + b"Transfer-Encoding: chunked\r\nX-Kafka-Key: k\r\n\r\n")
    for chunk in (b"hello ", b"chunked ", b"world"):
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    status, _, body = await _read_answer(reader)
    assert status == 201, body
    answer = json.loads(body)
    record = await read_at_async(queues.bootstrap, queues.topic, answer["partition"], answer["offset"])
    assert (record.value, record.key) == (b"hello chunked world", b"k")
    writer.close()


async def test_expect_100_continue_gets_continue_then_the_answer(address: Address) -> None:
    host, port, _ = address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(PUSH + b"Content-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert await asyncio.wait_for(reader.readline(), 15) == b"HTTP/1.1 100 Continue\r\n"
    assert await reader.readline() == b"\r\n"
    writer.write(b"body")
    status, _, body = await _read_answer(reader)
    assert status == 201, body
    writer.close()


async def test_http_1_0_and_connection_close_end_the_connection_after_the_answer(address: Address) -> None:
    host, port, _ = address
    for request in (
        b"POST /v1/kafkaqueues/orders/messages HTTP/1.0\r\nContent-Length: 1\r\n\r\nx",
        PUSH + b"Connection: close\r\nContent-Length: 1\r\n\r\nx",
    ):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        status, headers, _ = await _read_answer(reader)
        assert (status, headers["connection"]) == (201, "close")
        assert await asyncio.wait_for(reader.read(), 15) == b""  # closed by the server
        writer.close()
    # HTTP/1.0 asking for keep-alive keeps it.
    reader, writer = await asyncio.open_connection(host, port)
    request = (
        b"POST /v1/kafkaqueues/orders/messages HTTP/1.0\r\n"
        b"Connection: keep-alive\r\nContent-Length: 1\r\n\r\nx"
    )
    for _ in range(2):
        writer.write(request)
        status, headers, _ = await _read_answer(reader)
        assert (status, headers["connection"]) == (201, "keep-alive")
    writer.close()


async def test_head_of_a_job_answers_its_headers_without_a_body(address: Address) -> None:
    host, port, _ = address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"HEAD /v1/delayqueues/reminders/jobs/" + b"0" * 24 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    status_line = await asyncio.wait_for(reader.readline(), 15)
    assert status_line.split()[1] == b"404"
    headers = {}
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    assert int(headers["content-length"]) > 0  # the length the GET's body would have
    # Nothing follows the headers: the next answer on this connection starts right away.
    writer.write(b"GET /v1/nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = await _read_answer(reader)
    assert status == 404 and "the routes are" in json.loads(body)["error"]
    writer.close()


async def test_a_malformed_request_is_400_json_and_the_connection_closes(address: Address) -> None:
    host, port, _ = address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /v1/kafkaqueues/orders/messages HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
    status, headers, body = await _read_answer(reader)
    assert status == 400 and headers["connection"] == "close"
    assert "malformed HTTP request" in json.loads(body)["error"]
    assert await asyncio.wait_for(reader.read(), 15) == b""
    writer.close()


async def test_a_chunked_body_over_the_api_limit_is_413(address: Address) -> None:
    host, port, _ = address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(PUSH + b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * (1024 * 1024)
    for _ in range(17):  # 17 MiB, over the 16 MiB guard
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    status, _, body = await _read_answer(reader)
    assert status == 413 and "16777216" in json.loads(body)["error"]
    writer.close()
