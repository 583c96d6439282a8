"""Is the app accepting connections? The sidecar waits for it before taking any message."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import Gauge

log = logging.getLogger(__name__)

APP_UP = Gauge("queue_sidecar_app_up", "1 when the app accepts connections on its port, else 0")


class AppProbe:
    """Tracks whether ``host:port`` accepts TCP connections.

    ``up`` is refreshed by :meth:`watch` and set to False at once by the delivery path when a
    connection is refused, so /readyz turns false within a request, not a probe period.
    """

    def __init__(self, host: str, port: int, *, interval: float = 1.0) -> None:
        self.host = host
        self.port = port
        self.interval = interval
        self._up = False
        self._changed = asyncio.Event()
        APP_UP.set(0)

    @property
    def up(self) -> bool:
        return self._up

    def mark(self, up: bool) -> None:
        if up != self._up:
            log.info("app %s", "is up" if up else "is down", extra={"app": f"{self.host}:{self.port}"})
        self._up = up
        APP_UP.set(1 if up else 0)
        self._changed.set()

    async def check(self) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.interval)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def wait_until_up(self, poll: float = 0.1) -> None:
        """Return once the app accepts a connection (polls quickly: start-up latency matters)."""
        logged = False
        while not await self.check():
            if not logged:
                log.info(
                    "waiting for the app to accept connections", extra={"app": f"{self.host}:{self.port}"}
                )
                logged = True
            await asyncio.sleep(poll)
        self.mark(True)

    async def watch(self) -> None:
        """Refresh ``up`` every ``interval`` seconds, forever (cancel to stop)."""
        while True:
            self.mark(await self.check())
            await asyncio.sleep(self.interval)
