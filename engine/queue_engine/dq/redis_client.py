"""The Redis client every dq part uses: short timeouts, one quick retry, no long backoff.

A retry absorbs a pooled connection that went stale when Redis restarted; anything longer
would only hide an outage that the consumer must notice and report.

The pool is bounded and callers past the bound wait their turn: a burst (hundreds of held
copies asking Redis at the same instant) is not an outage. A wait gives up only after the
command timeout, when the connections ahead really are stuck on a Redis that does not answer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from queue_engine.errors import ConfigError

DEFAULT_POOL = 64


class _Turns:
    """Up to ``size`` holders; others wait in order. Cancellation never loses a turn
    (asyncio.Condition, which redis-py's BlockingConnectionPool uses, can before Python 3.13)."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: collections.deque[asyncio.Future[bool]] = collections.deque()

    async def take(self, within: float) -> bool:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        timer = asyncio.get_running_loop().call_later(within, _expire, fut)
        try:
            got = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result():
                self.give()  # handed a turn we will not use: pass it on
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)
            raise
        finally:
            timer.cancel()
        if not got:
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)
        return got

    def give(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(True)
                return
        self._free += 1


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class WaitingPool(ConnectionPool):
    """A connection pool where callers past ``max_connections`` wait instead of failing."""

    def __init__(self, *, wait_timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wait_timeout = wait_timeout
        self._turns = _Turns(self.max_connections)
        self._holding: set[int] = set()  # ids of connections handed out with a turn

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if not await self._turns.take(self._wait_timeout):
            raise RedisConnectionError(
                f"no Redis connection came free within {self._wait_timeout:g}s "
                f"({self.max_connections} commands in progress)"
            )
        try:
            connection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except BaseException:
            self._turns.give()
            raise
        self._holding.add(id(connection))
        return connection

    async def release(self, connection: Any) -> None:
        try:
            await super().release(connection)
        finally:
            if id(connection) in self._holding:
                self._holding.discard(id(connection))
                self._turns.give()


def connect_redis(url: str, timeout: float, *, max_connections: int = DEFAULT_POOL) -> Redis:
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            "redis url must start with redis://, rediss:// or unix://, e.g. redis://127.0.0.1:6379/0"
        )
    try:
        pool = WaitingPool.from_url(
            url,
            max_connections=max_connections,
            wait_timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        return Redis(connection_pool=pool)
    except ValueError as exc:
        raise ConfigError(f"redis url is not valid: {exc}") from None


def describe_redis_error(exc: BaseException) -> str:
    # redis-py names host and port in its errors, never the URL with its password.
    return f"{type(exc).__name__}: {exc}"


async def durability_warnings(redis: Redis) -> list[str]:
    """What in this Redis's settings could lose revocations and done markers; [] when safe.

    Correctness rests on Redis keeping those records: under a ``volatile-*``/``allkeys-*``
    eviction policy or without persistence, a revoked job can run or a done one run again.
    Reported, not refused: a team may accept the risk knowingly.
    """
    try:
        policy = (await redis.config_get("maxmemory-policy")).get("maxmemory-policy")
        appendonly = (await redis.config_get("appendonly")).get("appendonly")
    except ResponseError:  # CONFIG renamed or disabled (managed Redis): say it was not checked
        return [
            "the Redis settings could not be read (CONFIG is disabled): eviction and persistence not checked"
        ]
    warnings = []
    if policy not in (None, "noeviction"):
        warnings.append(
            f"redis maxmemory-policy is {policy}: it may evict revocations and done markers "
            "(a revoked job could run, a finished one run again); set noeviction"
        )
    if appendonly != "yes":
        warnings.append(
            "redis appendonly is off: a Redis restart loses revocations and done markers; "
            "set appendonly yes (AOF)"
        )
    return warnings
