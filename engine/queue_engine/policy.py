"""What both engines share: the delivery policy and what a handler answers.

A handler is ``async def handle(message) -> Outcome``. Raising is the same as answering
``Outcome.retry(error=str(exc))``; a handler that runs over ``policy.timeout`` is a retry too.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, field
from typing import Any

from queue_engine.durations import parse_duration

# The longest wait an app's Retry-After can ask for (a day): a message is not parked for longer.
MAX_RETRY_AFTER = 86_400.0


class Verdict(enum.Enum):
    SUCCESS = "SUCCESS"  # done: acknowledge (beanstalkd delete / Kafka commit)
    RETRY = "RETRY"  # try again later, with backoff, until maxAttempts
    DROP = "DROP"  # give up now: bury (dq) or dead-letter (kq)


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    error: str = ""  # why it failed; goes into logs, dead-letter headers and bury reasons
    retry_after: float | None = None  # seconds the app asked us to wait (Retry-After)
    # False when the app could not be reached at all (connection refused, not ready): the
    # engine hands the message back without counting an attempt, so an app that is down
    # burns none of a message's maxAttempts.
    attempted: bool = True

    @classmethod
    def success(cls) -> Outcome:
        # One shared instance (it is frozen): a handler answers this for nearly every message,
        # and building a frozen dataclass was a tenth of a kq consumer's cost per message.
        return _SUCCESS if cls is Outcome else cls(Verdict.SUCCESS)

    @classmethod
    def retry(cls, error: str = "", after: float | None = None) -> Outcome:
        return cls(Verdict.RETRY, error, after)

    @classmethod
    def drop(cls, error: str = "") -> Outcome:
        return cls(Verdict.DROP, error)

    @classmethod
    def unavailable(cls, error: str = "", after: float | None = None) -> Outcome:
        """The handler's target is down: try again later, without counting this attempt."""
        return cls(Verdict.RETRY, error, after, attempted=False)


_SUCCESS = Outcome(Verdict.SUCCESS)


@dataclass(frozen=True)
class Backoff:
    initial: float = 1.0
    max: float = 60.0
    multiplier: float = 2.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based), before jitter."""
        return float(min(self.max, self.initial * self.multiplier ** max(0, attempt - 1)))

    def jittered(self, attempt: int) -> float:
        # +-10% so that many messages failing together do not all come back together.
        base = self.delay(attempt)
        return base * random.uniform(0.9, 1.1)


@dataclass(frozen=True)
class DeliveryPolicy:
    max_attempts: int = 5
    backoff: Backoff = field(default_factory=Backoff)
    timeout: float = 30.0  # seconds per attempt

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"delivery.maxAttempts is {self.max_attempts}; use 1 or more")
        if self.timeout <= 0:
            raise ValueError(f"delivery.timeout is {self.timeout}s; use a positive duration")
        b = self.backoff
        if b.initial < 0 or b.max < b.initial or b.multiplier < 1:
            raise ValueError(
                "delivery.backoff needs 0 <= initial <= max and multiplier >= 1, "
                f"got initial={b.initial}, max={b.max}, multiplier={b.multiplier}"
            )

    def next_delay(self, attempt: int, outcome: Outcome) -> float:
        """How long to wait before attempt ``attempt + 1``; the app's Retry-After wins.

        A Retry-After that is not a finite number (``inf``, ``1e999``, NaN) counts as absent, and
        a longer one than :data:`MAX_RETRY_AFTER` is cut to it: an infinite wait would spin (or
        never come back), and beanstalkd cannot hold a job longer than 2**32-1 seconds.
        """
        after = outcome.retry_after
        if after is not None and math.isfinite(after):
            return min(MAX_RETRY_AFTER, max(0.0, after))
        return self.backoff.jittered(attempt)

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None) -> DeliveryPolicy:
        """Build from the camelCase form used in CRDs and sidecar YAML."""
        data = dict(data or {})
        backoff = dict(data.pop("backoff", None) or {})
        unknown = set(data) - {"maxAttempts", "timeout"}
        unknown |= {f"backoff.{k}" for k in set(backoff) - {"initial", "max", "multiplier"}}
        if unknown:
            raise ValueError(f"delivery: unknown key(s) {', '.join(sorted(unknown))}")
        defaults = Backoff()
        return cls(
            max_attempts=int(data.get("maxAttempts", 5)),
            backoff=Backoff(
                initial=parse_duration(backoff.get("initial", defaults.initial)),
                max=parse_duration(backoff.get("max", defaults.max)),
                multiplier=float(backoff.get("multiplier", defaults.multiplier)),
            ),
            timeout=parse_duration(data.get("timeout", 30.0)),
        )
