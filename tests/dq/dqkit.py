"""Helpers for dq tests: a recording handler, and a consumer run as a task."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import greenstalk

from harness.servers import BeanstalkdCluster, RedisServer
from queue_engine.dq import DelayConsumer, DelayJob, DelayProducer, DeliveryPolicy, Outcome
from queue_engine.dq.envelope import Envelope, new_job_id
from queue_engine.policy import Backoff

FAST = DeliveryPolicy(max_attempts=3, backoff=Backoff(initial=0.1, max=0.5, multiplier=2), timeout=5.0)


@dataclass
class Delivery:
    job: DelayJob
    at: float  # wall clock when the handler was called


@dataclass
class Recorder:
    """A handler that records every call; ``answer`` decides the outcome (default success)."""

    answer: Callable[[DelayJob], Awaitable[Outcome]] | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, job: DelayJob) -> Outcome:
        self.deliveries.append(Delivery(job, time.time()))
        self.changed.set()
        if self.answer is not None:
            return await self.answer(job)
        return Outcome.success()

    def ids(self) -> list[str]:
        return [d.job.id for d in self.deliveries]

    def of(self, job_id: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.job.id == job_id]

    async def wait_for(self, predicate: Callable[[], bool], within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {within}s; deliveries: {len(self.deliveries)}")
            self.changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.5))


@dataclass
class DqEnv:
    cluster: BeanstalkdCluster
    redis: RedisServer
    tube: str

    @property
    def nodes(self) -> list[str]:
        return self.cluster.addresses

    def producer(self, **kwargs: object) -> DelayProducer:
        return DelayProducer(self.nodes, self.tube, self.redis.url, **kwargs)  # type: ignore[arg-type]

    @asynccontextmanager
    async def consumer(
        self,
        handler: Recorder,
        *,
        policy: DeliveryPolicy = FAST,
        concurrency: int = 4,
        lease_ttl: float = 2.0,
    ) -> AsyncIterator[DelayConsumer]:
        consumer = DelayConsumer(
            self.nodes,
            self.tube,
            self.redis.url,
            handler,
            policy=policy,
            concurrency=concurrency,
            lease_ttl=lease_ttl,
            connect_timeout=1.0,
        )
        task = asyncio.create_task(consumer.run())
        try:
            yield consumer
        finally:
            await consumer.stop(grace=2.0)
            await asyncio.wait_for(task, 10)

    def put_single_copies(self, per_node: int, due: float) -> list[str]:
        """``per_node`` jobs straight on each node, one copy each (no standby comes up later),
        ready at once and due at ``due``; their ids."""
        sent = []
        for address in self.nodes:
            host, port = address.split(":")
            client = greenstalk.Client((host, int(port)), encoding=None, use=self.tube)
            for _ in range(per_node):
                job_id = new_job_id(due)
                client.put(Envelope(job_id, int(due * 1_000_000), b"x").encode(), ttr=20)
                sent.append(job_id)
            client.close()
        return sent
