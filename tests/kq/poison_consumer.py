"""A consumer process for the poison-message test: a message with value b"poison" kills it.

Usage: python poison_consumer.py BOOTSTRAP TOPIC GROUP OUTFILE
Each call appends "offset attempt value" to OUTFILE before it answers; the poison message's call
then SIGKILLs its own process (no stop, no commit, no hand-over: like a segfault or the OOM
killer). Other messages take a moment, so they are in the handler when the poison kills.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from queue_engine.kq import KafkaConsumer, KafkaMessage
from queue_engine.kq.config import FAST_GROUP
from queue_engine.policy import Backoff, DeliveryPolicy, Outcome

POLICY = DeliveryPolicy(max_attempts=3, backoff=Backoff(initial=0.05, max=0.2, multiplier=2), timeout=10)


async def main(bootstrap: str, topic: str, group: str, outfile: str) -> None:
    fd = os.open(outfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    async def handle(message: KafkaMessage) -> Outcome:
        os.write(fd, f"{message.offset} {message.attempt} {message.value.decode()}\n".encode())
        if message.value == b"poison":
            os.kill(os.getpid(), signal.SIGKILL)
        await asyncio.sleep(0.3)
        return Outcome.success()

    await KafkaConsumer(
        [bootstrap], topic, group, handle, offset="first", concurrency=4, policy=POLICY, extra=FAST_GROUP
    ).run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
