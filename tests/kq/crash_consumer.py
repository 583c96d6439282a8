"""A consumer process for the crash test: records each handled message, then gets SIGKILLed.

Usage: python crash_consumer.py BOOTSTRAP TOPIC GROUP OUTFILE
Each handled message appends "partition offset" to OUTFILE before the handler returns success,
so a line means "the app did the work"; whether the offset got committed is the engine's job.
"""

from __future__ import annotations

import asyncio
import os
import sys

from queue_engine.kq import KafkaConsumer, KafkaMessage
from queue_engine.kq.config import FAST_GROUP
from queue_engine.policy import Outcome


async def main(bootstrap: str, topic: str, group: str, outfile: str) -> None:
    fd = os.open(outfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    async def handle(message: KafkaMessage) -> Outcome:
        await asyncio.sleep(0.01)
        os.write(fd, f"{message.partition} {message.offset}\n".encode())
        return Outcome.success()

    await KafkaConsumer(
        [bootstrap], topic, group, handle, offset="first", concurrency=4, extra=FAST_GROUP
    ).run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
