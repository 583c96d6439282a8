"""A scriptable gRPC app (queueoperator.v1.MessageHandler): ``grpc_app.py --port P --script F --record R``.

It serves Handle, HandleBatch and HandleStream; with ``--unary-only`` it answers HandleStream
with UNIMPLEMENTED, like an app whose stubs were generated before HandleStream existed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from queue_sidecar.proto import queue_pb2, queue_pb2_grpc

try:
    from apps.script import Script
except ImportError:  # run as a script: tests/ is not on the path
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from apps.script import Script


class Handler(queue_pb2_grpc.MessageHandlerServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    async def HandleBatch(
        self, request: queue_pb2.MessageBatch, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        number, whole = self.script.batch_answer()
        acks = []
        for message in request.messages:
            self.script.record({"batch": number, "batch_size": len(request.messages), **self._entry(message)})
            ack = self._ack(self.script.answer_for(message.body))
            ack.id = message.id
            acks.append(ack)
        if whole.get("sleep"):
            await asyncio.sleep(float(whole["sleep"]))
        if whole.get("code"):
            await context.abort(grpc.StatusCode[whole["code"]], whole.get("error", "scripted failure"))
        return queue_pb2.AckBatch(acks=acks)

    @staticmethod
    def _entry(request: queue_pb2.Message) -> dict[str, Any]:
        return {
            "kind": request.kind,
            "queue": request.queue,
            "id": request.id,
            "attempt": request.attempt,
            "body": request.body.decode("utf-8", "replace"),
            "due_at": request.due_at.ToJsonString() if request.HasField("due_at") else None,
            "key": request.key.decode("utf-8", "replace") if request.HasField("key") else None,
            "partition": request.partition,
            "offset": request.offset,
            "headers": [[h.key, base64.b64encode(h.value).decode()] for h in request.headers],
        }

    async def Handle(self, request: queue_pb2.Message, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await self._answer(request, context, "Handle")

    async def HandleStream(
        self, requests: AsyncIterator[queue_pb2.Message], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[queue_pb2.Ack]:
        async for request in requests:
            ack = await self._answer(request, context, "HandleStream")
            ack.id = request.id
            yield ack

    async def _answer(
        self, request: queue_pb2.Message, context: grpc.aio.ServicerContext[Any, Any], method: str
    ) -> queue_pb2.Ack:
        self.script.record({**self._entry(request), "method": method})
        answer = self.script.answer_for(request.body)
        if answer.get("sleep"):
            await asyncio.sleep(float(answer["sleep"]))
        if answer.get("code"):
            await context.abort(grpc.StatusCode[answer["code"]], answer.get("error", "scripted failure"))
        return self._ack(answer)

    @staticmethod
    def _ack(answer: dict[str, Any]) -> queue_pb2.Ack:
        ack = queue_pb2.Ack(
            status=queue_pb2.Ack.Status.Value(answer.get("ack", "SUCCESS")), error=answer.get("error", "")
        )
        if "retryAfter" in answer:
            ack.retry_after.FromNanoseconds(int(float(answer["retryAfter"]) * 1e9))
        return ack


class UnaryOnlyHandler(Handler):
    """An app whose stubs predate HandleStream: it answers UNIMPLEMENTED, as the base class does."""

    HandleStream = queue_pb2_grpc.MessageHandlerServicer.HandleStream  # type: ignore[assignment]


async def serve(port: int, script: Script, unary_only: bool = False) -> None:
    server = grpc.aio.server()
    handler = UnaryOnlyHandler(script) if unary_only else Handler(script)
    queue_pb2_grpc.add_MessageHandlerServicer_to_server(handler, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--script", type=Path, required=True)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--unary-only", action="store_true", help="do not serve HandleStream")
    args = parser.parse_args()
    asyncio.run(serve(args.port, Script(args.script, args.record), args.unary_only))


if __name__ == "__main__":
    main()
