"""Delivery over gRPC: the app serves ``queueoperator.v1.MessageHandler/Handle``."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from queue_engine.policy import Outcome
from queue_sidecar.delivery.batch_format import outcomes_from_results
from queue_sidecar.delivery.envelope import Envelope
from queue_sidecar.proto import queue_pb2, queue_pb2_grpc

UNAVAILABLE_RETRY_AFTER = 1.0
# Reconnect quickly once the app is back: grpc's default backoff grows to two minutes.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),  # the queue engine owns retries
]


class GrpcTransport:
    """One channel to the app, shared by every queue (HTTP/2 multiplexes the calls)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = f"{host}:{port}"
        self._channel: grpc.aio.Channel | None = None
        self._stub: queue_pb2_grpc.MessageHandlerStub | None = None

    def _handle(self) -> queue_pb2_grpc.MessageHandlerStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
            self._stub = queue_pb2_grpc.MessageHandlerStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub

    async def send(self, envelope: Envelope, attempt_timeout: float) -> Outcome:
        try:
            ack = await self._handle().Handle(message_for(envelope), timeout=attempt_timeout)
        except grpc.aio.AioRpcError as exc:
            return outcome_for_error(exc.code(), exc.details() or "", attempt_timeout)
        return outcome_for_ack(ack)

    async def send_batch(self, envelopes: Sequence[Envelope], attempt_timeout: float) -> list[Outcome]:
        batch = queue_pb2.MessageBatch(messages=[message_for(envelope) for envelope in envelopes])
        try:
            reply = await self._handle().HandleBatch(batch, timeout=attempt_timeout)
        except grpc.aio.AioRpcError as exc:
            return [outcome_for_error(exc.code(), exc.details() or "", attempt_timeout)] * len(envelopes)
        answers = [
            (
                ack.id,
                queue_pb2.Ack.Status.Name(ack.status),
                ack.error,
                ack.retry_after.ToTimedelta().total_seconds() if ack.HasField("retry_after") else None,
            )
            for ack in reply.acks
        ]
        return outcomes_from_results(envelopes, answers)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None


def message_for(envelope: Envelope) -> queue_pb2.Message:
    message = queue_pb2.Message(
        kind=envelope.kind,
        queue=envelope.queue,
        id=envelope.id,
        attempt=envelope.attempt,
        body=envelope.body,
    )
    if envelope.due_at is not None:
        message.due_at.FromDatetime(envelope.due_at)
    if envelope.kind == "kafka":
        if envelope.key is not None:
            message.key = envelope.key
        message.partition = envelope.partition or 0
        message.offset = envelope.offset or 0
        message.headers.extend(queue_pb2.Header(key=k, value=v or b"") for k, v in envelope.headers)
    return message


def outcome_for_ack(ack: queue_pb2.Ack) -> Outcome:
    if ack.status == queue_pb2.Ack.SUCCESS:
        return Outcome.success()
    if ack.status == queue_pb2.Ack.DROP:
        return Outcome.drop(ack.error or "app answered DROP")
    after = ack.retry_after.ToTimedelta().total_seconds() if ack.HasField("retry_after") else None
    return Outcome.retry(ack.error or "app answered RETRY", after)


def outcome_for_error(code: grpc.StatusCode, details: str, attempt_timeout: float) -> Outcome:
    if code == grpc.StatusCode.UNAVAILABLE:
        # The app is not serving (down or restarting): hand back without counting the attempt.
        return Outcome.unavailable(f"app unavailable: {details}", UNAVAILABLE_RETRY_AFTER)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Outcome.retry(f"app did not answer within {attempt_timeout:g}s")
    return Outcome.retry(f"app failed: {code.name}: {details}")
