"""The shared deadline watchdog (queue_engine/deadlines.py) in the kq consumer: each call that
awaits is cut at its own deadline."""

from __future__ import annotations

import asyncio

from kq.kq_helpers import FAST_GROUP, committed, create_topics, produce_raw, running, wait_for

from queue_engine import metrics
from queue_engine.kq import KafkaConsumer, KafkaMessage, read_dead_letters
from queue_engine.policy import Backoff, DeliveryPolicy, Outcome

TIMEOUT = 1.5


async def test_awaiting_calls_are_cut_each_at_its_own_deadline_and_one_just_in_time_is_not(
    bootstrap: str, unique: str
) -> None:
    dlq = f"{unique}.dlq"
    create_topics(bootstrap, (unique, 1), (dlq, 1))
    loop = asyncio.get_running_loop()
    started: dict[bytes, float] = {}
    cut_after: dict[bytes, float] = {}
    finished: list[bytes] = []

    async def handle(message: KafkaMessage) -> Outcome:
        value = message.value
        started[value] = loop.time()
        try:
            # "slow-*" hang past the timeout; "in-time" ends shortly before its deadline.
            await asyncio.sleep(0.85 * TIMEOUT if value == b"in-time" else 10)
        except asyncio.CancelledError:
            cut_after[value] = loop.time() - started[value]
            raise
        finished.append(value)
        return Outcome.success()

    # One attempt: a timeout goes to the dead-letter topic with the error it was reported with.
    policy = DeliveryPolicy(max_attempts=1, backoff=Backoff(0.05, 0.1), timeout=TIMEOUT)
    in_flight = metrics.IN_FLIGHT.labels("kafka", unique)
    consumer = KafkaConsumer(
        [bootstrap], unique, unique, handle, offset="first", policy=policy, concurrency=4, extra=FAST_GROUP
    )
    most_in_flight = 0.0

    async def sample() -> None:  # the gauge, written once per loop turn, as a scrape sees it
        nonlocal most_in_flight
        while True:
            most_in_flight = max(most_in_flight, in_flight._value.get())
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    async with running(consumer):
        produce_raw(bootstrap, unique, [(b"a", b"slow-first")])
        await wait_for(lambda: b"slow-first" in started, 20, "the first call")
        await asyncio.sleep(0.3)  # the next calls start later: their deadlines are later too
        produce_raw(bootstrap, unique, [(b"b", b"slow-second"), (b"c", b"in-time")])
        await wait_for(lambda: len(started) == 3, 20, "the later calls")
        await wait_for(lambda: committed(bootstrap, unique, unique, 1)[0] == 3, 30, "commits")
        await wait_for(lambda: in_flight._value.get() == 0, 5, "no call in flight")
    sampler.cancel()

    assert started[b"slow-second"] - started[b"slow-first"] >= 0.2
    assert started[b"in-time"] - started[b"slow-first"] < TIMEOUT  # in flight at the first cut
    for value in (b"slow-first", b"slow-second"):
        assert TIMEOUT - 0.01 <= cut_after[value] <= TIMEOUT + 0.25, (value, cut_after)
    assert most_in_flight == 3  # all three awaited at once: the gauge counted each
    assert b"in-time" not in cut_after
    assert finished == [b"in-time"]
    letters = await read_dead_letters([bootstrap], dlq)
    assert sorted(letter.value for letter in letters) == [b"slow-first", b"slow-second"]
    for letter in letters:
        assert letter.header("x-last-error") == b"handler timed out after 1.5s"
        assert letter.header("x-attempts") == b"1"
