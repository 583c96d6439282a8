"""Whether a user-supplied Redis can lose the records a DelayQueue relies on, as a condition.

The same check the sidecar makes at start (``queue_engine.dq.redis_client.durability_warnings``:
``CONFIG GET maxmemory-policy`` and ``appendonly``), here reported in the DelayQueue's
``RedisDurable`` condition: ``True`` (noeviction and AOF), ``False`` (the risk, in the message)
or ``Unknown`` (unreachable, or a managed Redis that refuses CONFIG). Reported, not refused: a
team may accept the risk knowingly. A provisioned Redis is configured by the operator and not
asked. Blocking (an event loop of its own), for kopf's handler threads.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.exceptions import RedisError

from queue_engine.dq.redis_client import connect_redis, describe_redis_error, durability_warnings
from queue_operator.handlers.conditions import now
from queue_operator.kube import Kube, SecretMissing
from queue_operator.spec import DelayQueueSpec

CONDITION = "RedisDurable"
TIMEOUT = 3.0
RECHECK_SECONDS = 300.0  # settings rarely change: the periodic check asks again this often

# (namespace, name, generation) -> (when, verdict): the periodic check runs every minute (every
# second in tests) and must not open a Redis connection (or wait out a timeout) each time.
_recent: dict[tuple[str, str, int], tuple[float, tuple[str, str, str]]] = {}


def cached_check(
    kube: Kube, namespace: str, name: str, generation: int, spec: DelayQueueSpec
) -> tuple[str, str, str]:
    key = (namespace, name, generation)
    seen = _recent.get(key)
    if seen is not None and time.monotonic() - seen[0] < RECHECK_SECONDS:
        return seen[1]
    verdict = check(kube, namespace, spec)
    if len(_recent) > 10_000:
        _recent.clear()
    _recent[key] = (time.monotonic(), verdict)
    return verdict


def check(kube: Kube, namespace: str, spec: DelayQueueSpec) -> tuple[str, str, str]:
    """(status, reason, message) for the ``RedisDurable`` condition."""
    if spec.redis_provisioned:
        return "True", "Provisioned", "the operator's Redis: AOF on a volume, maxmemory-policy noeviction"
    try:
        if spec.redis_url is not None:
            url = spec.redis_url
        else:
            assert spec.redis_secret_ref is not None
            url = kube.secret_value(namespace, spec.redis_secret_ref.name, spec.redis_secret_ref.key)
    except SecretMissing as exc:
        return "Unknown", "RedisSecretMissing", str(exc)
    try:
        warnings = asyncio.run(_warnings(url))
    except (RedisError, OSError) as exc:
        # The message never carries the URL (it may hold a password).
        return "Unknown", "RedisUnreachable", f"Redis not checked: {describe_redis_error(exc)}"
    if any("could not be read" in w for w in warnings):
        return "Unknown", "RedisSettingsUnknown", "; ".join(warnings)
    if warnings:
        return "False", "RedisMayLoseRecords", "; ".join(warnings)
    return "True", "RedisDurable", "maxmemory-policy noeviction and appendonly yes"


async def _warnings(url: str) -> list[str]:
    redis = connect_redis(url, TIMEOUT, max_connections=1)
    try:
        return await durability_warnings(redis)
    finally:
        await redis.aclose()


def with_condition(
    status: dict[str, Any], previous: Any, generation: int, verdict: tuple[str, str, str]
) -> None:
    """Put the condition into ``status['conditions']`` (its transition time moves on a flip)."""
    state, reason, message = verdict
    old = next((c for c in previous or [] if isinstance(c, dict) and c.get("type") == CONDITION), None)
    since = old.get("lastTransitionTime") if old is not None and old.get("status") == state else None
    entry = {
        "type": CONDITION,
        "status": state,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": since or now(),
    }
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != CONDITION]
    status["conditions"] = [*conditions, entry]
