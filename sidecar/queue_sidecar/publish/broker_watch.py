"""Knowing that a KafkaQueue's brokers are unreachable, so a push fails at once instead of in 30 s.

librdkafka queues a message while no broker is up and fails it only when ``message.timeout.ms``
runs out: an app would wait that long for each 503. The pusher's statistics (once a second,
from its own poll thread) say whether any broker connection is up, and librdkafka's ``FAIL``
log lines say that a connection attempt failed and why. When attempts fail in two statistics
periods in a row and no broker is up, publishes are refused at once with that reason until a
broker is up again. An idle producer whose connection a broker closed makes no attempts, so
it never looks down.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any

STATS_INTERVAL_MS = 1000
# Consecutive statistics (seconds) with failed connection attempts and no broker up.
DOWN_AFTER_TICKS = 2
_UP = {"UP", "UPDATE"}
# librdkafka's own log lines, "FAIL [rdkafka#producer-3] [thrd:...]: <broker>: <why>".
_FAIL = re.compile(r"^FAIL \[(?P<client>[^\]]+)\] \[[^\]]*\]: (?P<why>.*)$")
# librdkafka client name -> (connection failures so far, the last one's reason)
_failures: dict[str, tuple[int, str]] = {}
_MAX_CLIENTS = 256
_lock = threading.Lock()


class _FailureNotes(logging.Filter):
    """Remembers each librdkafka client's last connection failure: the reason a 503 gives."""

    def filter(self, record: logging.LogRecord) -> bool:
        match = _FAIL.match(record.getMessage())
        if match:
            with _lock:
                if len(_failures) > _MAX_CLIENTS:  # consumers are rebuilt after failures, with new names
                    _failures.clear()
                count, _ = _failures.get(match["client"], (0, ""))
                _failures[match["client"]] = (count + 1, match["why"])
        return True


_notes = _FailureNotes()


class BrokerWatch:
    """Fed the pusher's statistics; :attr:`down` is the reason to refuse a push now, else None."""

    def __init__(self, queue: str, brokers: list[str]) -> None:
        self.queue = queue
        self.brokers = brokers
        self.down: str | None = None
        self._failures_seen = 0
        self._failing_ticks = 0
        logger = logging.getLogger("queue_engine.kq.librdkafka")
        if _notes not in logger.filters:
            logger.addFilter(_notes)

    def librdkafka_config(self) -> dict[str, Any]:
        """What the pusher's ``extra`` needs for this watch to be fed."""
        return {"statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": self.on_stats}

    def on_stats(self, text: str) -> None:
        try:
            stats = json.loads(text)
            brokers: dict[str, Any] = stats.get("brokers") or {}
            client = str(stats.get("name", ""))
        except (ValueError, AttributeError):
            return
        if any(b.get("state") in _UP for b in brokers.values()):
            self._failing_ticks = 0
            self.down = None
            return
        with _lock:
            failures, why = _failures.get(client, (0, ""))
        failed, self._failures_seen = failures != self._failures_seen, failures
        if not failed:
            return  # idle, or waiting out a reconnect backoff: no news
        self._failing_ticks += 1
        if self._failing_ticks >= DOWN_AFTER_TICKS:
            self.down = (
                f"push to {self.queue}: no Kafka broker reachable ({', '.join(self.brokers)}): {why}; "
                "nothing was published, try again later"
            )
