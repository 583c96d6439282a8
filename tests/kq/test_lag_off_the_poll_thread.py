"""lag() never runs on the poll thread and never joins the group; poll-thread commands fail
fast once the thread is gone (issue 10, item 8)."""

from __future__ import annotations

import asyncio
import time

import pytest
from kq.kq_helpers import FAST_GROUP, Recorder, committed, create_topics, produce_raw, running, wait_for

from queue_engine.errors import Unavailable
from queue_engine.kq import KafkaConsumer, group_lag
from queue_engine.kq.poll_commands import PollCommands


def test_a_command_queued_to_an_exited_poll_thread_fails_at_once() -> None:
    commands = PollCommands("q")
    queued = commands.submit(lambda c: "never run")
    commands.close()  # the poll thread exits: what it left is failed, not forgotten
    with pytest.raises(Unavailable):
        queued.result(0)
    started = time.monotonic()
    with pytest.raises(Unavailable):
        commands.submit(lambda c: "late").result(0)
    assert time.monotonic() - started < 0.1


async def test_lag_probes_neither_rebalance_the_group_nor_wait_for_the_poll_thread(
    bootstrap: str, unique: str
) -> None:
    create_topics(bootstrap, (unique, 2))
    produce_raw(bootstrap, unique, [(f"k{i}".encode(), b"x") for i in range(40)])
    seen = Recorder()
    consumer = KafkaConsumer([bootstrap], unique, unique, seen, offset="first", extra=FAST_GROUP)
    async with running(consumer):
        await wait_for(lambda: sum(committed(bootstrap, unique, unique, 2).values()) == 40, 40, "commits")
        generation = consumer._generation  # assignments so far (poll thread's count)
        for _ in range(5):
            assert await consumer.lag() == {0: 0, 1: 0}
            assert await group_lag([bootstrap], unique, unique) == {0: 0, 1: 0}  # queuectl's way
        produce_raw(bootstrap, unique, [(b"k0", b"y")] * 5)
        await wait_for(lambda: len(seen.seen) == 45, 20, "five more")
        await asyncio.sleep(1.5)  # a rebalance caused by the probes would show by now
        assert consumer._generation == generation, "a lag probe made the group rebalance"
        assert consumer.assigned_partitions == [0, 1]
    # Stopped: every partition of the topic, from the group's committed offsets.
    assert await consumer.lag() == {0: 0, 1: 0}
    assert len(seen.seen) == 45  # nothing was delivered twice: no rebalance, no lost commit
