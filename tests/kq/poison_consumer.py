"""A consumer process for the poison-message test: a message with value b"poison" kills it.

Usage: python poison_consumer.py BOOTSTRAP TOPIC GROUP OUTFILE [batch]
Each call appends "offset attempt value" to OUTFILE before it answers (with ``batch``: a batch
handler, and each line ends with the size of the message's batch); the poison message's call
then SIGKILLs its own process (no stop, no commit, no hand-over: like a segfault or the OOM
killer). Other messages take a moment, so they are in the handler when the poison kills.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence

from queue_engine.kq import KafkaConsumer, KafkaMessage
from queue_engine.kq.config import FAST_GROUP
from queue_engine.policy import Backoff, DeliveryPolicy, Outcome

POLICY = DeliveryPolicy(max_attempts=3, backoff=Backoff(initial=0.05, max=0.2, multiplier=2), timeout=10)


async def main(bootstrap: str, topic: str, group: str, outfile: str, mode: str = "single") -> None:
    fd = os.open(outfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    async def handle(message: KafkaMessage) -> Outcome:
        os.write(fd, f"{message.offset} {message.attempt} {message.value.decode()}\n".encode())
        if message.value == b"poison":
            os.kill(os.getpid(), signal.SIGKILL)
        await asyncio.sleep(0.3)
        return Outcome.success()

    async def handle_batch(messages: Sequence[KafkaMessage]) -> Sequence[Outcome]:
        for m in messages:
            os.write(fd, f"{m.offset} {m.attempt} {m.value.decode()} {len(messages)}\n".encode())
        if any(m.value == b"poison" for m in messages):
            os.kill(os.getpid(), signal.SIGKILL)
        await asyncio.sleep(0.3)
        return [Outcome.success()] * len(messages)

    if mode == "batch":
        consumer = KafkaConsumer(
            [bootstrap],
            topic,
            group,
            batch_handler=handle_batch,
            max_batch_wait=0.5,  # the first batch holds all five: the poison's bystanders
            offset="first",
            concurrency=4,
            policy=POLICY,
            extra=FAST_GROUP,
        )
    else:
        consumer = KafkaConsumer(
            [bootstrap], topic, group, handle, offset="first", concurrency=4, policy=POLICY, extra=FAST_GROUP
        )
    await consumer.run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
