"""The two key stores on their own: in flight (409), reuse (422), and the memory store's bounds."""

from __future__ import annotations

import asyncio

import pytest

from harness.servers import RedisServer
from queue_engine.dq.redis_client import connect_redis
from queue_sidecar.publish import idempotency
from queue_sidecar.publish.idempotency import InProgress, KeyReused, MemoryKeys, RedisKeys


@pytest.fixture(autouse=True)
def short_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idempotency, "WAIT_SECONDS", 0.3)


async def test_a_key_in_flight_at_another_sidecar_is_409_until_it_is_kept(
    shared_redis: RedisServer, unique: str
) -> None:
    redis = connect_redis(shared_redis.url, 1.0)
    first, second = RedisKeys(redis, f"dq:{unique}:idem:"), RedisKeys(redis, f"dq:{unique}:idem:")
    try:
        assert await first.claim("k", "request") is None
        with pytest.raises(InProgress, match="still in progress"):
            await second.claim("k", "request")
        await first.keep("k", "request", {"id": "abc"})
        assert await second.claim("k", "request") == {"id": "abc"}
        with pytest.raises(KeyReused, match="different request"):
            await second.claim("k", "another request")
        # A failed publish frees its key at once.
        assert await first.claim("failed", "request") is None
        await first.release("failed")
        assert await second.claim("failed", "request") is None
    finally:
        await redis.aclose()


async def test_a_duplicate_waits_for_the_first_in_the_same_process() -> None:
    keys = MemoryKeys()

    async def slow() -> dict[str, object]:
        await asyncio.sleep(0.1)
        return {"offset": 7}

    answers = await asyncio.gather(
        idempotency.once(keys, "k", "request", slow), idempotency.once(keys, "k", "request", slow)
    )
    assert sorted(answers, key=lambda a: a[1]) == [({"offset": 7}, False), ({"offset": 7}, True)]


async def test_the_memory_store_keeps_the_latest_keys_for_a_while() -> None:
    keys = MemoryKeys(capacity=2, keep_seconds=0.2)
    for key in ("a", "b", "c"):
        assert await keys.claim(key, "r") is None
        await keys.keep(key, "r", {"key": key})
    assert await keys.claim("a", "r") is None  # the oldest was forgotten: published again
    assert await keys.claim("c", "r") == {"key": "c"}
    await asyncio.sleep(0.3)
    assert await keys.claim("c", "r") is None  # expired
