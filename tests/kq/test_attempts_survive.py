"""Attempt counts survive restarts and rebalances (SPEC 4): a poison message that kills the
process is dead-lettered after maxAttempts deaths, and its bystanders are not."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kq.kq_helpers import (
    FAST_GROUP,
    Recorder,
    committed,
    create_topics,
    produce_raw,
    read_raw,
    running,
    wait_for,
)

from queue_engine.kq import KafkaConsumer, KafkaMessage
from queue_engine.policy import Backoff, DeliveryPolicy, Outcome

POISON_CONSUMER = Path(__file__).with_name("poison_consumer.py")


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line] if path.exists() else []


def _calls(path: Path) -> list[tuple[int, int, str]]:
    return [(int(o), int(a), v) for o, a, v, *_ in _lines(path)]


@pytest.mark.parametrize("mode", ["single", "batch"])
async def test_a_message_that_kills_the_process_is_dead_lettered_after_max_attempts_deaths(
    bootstrap: str, unique: str, tmp_path: Path, mode: str
) -> None:
    create_topics(bootstrap, (unique, 1), (f"{unique}.dlq", 1))
    values = ["a", "b", "poison", "c", "d"]
    produce_raw(
        bootstrap, unique, [(f"k{i}".encode(), v.encode()) for i, v in enumerate(values)], partition=0
    )
    outfile = tmp_path / "calls.txt"
    argv = [sys.executable, str(POISON_CONSUMER), bootstrap, unique, unique, str(outfile), mode]

    deaths = 0
    survivor = None
    for _ in range(6):  # maxAttempts (3) deaths, then a run that dead-letters and goes on
        proc = await asyncio.to_thread(subprocess.Popen, argv)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if committed(bootstrap, unique, unique, 1)[0] == len(values):
                break
            await asyncio.sleep(0.2)
        if proc.poll() is None:
            survivor = proc
            break
        deaths += 1
    try:
        assert survivor is not None, f"still dying after {deaths} runs: {_calls(outfile)}"
        assert deaths == 3, _calls(outfile)
        await wait_for(lambda: committed(bootstrap, unique, unique, 1)[0] == len(values), 30, "the commit")
    finally:
        if survivor is not None:
            survivor.kill()
            survivor.wait(10)

    calls = _calls(outfile)
    poison_calls = [attempt for offset, attempt, value in calls if value == "poison"]
    # The first death happened beside a and b, so poison's second call is its attempt 2, made alone.
    assert poison_calls == [1, 2, 3], calls
    print(
        "CALLS",
        calls,
        [(r.offset(), r.value()) for r in read_raw(bootstrap, f"{unique}.dlq", 1, 5, timeout=3)],
    )
    handled = {value for _, _, value in calls if value != "poison"}
    assert handled == {"a", "b", "c", "d"}, calls
    if mode == "batch":
        # Its bystanders were in its first batch; after that first death it was called alone.
        sizes = [int(line[3]) for line in _lines(outfile) if line[2] == "poison"]
        assert sizes[0] > 1 and sizes[1:] == [1, 1], _lines(outfile)

    dead = read_raw(bootstrap, f"{unique}.dlq", 1, 1)
    assert [r.value() for r in dead] == [b"poison"]  # bystanders were never dead-lettered
    headers = dict(dead[0].headers() or [])
    assert headers["x-attempts"] == b"3"
    assert headers["x-original-offset"] == b"2"
    assert b"process ended" in headers["x-last-error"]
    print(f"calls: {calls}; dead-letter headers: {headers}")


async def test_a_rebalance_keeps_the_attempt_count(bootstrap: str, unique: str) -> None:
    create_topics(bootstrap, (unique, 2), (f"{unique}.dlq", 1))
    produce_raw(bootstrap, unique, [(b"k", b"fails")], partition=0)
    policy = DeliveryPolicy(max_attempts=4, backoff=Backoff(initial=1.0, max=1.0, multiplier=1), timeout=5)
    seen_a = Recorder(lambda m: Outcome.retry("nope"))
    seen_b = Recorder(lambda m: Outcome.retry("nope"))
    a = KafkaConsumer([bootstrap], unique, unique, seen_a, offset="first", policy=policy, extra=FAST_GROUP)
    b = KafkaConsumer([bootstrap], unique, unique, seen_b, offset="first", policy=policy, extra=FAST_GROUP)
    async with running(a):
        await wait_for(lambda: len(seen_a.seen) >= 2, 30, "two failed attempts on a")
        await a.stop(grace=5)  # a hands partition 0 over (a clean revoke)
    async with running(b):
        await wait_for(lambda: committed(bootstrap, unique, unique, 2)[0] == 1, 40, "the dead letter")
    attempts = [m.attempt for m in seen_a.seen + seen_b.seen]
    assert attempts == [1, 2, 3, 4], attempts  # b went on from a's count, not from 1
    dead = read_raw(bootstrap, f"{unique}.dlq", 1, 1)
    assert [r.value() for r in dead] == [b"fails"]


async def test_two_members_rebalancing_keep_the_attempt_count(bootstrap: str, unique: str) -> None:
    create_topics(bootstrap, (unique, 2), (f"{unique}.dlq", 1))
    produce_raw(bootstrap, unique, [(b"k", b"fails")], partition=0)
    policy = DeliveryPolicy(max_attempts=5, backoff=Backoff(initial=0.5, max=0.5, multiplier=1), timeout=5)
    seen: list[KafkaMessage] = []

    async def fail(message: KafkaMessage) -> Outcome:
        seen.append(message)
        return Outcome.retry("nope")

    a = KafkaConsumer([bootstrap], unique, unique, fail, offset="first", policy=policy, extra=FAST_GROUP)
    b = KafkaConsumer([bootstrap], unique, unique, fail, offset="first", policy=policy, extra=FAST_GROUP)
    async with running(a):
        await wait_for(lambda: len(seen) >= 2, 30, "two failed attempts")
        async with running(b, assigned=False):  # b joins: the group rebalances
            await wait_for(lambda: bool(b.assigned_partitions), 40, "b's share")
            await wait_for(lambda: committed(bootstrap, unique, unique, 2)[0] == 1, 40, "the dead letter")
    attempts = [m.attempt for m in seen]
    assert attempts == sorted(attempts) and attempts[-1] == 5, attempts
    assert len(attempts) <= 6, attempts  # at most the call abandoned at the revoke comes twice
    assert [r.value() for r in read_raw(bootstrap, f"{unique}.dlq", 1, 1)] == [b"fails"]
