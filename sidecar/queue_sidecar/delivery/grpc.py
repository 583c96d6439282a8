"""Delivery over gRPC: the app serves ``queueoperator.v1.MessageHandler/Handle``.

Single messages go over ``HandleStream`` when the app serves it: a unary ``grpc.aio`` call
costs about 0.25 CPU ms in the sidecar (a call object, a deadline, HTTP/2 stream setup and
teardown), a message on an open stream about a third of that. Each stream carries one message
at a time (write, then read its Ack), so up to ``app.maxConcurrency`` streams are kept open and
reused. An app that does not serve it answers UNIMPLEMENTED, and from then on ``Handle`` is
called.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

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


log = logging.getLogger(__name__)
_Stream = Any  # grpc.aio.StreamStreamCall[Message, Ack]: the generated stub is untyped


class GrpcTransport:
    """One channel to the app, shared by every queue (HTTP/2 multiplexes the calls)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = f"{host}:{port}"
        self._channel: grpc.aio.Channel | None = None
        self._stub: queue_pb2_grpc.MessageHandlerStub | None = None
        self._streaming = True  # until the app answers HandleStream with UNIMPLEMENTED
        self._idle: deque[_Stream] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None  # bound once: see http_client.py

    def _handle(self) -> queue_pb2_grpc.MessageHandlerStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
            self._stub = queue_pb2_grpc.MessageHandlerStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub

    async def send(self, envelope: Envelope, attempt_timeout: float) -> Outcome:
        message = message_for(envelope)
        if self._streaming:
            outcome = await self._send_on_stream(message, attempt_timeout)
            if outcome is not None:
                return outcome
        try:
            ack = await self._handle().Handle(message, timeout=attempt_timeout)
        except grpc.aio.AioRpcError as exc:
            return outcome_for_error(exc.code(), exc.details() or "", attempt_timeout)
        return outcome_for_ack(ack)

    async def _send_on_stream(self, message: queue_pb2.Message, attempt_timeout: float) -> Outcome | None:
        """The message over an idle (or a new) HandleStream; None when the app does not serve it."""
        stream = self._idle_stream()
        # A timer that cancels the stream: cheaper than an asyncio.timeout() per message.
        expired: list[bool] = []
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        timer = loop.call_later(attempt_timeout, _expire, stream, expired)
        sent = False
        try:
            await stream.write(message)
            sent = True
            ack = await stream.read()
        except asyncio.CancelledError:
            stream.cancel()
            if not expired:
                raise  # the sidecar is stopping
            return Outcome.retry(f"app did not answer within {attempt_timeout:g}s")
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            stream.cancel()
            if expired:
                return Outcome.retry(f"app did not answer within {attempt_timeout:g}s")
            code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
            if code == grpc.StatusCode.UNIMPLEMENTED:
                self._stop_streaming()
            if code == grpc.StatusCode.UNIMPLEMENTED or not sent:
                # The app never saw it (no such method, or the stream had ended before the
                # write, which then fails with a status of its own): Handle delivers it.
                return None
            if not isinstance(exc, grpc.aio.AioRpcError):
                return Outcome.retry(f"app's HandleStream failed: {exc}")
            return outcome_for_error(exc.code(), exc.details() or "", attempt_timeout)
        finally:
            timer.cancel()
        if ack is grpc.aio.EOF:
            stream.cancel()
            return Outcome.retry("the app ended its HandleStream without answering the message")
        if ack.id and ack.id != message.id:
            stream.cancel()
            return Outcome.retry(f"the app answered {ack.id!r} on the stream carrying {message.id!r}")
        self._idle.append(stream)
        return outcome_for_ack(ack)

    def _idle_stream(self) -> _Stream:
        while self._idle:
            stream = self._idle.pop()
            if not stream.done():  # ended while idle (the app restarted, ...): not reusable
                return stream
        return self._handle().HandleStream()

    def _stop_streaming(self) -> None:
        if self._streaming:
            log.info("the app does not serve MessageHandler/HandleStream: calling Handle per message")
        self._streaming = False
        while self._idle:
            self._idle.pop().cancel()

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
        while self._idle:
            self._idle.pop().cancel()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None


def _expire(stream: _Stream, expired: list[bool]) -> None:
    expired.append(True)
    stream.cancel()  # its Ack may still come: the stream cannot carry another message


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
