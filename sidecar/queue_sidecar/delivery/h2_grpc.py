"""gRPC ``HandleStream`` exchanges over the sidecar's own HTTP/2 connection, on the event loop.

Why not ``grpc.aio`` for this: profiled in the sidecar, a message on a ``grpc.aio`` stream costs
about three times the CPU of an HTTP/1.1 exchange, and most of it is not gRPC's work but the
hand-over between gRPC's completion-queue thread and the event loop: each message's write and
read complete on that thread, which takes the GIL and wakes the loop through a socket, about
twelve system calls and three thread switches per message (HTTP: about three system calls).
Here a message is one HTTP/2 DATA frame written on the loop's own transport and its ``Ack`` one
DATA frame parsed in ``data_received``: no thread, and the calls in flight share one
connection, so their reads and writes coalesce.

What it implements of HTTP/2 (RFC 9113) is what a gRPC client needs against any server: the
connection preface and SETTINGS, flow control both ways, frames split at the peer's maximum
size, PING and SETTINGS acknowledgements, HEADERS with CONTINUATION and padding, RST_STREAM and
GOAWAY. Header blocks are encoded and decoded with the ``hpack`` library (python-hyper's, the
one h2 uses). Unary ``Handle`` and ``HandleBatch`` stay on ``grpc.aio`` (see :mod:`.grpc`).
"""

from __future__ import annotations

import asyncio
import struct
import urllib.parse
from typing import cast

import grpc
from hpack import Decoder, Encoder, HPACKError, NeverIndexedHeaderTuple

# A frame's 9-byte head (RFC 9113 section 4.1): the 24-bit length as 8 + 16 bits, type, flags, stream.
_FRAME_HEAD = struct.Struct(">BHBBI")
_UINT32 = struct.Struct(">I")
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame kinds and flags (RFC 9113 section 6).
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING = 0, 1, 3, 4, 6
_GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 7, 8, 9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_SETTINGS_INITIAL_WINDOW_SIZE, _SETTINGS_MAX_FRAME_SIZE = 4, 5
_MAX_WINDOW = 0x7FFFFFFF
_DEFAULT_WINDOW = 65535
# What the sidecar receives is small (Acks): it opens its windows wide once and tops them up
# when half is used, instead of a WINDOW_UPDATE per frame.
_REFILL_AT = _MAX_WINDOW // 2
_REFUSED_STREAM, _CANCEL = 7, 8
_CODES = {code.value[0]: code for code in grpc.StatusCode}
# gRPC's mapping of HTTP statuses for an answer that is not gRPC (a proxy, a plain HTTP server).
_HTTP_CODES = {
    404: grpc.StatusCode.UNIMPLEMENTED,
    429: grpc.StatusCode.UNAVAILABLE,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.UNAVAILABLE,
}


def request_headers(path: str, authority: str) -> bytes:
    """The header block of every ``HandleStream`` request on a connection, encoded once.

    Never-indexed literals (names from the static table where it has them) leave the app's
    dynamic table alone, so the same bytes stay valid for every stream; no Huffman coding,
    which saves a little CPU on a block written once per stream.
    """
    return Encoder().encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            NeverIndexedHeaderTuple(":path", path),
            NeverIndexedHeaderTuple(":authority", authority),
            NeverIndexedHeaderTuple("content-type", "application/grpc"),
            NeverIndexedHeaderTuple("te", "trailers"),
            NeverIndexedHeaderTuple("user-agent", "queue-sidecar"),
        ],
        huffman=False,
    )


