"""Batched Lua calls: each caller gets its own answer; NOSCRIPT resends only what did not run."""

from __future__ import annotations

import asyncio
import time

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
        first = await asyncio.gather(*(records.claim(j, "a", 10, time.time()) for j in ids))
        assert [c.action for c in first] == ["go"] * 50
        await redis.script_flush()  # as after a Redis restart: every script unknown
        # One batch mixing scripts: a claim that already ran must not be run twice (it would
        # answer "busy" to its own holder), nor a done marker lost.
        again = await asyncio.gather(
            records.claim(ids[0], "b", 10, time.time()),
            records.mark_done(ids[1], "a"),
            records.claim("f" * 24, "c", 10, time.time()),
        )
        assert again[0].action == "busy" and again[2].action == "go"
        assert (await records.record(ids[1]))["state"] == "done"
        assert (await records.claim(ids[1], "d", 10, time.time())).action == "done"
        assert (await records.record("f" * 24))["attempts"] == "1"
    finally:
        await records.aclose()
        await redis.aclose()
