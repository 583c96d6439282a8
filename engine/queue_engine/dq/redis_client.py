"""The Redis client every dq part uses: short timeouts, one quick retry, no long backoff.

A retry absorbs a pooled connection that went stale when Redis restarted; anything longer
would only hide an outage that the consumer must notice and report.
"""

from __future__ import annotations

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from queue_engine.errors import ConfigError


def connect_redis(url: str, timeout: float, *, max_connections: int = 1024) -> Redis:
    # A pool that never makes callers wait: waiting in redis-py's blocking pool can lose a
    # wakeup when a waiter is cancelled (asyncio.Condition before Python 3.13).
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            "redis url must start with redis://, rediss:// or unix://, e.g. redis://127.0.0.1:6379/0"
        )
    try:
        pool = ConnectionPool.from_url(
            url,
            max_connections=max_connections,
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
