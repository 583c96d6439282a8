"""The Redis client every dq part uses: short timeouts, one quick retry, no long backoff.

A retry absorbs a pooled connection that went stale when Redis restarted; anything longer
would only hide an outage that the consumer must notice and report.
"""

from __future__ import annotations

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

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
