"""What a dq handler receives."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class DelayJob:
    id: str  # the id delay()/at() returned; the same for every copy and attempt
    body: bytes
    attempt: int  # 1-based, counted across copies
    due_at: datetime  # when it was due (UTC, aware); it is never delivered before this
    queue: str
