"""Set-up shared by the tests that drive a delivery transport directly against a server in
this process (test_http_client.py, test_grpc_stream_client.py): a message to send, and the
servers a test starts, stopped when it ends (the ``servers`` fixture in conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc

from harness.servers import free_port
from queue_sidecar.delivery.envelope import Envelope

OnConnect = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def envelope(body: bytes = b"hello", message_id: str = "orders/0/1") -> Envelope:
    return Envelope(kind="kafka", queue="orders", id=message_id, attempt=1, body=body, partition=0, offset=1)


class Servers:
    """Servers started by one test; ``stop`` ends those still running."""

    def __init__(self) -> None:
        self._grpc: list[grpc.aio.Server] = []
        self._tcp: list[asyncio.Server] = []

    async def grpc(self, port: int, add_handlers: Callable[[grpc.aio.Server], object]) -> grpc.aio.Server:
        """A ``grpc.aio`` server on ``port``, serving what ``add_handlers`` adds to it."""
        server = grpc.aio.server()
        add_handlers(server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        self._grpc.append(server)
        await server.start()
        return server

    async def tcp(self, on_connect: OnConnect) -> int:
        """A plain TCP server calling ``on_connect`` for each connection; its port."""
        port = free_port()
        self._tcp.append(await asyncio.start_server(on_connect, "127.0.0.1", port))
        return port

    async def stop(self) -> None:
        for server in self._grpc:
            await server.stop(None)
        for tcp in self._tcp:
            tcp.close()
            await tcp.wait_closed()
