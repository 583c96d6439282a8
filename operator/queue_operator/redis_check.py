"""Whether a user-supplied Redis can lose the records a DelayQueue relies on, as a condition.

The same check the sidecar makes at start (``queue_engine.dq.redis_client.durability_warnings``:
``CONFIG GET maxmemory-policy`` and ``appendonly``), here reported in the DelayQueue's
``RedisDurable`` condition: ``True`` (noeviction and AOF), ``False`` (the risk, in the message)
or ``Unknown`` (unreachable, or a managed Redis that refuses CONFIG). Reported, not refused: a
team may accept the risk knowingly. A provisioned Redis is configured by the operator and not
asked.

Asking a Redis can take seconds (a name that does not resolve waits out the resolver, an
unreachable host the connect timeout), so it never happens on a handler's path: handlers read
the last verdict (``Unknown/Checking`` before the first) and :class:`RedisChecks` asks in the
background, once per Redis however many queues share it, then lets each waiting queue refresh
its status. A thousand queues on one unreachable Redis cost one check, not a thousand.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from redis.exceptions import RedisError

from queue_engine.dq.redis_client import connect_redis, describe_redis_error, durability_warnings
from queue_operator.handlers.conditions import now
from queue_operator.kube import Kube, SecretMissing
from queue_operator.spec import DelayQueueSpec

CONDITION = "RedisDurable"
TIMEOUT = 3.0  # each Redis round trip
DEADLINE = 10.0  # the whole check, resolver waits included
RECHECK_SECONDS = 300.0  # settings rarely change: asked again this often
RETRY_SECONDS = 60.0  # a Redis that could not be asked is asked again sooner
WORKERS = 2  # checks at once; more queues than Redis servers is the common case

Verdict = tuple[str, str, str]  # (status, reason, message)
PROVISIONED: Verdict = (
    "True",
    "Provisioned",
    "the operator's Redis: AOF on a volume, maxmemory-policy noeviction",
)
CHECKING: Verdict = ("Unknown", "Checking", "asking Redis for its maxmemory-policy and appendonly settings")

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Seen:
    verdict: Verdict
    expires: float  # time.monotonic()


class RedisChecks:
    """The last verdict per Redis, and the background checks that renew it.

    Keyed by a hash of the URL: the URL may carry a password and is kept only as long as its
    check runs.
    """

    def __init__(self, workers: int = WORKERS) -> None:
        self._workers = workers
        self._lock = threading.Lock()
        self._seen: dict[str, _Seen] = {}
        self._running: set[str] = set()
        self._waiting: dict[str, dict[tuple[str, str], Callable[[], None]]] = {}
        self._pool: ThreadPoolExecutor | None = None  # made at the first user-supplied Redis

    def verdict(
        self, kube: Kube, namespace: str, name: str, spec: DelayQueueSpec, then: Callable[[], None]
    ) -> Verdict:
        """The current verdict for this queue's Redis, without waiting for Redis.

        When it is missing or stale a check starts (one per Redis), and ``then`` is called once
        it has a new verdict, so the queue can report it.
        """
        if spec.redis_provisioned:
            return PROVISIONED
        try:
            url = redis_url(kube, namespace, spec)
        except SecretMissing as exc:
            return "Unknown", "RedisSecretMissing", str(exc)
        key = hashlib.sha256(url.encode()).hexdigest()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and time.monotonic() < seen.expires:
                return seen.verdict
            self._waiting.setdefault(key, {})[(namespace, name)] = then
            if key not in self._running:
                self._running.add(key)
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="redis-check")
                self._pool.submit(self._check, key, url)
            return CHECKING if seen is None else seen.verdict

    def _check(self, key: str, url: str) -> None:
        try:
            verdict = ask(url)
        except Exception as exc:  # a failed check is Unknown, never a dead worker
            verdict = "Unknown", "RedisUnreachable", f"Redis not checked: {type(exc).__name__}"
        known = verdict[1] not in {"RedisUnreachable", "RedisSettingsUnknown"}
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen.clear()
            wait = RECHECK_SECONDS if known else RETRY_SECONDS
            self._seen[key] = _Seen(verdict, time.monotonic() + wait)
            self._running.discard(key)
            waiting = self._waiting.pop(key, {})
        for (namespace, name), then in waiting.items():
            try:
                then()
            except Exception:
                logger.exception("reporting the Redis check on DelayQueue %s/%s failed", namespace, name)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def redis_url(kube: Kube, namespace: str, spec: DelayQueueSpec) -> str:
    if spec.redis_url is not None:
        return spec.redis_url
    assert spec.redis_secret_ref is not None
    return kube.secret_value(namespace, spec.redis_secret_ref.name, spec.redis_secret_ref.key)


def ask(url: str) -> Verdict:
    """Ask one Redis (blocking, up to ``DEADLINE``): (status, reason, message)."""
    try:
        warnings = asyncio.run(asyncio.wait_for(_warnings(url), DEADLINE))
    except (RedisError, OSError, TimeoutError) as exc:
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
