"""Structured logs: one JSON object per line on stderr, for kubectl logs and log shippers.

Each line has ``ts`` (RFC 3339, UTC), ``level``, ``logger``, ``msg`` and any ``extra={...}``
fields the caller passed. Secrets are kept out at the source (config holds them as SecretStr);
as a second guard, anything that looks like a URL password is masked here.

Warnings and errors that repeat (a broker that cannot be reached is reported by every Kafka
client of every queue, several times a second) are written at most once per
:data:`REPEAT_INTERVAL` seconds per message; the next one that is written carries
``"repeats": N``, the number left out meanwhile.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else came from ``extra=`` and is emitted as a field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
REPEAT_INTERVAL = 30.0
# What differs between repeats of one message: timings, and librdkafka's client instance numbers
# (a queue's consumer is rebuilt after each failure).
_VOLATILE = (
    (re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|s)\b"), "N"),
    (re.compile(r"(rdkafka#[a-z]+)-\d+"), r"\1"),
)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<pw>[^@/\s]+)@", re.I)


def mask_secrets(text: str) -> str:
    """``redis://user:pw@host`` -> ``redis://user:***@host``."""
    return _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask_secrets(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = mask_secrets(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = mask_secrets(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure(level: str = "info") -> None:
    """Send every logger's records to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would print a line per delivery/publish; keep it for debugging only.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class Throttle:
    """At most one log line per key per ``interval`` seconds, counting the ones left out.

    A backend or an app that stays broken would otherwise write a line per message per retry.
    """

    def __init__(self, interval: float = 30.0, max_keys: int = 1000) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None to stay quiet; else how many lines for ``key`` were left out since the last one."""
        now = time.monotonic()
        if len(self._last) >= self.max_keys and key not in self._last:
            self._forget(now)
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)

    def _forget(self, now: float) -> None:
        # Keys whose interval is over would be let through anyway; what they left out is lost.
        for key, last in list(self._last.items()):
            if now - last >= self.interval:
                del self._last[key]
                self._suppressed.pop(key, None)


class RepeatFilter(logging.Filter):
    """Lets a warning or error through at most once per interval per message (see the module doc)."""

    def __init__(self, interval: float = REPEAT_INTERVAL) -> None:
        super().__init__()
        self._throttle = Throttle(interval)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        # The fields that tell one problem from another count too: the same words about another
        # queue or another error are news.
        fields = (getattr(record, "queue", None), getattr(record, "error", None))
        key = f"{record.getMessage()}|{fields}"
        for pattern, replacement in _VOLATILE:
            key = pattern.sub(replacement, key)
        left_out = self._throttle.allow(f"{record.name}|{record.levelno}|{key}")
        if left_out is None:
            return False
        if left_out:
            record.repeats = left_out
        return True
