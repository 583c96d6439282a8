"""Blocking forms of the dq producer and admin, for plain scripts (no event loop of your own)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta
from types import TracebackType

from queue_engine.dq.admin import BuriedJob, DelayAdmin, NodeStats
from queue_engine.dq.producer import DelayProducer


class SyncDelayProducer:
    """:class:`DelayProducer` with blocking methods; use it as a context manager."""

    def __init__(
        self,
        nodes: Sequence[str],
        tube: str,
        redis_url: str,
        *,
        max_job_bytes: int = 65535,
        connect_timeout: float = 3.0,
        name: str | None = None,
    ) -> None:
        self._runner = asyncio.Runner()
        self._producer = self._runner.run(
            _make_producer(
                nodes,
                tube=tube,
                redis_url=redis_url,
                max_job_bytes=max_job_bytes,
                connect_timeout=connect_timeout,
                name=name,
            )
        )

    @property
    def max_body_bytes(self) -> int:
        return self._producer.max_body_bytes

    def delay(self, body: bytes, delay: float | timedelta) -> str:
        return self._runner.run(self._producer.delay(body, delay))

    def at(self, body: bytes, when: datetime) -> str:
        return self._runner.run(self._producer.at(body, when))

    def revoke(self, job_id: str) -> None:
        self._runner.run(self._producer.revoke(job_id))

    def close(self) -> None:
        try:
            self._runner.run(self._producer.close())
        finally:
            self._runner.close()

    def __enter__(self) -> SyncDelayProducer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class SyncDelayAdmin:
    """:class:`DelayAdmin` with blocking methods; use it as a context manager."""

    def __init__(self, nodes: Sequence[str], tube: str, redis_url: str, *, name: str | None = None) -> None:
        self._runner = asyncio.Runner()
        self._admin = self._runner.run(_make_admin(nodes, tube, redis_url, name))

    def stats(self) -> list[NodeStats]:
        return self._runner.run(self._admin.stats())

    def kick(self, bound: int = 100) -> int:
        return self._runner.run(self._admin.kick(bound))

    def buried(self, limit: int = 20) -> list[BuriedJob]:
        return self._runner.run(self._admin.buried(limit))

    def close(self) -> None:
        try:
            self._runner.run(self._admin.close())
        finally:
            self._runner.close()

    def __enter__(self) -> SyncDelayAdmin:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# Built inside the runner's loop, so the Redis client belongs to the loop that uses it.
async def _make_producer(
    nodes: Sequence[str],
    *,
    tube: str,
    redis_url: str,
    max_job_bytes: int,
    connect_timeout: float,
    name: str | None,
) -> DelayProducer:
    return DelayProducer(
        nodes, tube, redis_url, max_job_bytes=max_job_bytes, connect_timeout=connect_timeout, name=name
    )


async def _make_admin(nodes: Sequence[str], tube: str, redis_url: str, name: str | None) -> DelayAdmin:
    return DelayAdmin(nodes, tube, redis_url, name=name)
