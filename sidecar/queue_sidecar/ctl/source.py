"""Where queuectl learns a queue's servers: the sidecar's config file, or the cluster.

Both give the same :data:`QueueSettings` (the sidecar's own config models), so every command
works alike whichever way the queue was found. A queue may be named plainly (``reminders``)
or with its kind as in pod annotations (``delayqueue/reminders``, ``kq/orders``) when a
DelayQueue and a KafkaQueue share a name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

from queue_engine.errors import NotFound
from queue_sidecar.config import DelayQueueConfig, KafkaQueueConfig, load_config

QueueSettings = DelayQueueConfig | KafkaQueueConfig
Kind = Literal["DelayQueue", "KafkaQueue"]

KIND_PREFIXES: dict[str, Kind] = {
    "delayqueue": "DelayQueue",
    "delayqueues": "DelayQueue",
    "dq": "DelayQueue",
    "kafkaqueue": "KafkaQueue",
    "kafkaqueues": "KafkaQueue",
    "kq": "KafkaQueue",
}


class QueueSource(Protocol):
    def find(self, name: str, kind: Kind | None) -> QueueSettings:
        """The queue's settings, or :class:`NotFound` naming the queues that exist."""
        ...

    def close(self) -> None: ...


def split_kind(ref: str) -> tuple[str, Kind | None]:
    """``delayqueue/reminders`` -> (``reminders``, ``DelayQueue``); a plain name has no kind."""
    prefix, slash, name = ref.partition("/")
    if not slash:
        return ref, None
    kind = KIND_PREFIXES.get(prefix.lower())
    if kind is None or not name:
        raise ValueError(
            f"queue {ref!r}: write NAME, delayqueue/NAME or kafkaqueue/NAME (short: dq/NAME, kq/NAME)"
        )
    return name, kind


def unknown_queue(name: str, kind: Kind | None, where: str, known: list[tuple[str, str]]) -> NotFound:
    """An error naming the queues that do exist, as ``kind/name`` pairs."""
    listed = ", ".join(f"{k.lower()}/{n}" for k, n in sorted(known))
    return NotFound(f"no {kind or 'queue'} named {name!r} {where}; queues there: {listed or 'none'}")


class ConfigFileSource:
    """The queues of a ``queue-sidecar`` config file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.queues: list[QueueSettings] = list(load_config(self.path).queues)

    def find(self, name: str, kind: Kind | None) -> QueueSettings:
        for queue in self.queues:
            if queue.name == name and (kind is None or queue.kind == kind):
                return queue
        raise unknown_queue(name, kind, f"in {self.path}", [(q.kind, q.name) for q in self.queues])

    def close(self) -> None:
        pass
