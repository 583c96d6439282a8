"""Idempotent publishing: a retry with the same ``Idempotency-Key`` gets the first result.

- DelayQueue: the key is kept in the queue's own Redis (``dq:{tube}:idem:<sha256 of the key>``),
  so every sidecar of every pod publishing to that queue sees it, for :data:`KEEP_SECONDS`.
- KafkaQueue: the key is kept in this sidecar process's memory (an LRU of at most
  :data:`MEMORY_KEYS` keys, each for :data:`KEEP_SECONDS`): a retry that reaches another pod,
  or this one after a restart, publishes again.

Only a success is kept: a failed publish stored nothing, so its retry must really try again.
While the first request with a key is still in flight, a duplicate waits for it up to
:data:`WAIT_SECONDS` and then gets :class:`InProgress` (409). The same key with a different
request (body, delay/at, Kafka key or headers) is :class:`KeyReused` (422).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from queue_engine.dq.redis_client import describe_redis_error
from queue_engine.errors import InvalidRequest, QueueError, Unavailable

KEEP_SECONDS = 24 * 3600
# A pending marker frees itself after this long, should its sidecar die mid-publish; a publish
# never takes this long (its own timeouts are seconds).
PENDING_SECONDS = 60
WAIT_SECONDS = 5.0
POLL_SECONDS = 0.05
MAX_KEY_LENGTH = 255
MEMORY_KEYS = 10_000
log = logging.getLogger(__name__)

Result = dict[str, Any]  # what the publish returned, as its JSON answer


class KeyReused(QueueError):
    """The key was used for a different request: answered 422."""


class InProgress(QueueError):
    """The first request with this key is still being published: answered 409."""


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH or not (key.isascii() and key.isprintable()):
        raise InvalidRequest(
            f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable ASCII characters (a UUID is a good choice)"
        )
    return key


def fingerprint(*parts: bytes | str | None) -> str:
    """A digest of the request: the same key must come with the same request."""
    digest = hashlib.sha256()
    for part in parts:
        data = b"\xff" if part is None else part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


class KeyStore(Protocol):
    async def claim(self, key: str, request: str) -> Result | None:
        """None: this request is the first, go ahead; else the first request's result."""

    async def keep(self, key: str, request: str, result: Result) -> None: ...

    async def release(self, key: str) -> None:
        """The publish failed: the next request with this key tries again."""


async def once(
    store: KeyStore, key: str | None, request: str, publish: Callable[[], Awaitable[Result]]
) -> tuple[Result, bool]:
    """Publish unless ``key`` was already published; the result and whether it was replayed."""
    if key is None:
        return await publish(), False
    key = check_key(key)
    first = await store.claim(key, request)
    if first is not None:
        return first, True
    try:
        result = await publish()
    except BaseException:
        await store.release(key)
        raise
    await store.keep(key, request, result)
    return result, False


def _reused(key: str) -> KeyReused:
    return KeyReused(
        f"Idempotency-Key {key!r} was already used for a different request (body, delay/at, "
        "Kafka key or headers differ); use a new key for a new message"
    )


def _in_progress(key: str) -> InProgress:
    return InProgress(
        f"a publish with Idempotency-Key {key!r} is still in progress; retry in a moment to get its result"
    )


# Delete the pending marker only if it is still ours (not a result, not another's marker).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisKeys:
    """Keys of one DelayQueue, in its Redis; shared by every sidecar publishing to it."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._release = redis.register_script(_RELEASE)
        self._pending: dict[str, str] = {}  # key -> our pending marker

    def _name(self, key: str) -> str:
        return self._prefix + hashlib.sha256(key.encode()).hexdigest()

    async def claim(self, key: str, request: str) -> Result | None:
        marker = json.dumps({"request": request, "pending": secrets.token_hex(8)})
        deadline = time.monotonic() + WAIT_SECONDS
        try:
            while True:
                if await self._redis.set(self._name(key), marker, nx=True, ex=PENDING_SECONDS):
                    self._pending[key] = marker
                    return None
                raw = await self._redis.get(self._name(key))
                if raw is not None:
                    stored = json.loads(raw)
                    if stored.get("request") != request:
                        raise _reused(key)
                    if "result" in stored:
                        result: Result = stored["result"]
                        return result
                if time.monotonic() > deadline:
                    raise _in_progress(key)
                await asyncio.sleep(POLL_SECONDS)
        except RedisError as exc:
            raise Unavailable(
                f"Idempotency-Key not checked, nothing published: the queue's redis is unreachable "
                f"({describe_redis_error(exc)}); try again"
            ) from None

    async def keep(self, key: str, request: str, result: Result) -> None:
        self._pending.pop(key, None)
        value = json.dumps({"request": request, "result": result})
        try:
            await self._redis.set(self._name(key), value, ex=KEEP_SECONDS)
        except RedisError as exc:
            # Published all the same, so the answer is the success: a retry within
            # PENDING_SECONDS gets 409, a later one publishes again.
            log.warning(
                "Idempotency-Key not kept: redis unreachable; a retry may publish again",
                extra={"error": describe_redis_error(exc), "result": result},
            )

    async def release(self, key: str) -> None:
        marker = self._pending.pop(key, None)
        if marker is None:
            return
        with contextlib.suppress(RedisError):  # else the marker frees itself after PENDING_SECONDS
            await self._release(keys=[self._name(key)], args=[marker])


@dataclass
class _Entry:
    request: str
    expires: float
    result: Result | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)


class MemoryKeys:
    """Keys of one KafkaQueue, in this process: an LRU of at most ``capacity`` keys."""

    def __init__(self, capacity: int = MEMORY_KEYS, keep_seconds: float = KEEP_SECONDS) -> None:
        self._capacity = capacity
        self._keep = keep_seconds
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    async def claim(self, key: str, request: str) -> Result | None:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            entry = self._entries.get(key)
            if entry is not None and entry.expires < time.monotonic():
                del self._entries[key]
                entry = None
            if entry is None:
                self._entries[key] = _Entry(request, time.monotonic() + PENDING_SECONDS)
                while len(self._entries) > self._capacity:
                    self._entries.popitem(last=False)
                return None
            if entry.request != request:
                raise _reused(key)
            self._entries.move_to_end(key)
            if entry.result is not None:
                return entry.result
            try:
                await asyncio.wait_for(entry.settled.wait(), deadline - time.monotonic())
            except TimeoutError:
                raise _in_progress(key) from None

    async def keep(self, key: str, request: str, result: Result) -> None:
        entry = self._entries.get(key)
        if entry is None or entry.request != request:
            entry = self._entries[key] = _Entry(request, 0.0)
        entry.result = result
        entry.expires = time.monotonic() + self._keep
        entry.settled.set()

    async def release(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.result is None:
            del self._entries[key]
            entry.settled.set()
