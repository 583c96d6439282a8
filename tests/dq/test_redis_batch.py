"""Batched Lua calls: each caller gets its own answer; NOSCRIPT resends only what did not run."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from harness.servers import RedisServer
from queue_engine.dq.records import JobRecords
from queue_engine.dq.redis_client import connect_redis


async def test_batched_claims_answer_each_caller_and_survive_a_script_flush(
    redis_server: RedisServer, unique: str
) -> None:
    redis = connect_redis(redis_server.url, 2.0)
    records = JobRecords(redis, unique, batched=True)
    try:
        ids = [f"{i:024x}" for i in range(50)]
        first = await asyncio.gather(*(records.claim(j, "a", 10, time.time(), 5) for j in ids))
        assert [c.action for c in first] == ["go"] * 50
        await redis.script_flush()  # as after a Redis restart: every script unknown
        # One batch mixing scripts: a claim that already ran must not be run twice (it would
        # answer "busy" to its own holder), nor a done marker lost.
        again = await asyncio.gather(
            records.claim(ids[0], "b", 10, time.time(), 5),
            records.mark_done(ids[1], "a"),
            records.claim("f" * 24, "c", 10, time.time(), 5),
        )
        assert again[0].action == "busy" and again[2].action == "go"
        assert (await records.record(ids[1]))["state"] == "done"
        assert (await records.claim(ids[1], "d", 10, time.time(), 5)).action == "done"
        assert (await records.record("f" * 24))["attempts"] == "1"
    finally:
        await records.aclose()
        await redis.aclose()


async def _evalsha_calls(redis: Redis) -> int:
    stats = cast(dict[str, Any], await redis.info("commandstats"))
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_calls_made_while_batches_are_on_their_way_leave_together(
    redis_server: RedisServer, unique: str
) -> None:
    """One call per loop iteration for 100 iterations: without a bound on the batches in flight
    that is 100 commands; with it, the calls made during a round trip share the next one."""
    redis = connect_redis(redis_server.url, 2.0)
    records = JobRecords(redis, unique, batched=True)
    try:
        before = await _evalsha_calls(redis)
        claims = []
        for i in range(100):
            claims.append(asyncio.ensure_future(records.claim(f"{i:024x}", "a", 10, time.time(), 5)))
            await asyncio.sleep(0)
        answers = await asyncio.gather(*claims)
        assert [(c.action, c.attempt) for c in answers] == [("go", 1)] * 100  # each its own answer
        sent = await _evalsha_calls(redis) - before
        assert sent < 60, f"{sent} commands for 100 calls"
    finally:
        await records.aclose()
        await redis.aclose()


async def test_a_batched_argument_may_not_carry_the_separators(
    redis_server: RedisServer, unique: str
) -> None:
    redis = connect_redis(redis_server.url, 2.0)
    records = JobRecords(redis, unique, batched=True)
    try:
        with pytest.raises(ValueError, match="may not contain"):
            await records.claim("0" * 24, "to\x1fken", 10, time.time(), 5)
        assert (await records.claim("0" * 24, "token", 10, time.time(), 5)).action == "go"
    finally:
        await records.aclose()
        await redis.aclose()
