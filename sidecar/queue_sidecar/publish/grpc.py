"""The publish API over gRPC: ``queueoperator.v1.Publisher`` (Delay, Revoke, GetJob, Push) on loopback.

Same operations and checks as the HTTP API; failures end the call with INVALID_ARGUMENT,
NOT_FOUND, RESOURCE_EXHAUSTED (over the size limit), UNAVAILABLE (no quorum, broker down),
DEADLINE_EXCEEDED, FAILED_PRECONDITION (an idempotency key reused for another request) or
ABORTED (the first request with that key still in flight), and details that say what to fix.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import NoReturn, TypeVar

import grpc

from queue_sidecar.proto import queue_pb2, queue_pb2_grpc
from queue_sidecar.publish import operations
from queue_sidecar.publish.errors import classify
from queue_sidecar.publish.targets import PublishTargets

log = logging.getLogger(__name__)

T = TypeVar("T")
# Memory guard, as in the HTTP API; each queue's own limit is checked by its producer.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class PublisherService(queue_pb2_grpc.PublisherServicer):
    def __init__(self, targets: PublishTargets) -> None:
        self.targets = targets

    async def Delay(  # the method names are the RPCs'
        self, request: queue_pb2.DelayRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.DelayReply:
        when = request.WhichOneof("when")
        result, _ = await _answer(
            context,
            "Delay",
            request.queue,
            operations.delay(
                self.targets,
                request.queue,
                request.body,
                delay=request.delay.ToTimedelta().total_seconds() if when == "delay" else None,
                at=request.at.ToDatetime(tzinfo=UTC) if when == "at" else None,
                idempotency_key=request.idempotency_key or None,
            ),
        )
        return queue_pb2.DelayReply(id=result["id"])

    async def Revoke(
        self, request: queue_pb2.RevokeRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.RevokeReply:
        await _answer(
            context, "Revoke", request.queue, operations.revoke(self.targets, request.queue, request.id)
        )
        return queue_pb2.RevokeReply()

    async def GetJob(
        self, request: queue_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.Job:
        state = await _answer(
            context, "GetJob", request.queue, operations.job(self.targets, request.queue, request.id)
        )
        job = queue_pb2.Job(
            id=state.id,
            queue=state.queue,
            state=state.state,
            attempts=state.attempts,
            last_error=state.last_error,
        )
        job.due_at.FromDatetime(datetime.fromtimestamp(state.due, UTC))
        if state.next_attempt is not None:
            job.next_attempt_at.FromDatetime(datetime.fromtimestamp(state.next_attempt, UTC))
        return job

    async def Push(
        self, request: queue_pb2.PushRequest, context: grpc.aio.ServicerContext
    ) -> queue_pb2.PushReply:
        result, _ = await _answer(
            context,
            "Push",
            request.queue,
            operations.push(
                self.targets,
                request.queue,
                request.body,
                key=request.key if request.HasField("key") else None,
                headers=[(h.key, h.value) for h in request.headers],
                idempotency_key=request.idempotency_key or None,
            ),
        )
        return queue_pb2.PushReply(partition=result["partition"], offset=result["offset"])


async def _answer(context: grpc.aio.ServicerContext, rpc: str, queue: str, call: Awaitable[T]) -> T:
    try:
        return await call
    except Exception as exc:
        await _abort(context, rpc, queue, exc)


async def _abort(context: grpc.aio.ServicerContext, rpc: str, queue: str, exc: Exception) -> NoReturn:
    failure = classify(exc)
    fields = {"queue": queue, "error": failure.message}
    if failure.unexpected:
        log.error("publish %s failed", rpc, exc_info=exc, extra=fields)
    else:
        log.info("publish %s failed", rpc, extra=fields)
    await context.abort(failure.grpc_code, failure.message)
    raise AssertionError("context.abort returned")  # it raises; this keeps the type checker honest


async def start_server(targets: PublishTargets, host: str, port: int) -> grpc.aio.Server:
    """Start ``queueoperator.v1.Publisher`` on ``host:port`` (use 127.0.0.1); stop it with ``stop(grace)``."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),  # a second sidecar on the same port must fail, not share it
        ]
    )
    queue_pb2_grpc.add_PublisherServicer_to_server(PublisherService(targets), server)  # type: ignore[no-untyped-call]
    address = f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises on a failed bind; older versions returned 0
        bound = 0
    if bound == 0:
        raise OSError(f"the gRPC publish API cannot listen on {address}: is the port in use?")
    await server.start()
    log.info("gRPC publish API listening on %s", address)
    return server
