"""The sidecar's own HTTP/2 client for ``HandleStream`` (delivery/h2_grpc.py), against grpc's server.

The sidecar's transport is driven directly (no engine) against a real ``grpc.aio`` server
in this process, for what the delivery tests through the sidecar do not reach: messages larger
than a frame and than the server's flow-control window, status details that must be decoded,
a timed-out message followed by more on a fresh stream, a server that stops (GOAWAY) and one
that comes back on the same port. The request header block is checked with an HPACK decoder.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from hpack import Decoder

from harness.servers import free_port
from queue_engine.policy import Verdict
from queue_sidecar.delivery.grpc import GrpcTransport
from queue_sidecar.delivery.h2_grpc import request_headers
from queue_sidecar.proto import queue_pb2, queue_pb2_grpc

from .in_process import Servers, envelope

Answer = Callable[[queue_pb2.Message, Any], Awaitable[queue_pb2.Ack]]


class Handler(queue_pb2_grpc.MessageHandlerServicer):
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.methods: list[str] = []
        self.bodies: list[bytes] = []
        self.streams_ended = 0

    async def Handle(self, request: queue_pb2.Message, context: Any) -> queue_pb2.Ack:
        self.methods.append("Handle")
        self.bodies.append(request.body)
        return await self.answer(request, context)

    async def HandleStream(self, requests: AsyncIterator[queue_pb2.Message], context: Any) -> Any:
        try:
            async for request in requests:
                self.methods.append("HandleStream")
                self.bodies.append(request.body)
                ack = await self.answer(request, context)
                ack.id = request.id
                yield ack
                if request.body == b"twice":  # a broken app: a second answer to one message
                    yield ack
        finally:
            # A stream the client reset ends here: grpc ends the request iterator or cancels
            # the call. One left open keeps waiting for requests.
            self.streams_ended += 1


async def succeed(request: queue_pb2.Message, context: Any) -> queue_pb2.Ack:
    return queue_pb2.Ack(status=queue_pb2.Ack.SUCCESS)


@pytest.fixture
def serve(servers: Servers) -> Callable[..., Awaitable[tuple[grpc.aio.Server, Handler]]]:
    async def start(answer: Answer = succeed, *, port: int) -> tuple[grpc.aio.Server, Handler]:
        handler = Handler(answer)
        server = await servers.grpc(
            port,
            lambda server: queue_pb2_grpc.add_MessageHandlerServicer_to_server(handler, server),  # type: ignore[no-untyped-call]
        )
        return server, handler

    return start


async def test_large_messages_go_out_in_frames_within_the_servers_window(
    serve: Callable[..., Awaitable[tuple[grpc.aio.Server, Handler]]],
) -> None:
    port = free_port()
    _, handler = await serve(port=port)
    transport = GrpcTransport("127.0.0.1", port)
    try:
        # 16 KiB frames by default, a 64 KiB window until the server's SETTINGS raise it.
        bodies = [bytes([i]) * size for i, size in enumerate((100, 70_000, 1_500_000, 16_384, 200_000))]
        outcomes = await asyncio.gather(
            *(transport.send(envelope(body, f"o/0/{i}"), 10) for i, body in enumerate(bodies))
        )
        assert [outcome.verdict for outcome in outcomes] == [Verdict.SUCCESS] * len(bodies)
        assert sorted(handler.bodies) == sorted(bodies)
        assert set(handler.methods) == {"HandleStream"}
    finally:
        await transport.close()


async def test_the_apps_status_and_its_details_come_through(
    serve: Callable[..., Awaitable[tuple[grpc.aio.Server, Handler]]],
) -> None:
    async def answer(request: queue_pb2.Message, context: Any) -> queue_pb2.Ack:
        if request.body == b"abort":
            await context.abort(grpc.StatusCode.INTERNAL, "boom: 100% ünïcode, twice boom: 100% ünïcode")
        if request.body == b"later":
            ack = queue_pb2.Ack(status=queue_pb2.Ack.RETRY, error="busy")
            ack.retry_after.FromMilliseconds(1500)
            return ack
        return queue_pb2.Ack(status=queue_pb2.Ack.DROP, error="not for us")

    port = free_port()
    await serve(answer, port=port)
    transport = GrpcTransport("127.0.0.1", port)
    try:
        for _ in range(2):  # the second time the server's HPACK table holds the headers
            failed = await transport.send(envelope(b"abort"), 5)
            assert failed.verdict is Verdict.RETRY and failed.attempted
            assert failed.error == "app failed: INTERNAL: boom: 100% ünïcode, twice boom: 100% ünïcode"
        later = await transport.send(envelope(b"later"), 5)
        assert (later.verdict, later.error, later.retry_after) == (Verdict.RETRY, "busy", 1.5)
        dropped = await transport.send(envelope(b"drop"), 5)
        assert (dropped.verdict, dropped.error) == (Verdict.DROP, "not for us")
    finally:
        await transport.close()


async def test_a_timed_out_message_is_retried_and_the_next_one_gets_a_fresh_stream(
    serve: Callable[..., Awaitable[tuple[grpc.aio.Server, Handler]]],
) -> None:
    async def answer(request: queue_pb2.Message, context: Any) -> queue_pb2.Ack:
        if request.body == b"slow":
            await asyncio.sleep(3)
        return queue_pb2.Ack(status=queue_pb2.Ack.SUCCESS)

    port = free_port()
    _, handler = await serve(answer, port=port)
    transport = GrpcTransport("127.0.0.1", port)
    try:
        late = await transport.send(envelope(b"slow"), 0.3)
        assert (late.verdict, late.error) == (Verdict.RETRY, "app did not answer within 0.3s")
        assert (await transport.send(envelope(b"next"), 5)).verdict is Verdict.SUCCESS
        assert handler.bodies == [b"slow", b"next"]
    finally:
        await transport.close()


async def test_a_second_answer_to_one_message_ends_that_stream(
    serve: Callable[..., Awaitable[tuple[grpc.aio.Server, Handler]]],
) -> None:
    port = free_port()
    _, handler = await serve(port=port)
    transport = GrpcTransport("127.0.0.1", port)
    try:
        assert (await transport.send(envelope(b"twice"), 5)).verdict is Verdict.SUCCESS
        for _ in range(100):  # the stray answer arrives after the first one: the stream is reset
            if handler.streams_ended:
                break
            await asyncio.sleep(0.02)
        assert handler.streams_ended == 1
        assert (await transport.send(envelope(b"next"), 5)).verdict is Verdict.SUCCESS
        assert handler.bodies == [b"twice", b"next"]
    finally:
        await transport.close()


async def test_a_stopped_server_means_unavailable_and_its_return_is_noticed(
    serve: Callable[..., Awaitable[tuple[grpc.aio.Server, Handler]]],
) -> None:
    port = free_port()
    server, _ = await serve(port=port)
    transport = GrpcTransport("127.0.0.1", port)
    try:
        assert (await transport.send(envelope(b"first"), 5)).verdict is Verdict.SUCCESS
        await server.stop(None)  # GOAWAY, then the connection closes
        down = await transport.send(envelope(b"while-down"), 5)
        assert down.verdict is Verdict.RETRY and not down.attempted  # not counted as an attempt
        _, handler = await serve(port=port)
        back = await transport.send(envelope(b"back"), 5)
        assert back.verdict is Verdict.SUCCESS
        assert handler.bodies == [b"back"] and handler.methods == ["HandleStream"]
    finally:
        await transport.close()


async def test_a_server_without_handle_stream_gets_the_message_through_handle(servers: Servers) -> None:
    port = free_port()
    handler = Handler(succeed)
    # Handle only: HandleStream answers UNIMPLEMENTED (a trailers-only answer).
    handle_only = grpc.method_handlers_generic_handler(
        "queueoperator.v1.MessageHandler",
        {
            "Handle": grpc.unary_unary_rpc_method_handler(
                handler.Handle,
                request_deserializer=queue_pb2.Message.FromString,
                response_serializer=queue_pb2.Ack.SerializeToString,
            )
        },
    )
    await servers.grpc(port, lambda server: server.add_generic_rpc_handlers((handle_only,)))
    transport = GrpcTransport("127.0.0.1", port)
    try:
        assert (await transport.send(envelope(b"one"), 5)).verdict is Verdict.SUCCESS
        assert (await transport.send(envelope(b"two"), 5)).verdict is Verdict.SUCCESS
        assert handler.methods == ["Handle", "Handle"] and handler.bodies == [b"one", b"two"]
    finally:
        await transport.close()


def test_the_request_header_block_decodes_as_written_with_long_values_too() -> None:
    # The block is encoded once per connection and sent on every stream: the app's HPACK decoder
    # must read back exactly those headers, lengths of 127 and more included (multi-byte
    # integers), and the same bytes again on the next stream (no dynamic table entries).
    long_path = "/queueoperator.v1.MessageHandler/" + "x" * 300
    block = request_headers(long_path, "app.example:50051")
    expected = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", long_path),
        (":authority", "app.example:50051"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", "queue-sidecar"),
    ]
    decoder = Decoder()
    assert decoder.decode(block) == expected
    assert decoder.decode(block) == expected
    assert len(decoder.header_table.dynamic_entries) == 0