class StreamClosed(Exception):
    """The stream ended without (another) answer: the status the app, or the connection, gave."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return _FRAME_HEAD.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id) + payload


class Stream:
    """One ``HandleStream`` call: one message at a time, its ``Ack`` (serialized) to ``waiter``."""

    __slots__ = ("_inbox", "_writing", "closed", "connection", "id", "received", "send_window", "waiter")

    def __init__(self, connection: H2Connection, stream_id: int, send_window: int) -> None:
        self.connection = connection
        self.id = stream_id
        self.send_window = send_window
        self.received = 0
        self.waiter: asyncio.Future[bytes] | None = None
        self.closed: StreamClosed | None = None
        self._inbox = bytearray()
        self._writing: asyncio.Future[None] | None = None

    @property
    def usable(self) -> bool:
        return self.closed is None and self.connection.open_for_streams

    def send(self, message: bytes, waiter: asyncio.Future[bytes]) -> None:
        """Write one serialized message; its answer (or the stream's end) resolves ``waiter``.

        Usually the whole message goes out at once; a large one goes out in parts as the
        app's flow-control window allows, in a task that ends with the stream.
        """
        self.waiter = waiter
        if self.closed is not None:
            waiter.set_exception(self.closed)
            return
        self._writing = self.connection.write_message(self, len(message).to_bytes(5, "big") + message)

    def fail(self, error: BaseException) -> None:
        """Fail the message in flight (a timeout): the stream cannot carry another one."""
        waiter = self.waiter
        self.waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.reset()

    def reset(self) -> None:
        """End the stream from the sidecar's side (RST_STREAM, unless it has ended already)."""
        if self.closed is None:
            self.closed = StreamClosed(grpc.StatusCode.CANCELLED, "cancelled by the sidecar")
        self.connection.reset(self)

    def on_data(self, data: bytes) -> None:
        inbox = self._inbox
        inbox += data
        while len(inbox) >= 5:
            length = int.from_bytes(inbox[1:5], "big")
            if len(inbox) < 5 + length:
                return
            if inbox[0]:
                self.on_closed(StreamClosed(grpc.StatusCode.INTERNAL, "compressed answer (not asked for)"))
                self.reset()
                return
            message = bytes(inbox[5 : 5 + length])
            del inbox[: 5 + length]
            waiter = self.waiter
            self.waiter = None
            if waiter is None:
                self.on_closed(StreamClosed(grpc.StatusCode.INTERNAL, "an answer to no message"))
                self.reset()
                return
            if not waiter.done():
                waiter.set_result(message)

    def on_closed(self, closed: StreamClosed) -> None:
        if self.closed is None:
            self.closed = closed
        waiter = self.waiter
        self.waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(closed)


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection to the app, carrying the sidecar's ``HandleStream`` calls."""

    def __init__(self, loop: asyncio.AbstractEventLoop, authority: str, path: str) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._streams: dict[int, Stream] = {}
        self._next_id = 1
        self._decoder = Decoder()
        self._header_block: tuple[int, int, bytearray] | None = None  # stream, flags, fragments
        self._send_window = _DEFAULT_WINDOW
        self._initial_window = _DEFAULT_WINDOW
        self._max_frame = 16384
        self._received = 0
        self._window_opened: asyncio.Future[None] | None = None
        # Frames written in one turn of the event loop go out in one system call: when acks for
        # several streams arrive together, their next messages leave together.
        self._outbox: list[bytes] = []
        self._error: StreamClosed | None = None
        self.open_for_streams = False
        self._request_headers = request_headers(path, authority)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        settings = struct.pack(">HIHI", 2, 0, _SETTINGS_INITIAL_WINDOW_SIZE, _MAX_WINDOW)  # no push
        self._transport.write(
            _PREFACE
            + _frame(_SETTINGS, 0, 0, settings)
            + _frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", _MAX_WINDOW - _DEFAULT_WINDOW))
        )
        self.open_for_streams = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.open_for_streams = False
        self._transport = None
        closed = self._error or StreamClosed(
            grpc.StatusCode.UNAVAILABLE, f"connection to the app lost{f': {exc}' if exc else ''}"
        )
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.on_closed(closed)
        self._wake_writers()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        position, end = 0, len(buffer)
        try:
            while end - position >= 9:
                high, low, kind, flags, stream_id = _FRAME_HEAD.unpack_from(buffer, position)
                length = high << 16 | low
                start = position + 9
                if end - start < length:
                    break
                position = start + length
                if kind == _WINDOW_UPDATE and length == 4 and self._header_block is None:
                    # The most common frame by far: grpc's server tops up its windows after
                    # almost every message. Read in place, without a copy or a dispatch.
                    self._on_window_update(stream_id & _MAX_WINDOW, _UINT32.unpack_from(buffer, start)[0])
                else:
                    self._on_frame(kind, flags, stream_id & _MAX_WINDOW, bytes(buffer[start:position]))
        except (HPACKError, ValueError, IndexError, struct.error) as exc:
            self._abort(f"the app's HTTP/2 is not understood: {exc}")
            return
        del buffer[:position]

    # streams
    def open_stream(self) -> Stream:
        assert self._transport is not None
        stream = Stream(self, self._next_id, self._initial_window)
        self._next_id += 2
        if self._next_id > _MAX_WINDOW:  # stream ids used up (after about a billion streams)
            self.open_for_streams = False
        self._streams[stream.id] = stream
        self._send(_frame(_HEADERS, _END_HEADERS, stream.id, self._request_headers))
        return stream

    def write_message(self, stream: Stream, data: bytes) -> asyncio.Future[None] | None:
        if self._transport is None:
            lost = StreamClosed(grpc.StatusCode.UNAVAILABLE, "connection to the app lost")
            stream.on_closed(self._error or lost)
            return None
        size = len(data)
        if size <= self._max_frame and size <= self._send_window and size <= stream.send_window:
            self._send_window -= size
            stream.send_window -= size
            self._send(_frame(_DATA, 0, stream.id, data))
            return None
        return asyncio.ensure_future(self._write_when_open(stream, data))

    async def _write_when_open(self, stream: Stream, data: bytes) -> None:
        """A message larger than a frame or than what the app's window allows: in parts."""
        view = memoryview(data)
        while view:
            if stream.closed is not None or self._transport is None:
                return  # the waiter has its answer already
            size = min(len(view), self._max_frame, self._send_window, stream.send_window)
            if size <= 0:
                if self._window_opened is None or self._window_opened.done():
                    self._window_opened = self._loop.create_future()
                await self._window_opened
                continue
            self._send_window -= size
            stream.send_window -= size
            self._send(_frame(_DATA, 0, stream.id, bytes(view[:size])))
            view = view[size:]

    def reset(self, stream: Stream) -> None:
        if self._streams.pop(stream.id, None) is not None and self._transport is not None:
            self._send(_frame(_RST_STREAM, 0, stream.id, _CANCEL.to_bytes(4, "big")))

    def close(self) -> None:
        self.open_for_streams = False
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def _send(self, frame: bytes) -> None:
        self._outbox.append(frame)
        if len(self._outbox) == 1:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        frames, self._outbox = self._outbox, []
        if frames and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(frames))

    # frames
    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._header_block is not None and kind != _CONTINUATION:
            raise ValueError("a header block interrupted")
        if kind == _DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == _HEADERS:
            if flags & _PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if flags & _PRIORITY:
                payload = payload[5:]
            self._header_block = (stream_id, flags, bytearray(payload))
            if flags & _END_HEADERS:
                self._on_headers()
        elif kind == _CONTINUATION:
            if self._header_block is None or self._header_block[0] != stream_id:
                raise ValueError("CONTINUATION without HEADERS")
            self._header_block[2].extend(payload)
            if flags & _END_HEADERS:
                self._on_headers()
        elif kind == _SETTINGS:
            if not flags & _ACK:
                self._on_settings(payload)
        elif kind == _PING:
            if not flags & _ACK and self._transport is not None:
                self._send(_frame(_PING, _ACK, 0, payload))
        elif kind == _WINDOW_UPDATE:
            self._on_window_update(stream_id, int.from_bytes(payload[:4], "big"))
        elif kind == _RST_STREAM:
            code = int.from_bytes(payload[:4], "big")
            if (stream := self._streams.pop(stream_id, None)) is not None:
                # REFUSED_STREAM: the app never processed it (RFC 9113 section 8.7).
                status = grpc.StatusCode.UNAVAILABLE if code == _REFUSED_STREAM else grpc.StatusCode.INTERNAL
                stream.on_closed(StreamClosed(status, f"the app reset the stream (HTTP/2 error {code})"))
        elif kind == _GOAWAY:
            self._on_goaway(payload)
        # Other frame kinds (PRIORITY, unknown extensions) are ignored, as RFC 9113 asks.

    def _on_window_update(self, stream_id: int, increment: int) -> None:
        increment &= _MAX_WINDOW
        if stream_id == 0:
            self._send_window += increment
        elif (stream := self._streams.get(stream_id)) is not None:
            stream.send_window += increment
        self._wake_writers()

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._received += len(payload)
        if self._received >= _REFILL_AT and self._transport is not None:
            self._send(_frame(_WINDOW_UPDATE, 0, 0, self._received.to_bytes(4, "big")))
            self._received = 0
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.received += len(payload)
        if stream.received >= _REFILL_AT and self._transport is not None:
            self._send(_frame(_WINDOW_UPDATE, 0, stream_id, stream.received.to_bytes(4, "big")))
            stream.received = 0
        if flags & _PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        stream.on_data(payload)
        if flags & _END_STREAM and self._streams.pop(stream_id, None) is not None:
            ended = StreamClosed(grpc.StatusCode.INTERNAL, "the app ended the stream without a status")
            stream.on_closed(ended)

    def _on_headers(self) -> None:
        assert self._header_block is not None
        stream_id, flags, block = self._header_block
        self._header_block = None
        # Decoded always, even for a stream gone: the table must stay in step with the app's.
        headers = cast("dict[str, str]", dict(self._decoder.decode(bytes(block))))
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        http_status = headers.get(":status")
        if http_status is not None and http_status != "200":
            code = _HTTP_CODES.get(int(http_status), grpc.StatusCode.UNKNOWN)
            self._streams.pop(stream_id, None)
            stream.on_closed(StreamClosed(code, f"the app answered HTTP {http_status}"))
            stream.reset()
            return
        if not flags & _END_STREAM:
            return  # the response headers; the trailers come when the stream ends
        self._streams.pop(stream_id, None)
        status = headers.get("grpc-status")
        code = _CODES.get(int(status), grpc.StatusCode.UNKNOWN) if status else grpc.StatusCode.UNKNOWN
        details = urllib.parse.unquote(headers.get("grpc-message", ""))
        stream.on_closed(StreamClosed(code, details or ("no grpc-status" if status is None else "")))

    def _on_settings(self, payload: bytes) -> None:
        for offset in range(0, len(payload) - len(payload) % 6, 6):
            setting, value = struct.unpack_from(">HI", payload, offset)
            if setting == _SETTINGS_INITIAL_WINDOW_SIZE:
                delta, self._initial_window = value - self._initial_window, value
                for stream in self._streams.values():
                    stream.send_window += delta
            elif setting == _SETTINGS_MAX_FRAME_SIZE:
                self._max_frame = value
        if self._transport is not None:
            self._send(_frame(_SETTINGS, _ACK, 0))
        self._wake_writers()

    def _on_goaway(self, payload: bytes) -> None:
        """The app's server is going away: no new streams here; those it never took fail now."""
        self.open_for_streams = False
        last = int.from_bytes(payload[:4], "big") & _MAX_WINDOW
        for stream_id in [i for i in self._streams if i > last]:
            stream = self._streams.pop(stream_id)
            stream.on_closed(StreamClosed(grpc.StatusCode.UNAVAILABLE, "the app's server is going away"))

    def _wake_writers(self) -> None:
        if self._window_opened is not None and not self._window_opened.done():
            self._window_opened.set_result(None)

    def _abort(self, reason: str) -> None:
        self._error = StreamClosed(grpc.StatusCode.INTERNAL, reason)
        self.close()
