"""Delivery over gRPC: the app serves ``queueoperator.v1.MessageHandler/Handle``.

Single messages go over ``HandleStream`` when the app serves it, on the sidecar's own HTTP/2
connection (:mod:`.h2_grpc`): a unary ``grpc.aio`` call costs about 0.15-0.25 CPU ms in the
sidecar, a message on a ``grpc.aio`` stream about 0.07, one on the sidecar's own stream about
0.025 (an HTTP/1.1 exchange: 0.02). Each stream carries one message at a time (write, then read
its Ack), so up to ``app.maxConcurrency`` streams are kept open and reused. An app that does not
serve it answers UNIMPLEMENTED, and from then on ``Handle`` is called (over ``grpc.aio``, as is
``HandleBatch``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence

import grpc

from queue_engine.policy import Outcome
from queue_sidecar.delivery.batch_format import outcomes_from_results
from queue_sidecar.delivery.envelope import Envelope
from queue_sidecar.delivery.h2_grpc import H2Connection, Stream, StreamClosed
from queue_sidecar.proto import queue_pb2, queue_pb2_grpc

UNAVAILABLE_RETRY_AFTER = 1.0
# Reconnect quickly once the app is back: grpc's default backoff grows to two minutes.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),  # the queue engine owns retries
]


_STREAM_PATH = "/queueoperator.v1.MessageHandler/HandleStream"
log = logging.getLogger(__name__)


class GrpcTransport:
    """To the app, shared by every queue: one HTTP/2 connection for ``HandleStream`` and one
    ``grpc.aio`` channel for ``Handle`` and ``HandleBatch`` (HTTP/2 multiplexes the calls)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = f"{host}:{port}"
        self._host, self._port = host, port
        self._channel: grpc.aio.Channel | None = None
        self._stub: queue_pb2_grpc.MessageHandlerStub | None = None
        self._streaming = True  # until the app answers HandleStream with UNIMPLEMENTED
        self._idle: deque[Stream] = deque()
        self._connection: H2Connection | None = None  # HandleStream's, see h2_grpc.py
        self._connecting: asyncio.Future[H2Connection] | None = None
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
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        stream = self._idle_stream()
        if stream is None:
            try:
                stream = await self._new_stream(loop, attempt_timeout)
            except TimeoutError:
                return Outcome.retry(f"app did not answer within {attempt_timeout:g}s")
            except OSError as exc:  # refused, reset, no route: nothing took the message
                return Outcome.unavailable(f"app unavailable: {exc}", UNAVAILABLE_RETRY_AFTER)
        waiter: asyncio.Future[bytes] = loop.create_future()
        # A timer that fails the exchange: cheaper than an asyncio.timeout() per message.
        timer = loop.call_later(attempt_timeout, stream.fail, TimeoutError())
        try:
            stream.send(message.SerializeToString(), waiter)
            answer = await waiter
        except TimeoutError:
            return Outcome.retry(f"app did not answer within {attempt_timeout:g}s")
        except StreamClosed as exc:
            if exc.code == grpc.StatusCode.UNIMPLEMENTED:
                self._stop_streaming()
                return None  # the app never saw it: Handle delivers it
            if exc.code == grpc.StatusCode.OK:
                return Outcome.retry("the app ended its HandleStream without answering the message")
            return outcome_for_error(exc.code, exc.details, attempt_timeout)
        except BaseException:
            stream.reset()  # cancelled (the sidecar is stopping): the stream cannot be reused
            raise
        finally:
            timer.cancel()
        ack = queue_pb2.Ack.FromString(answer)
        if ack.id and ack.id != message.id:
            stream.reset()
            return Outcome.retry(f"the app answered {ack.id!r} on the stream carrying {message.id!r}")
        self._idle.append(stream)
        return outcome_for_ack(ack)

    def _idle_stream(self) -> Stream | None:
        while self._idle:
            stream = self._idle.pop()
            if stream.usable:  # not ended while idle (the app restarted, went away, ...)
                return stream
            stream.reset()
        return None

    async def _new_stream(self, loop: asyncio.AbstractEventLoop, seconds: float) -> Stream:
        """A stream on the connection, connecting first when there is none (one connect at a time)."""
        connection = self._connection
        if connection is None or not connection.open_for_streams:
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect(loop))
            connecting = self._connecting
            try:
                async with asyncio.timeout(seconds):
                    connection = await asyncio.shield(connecting)
            finally:
                if connecting.done() and self._connecting is connecting:
                    self._connecting = None
        return connection.open_stream()

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> H2Connection:
        _, connection = await loop.create_connection(
            lambda: H2Connection(loop, self.target, _STREAM_PATH), self._host, self._port
        )
        if self._connection is not None:
            self._connection.close()  # gone away or broken: its streams have ended
        self._connection = connection
        return connection

    def _stop_streaming(self) -> None:
        if self._streaming:
            log.info("the app does not serve MessageHandler/HandleStream: calling Handle per message")
        self._streaming = False
        while self._idle:
            self._idle.pop().reset()

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
            self._idle.pop().reset()
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None


def message_for(envelope: Envelope) -> queue_pb2.Message:
    # Every field in the constructor, and headers only when there are any: an empty ``extend``
    # and separate assignments cost as much as the rest of the message. The Kafka-only fields
    # of a dq envelope are None, which leaves them unset (proto3 defaults, nothing on the wire).
    message = queue_pb2.Message(
        kind=envelope.kind,
        queue=envelope.queue,
        id=envelope.id,
        attempt=envelope.attempt,
        body=envelope.body,
        key=envelope.key,
        partition=envelope.partition or 0,
        offset=envelope.offset or 0,
    )
    if envelope.headers:
        message.headers.extend(queue_pb2.Header(key=k, value=v or b"") for k, v in envelope.headers)
    if envelope.due_at is not None:
        message.due_at.FromDatetime(envelope.due_at)
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
