"""Which beanstalkd nodes a DelayQueue has right now, and a watch on the file that says so.

A node is *active* (takes new copies, is consumed) or *draining* (takes no new copies, is still
consumed until its jobs have been moved away). The operator writes the list into a ConfigMap
mounted into the sidecar; the kubelet swaps a mounted ConfigMap's files in place, so
:class:`NodesFileWatcher` polls the file's content and hands every change to a callback (the
producers', consumers' and admin's ``set_nodes``). Library users outside Kubernetes may call
``set_nodes`` directly, or keep a static list.

The file is JSON: ``{"nodes": [{"address": "host:port", "state": "active" | "draining"}]}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from queue_engine.dq.nodes import check_nodes
from queue_engine.errors import ConfigError

log = logging.getLogger(__name__)

ACTIVE = "active"
DRAINING = "draining"
POLL_SECONDS = 2.0  # the operator waits longer than this before it moves a draining node's jobs


@dataclass(frozen=True)
class Membership:
    active: tuple[str, ...]
    draining: tuple[str, ...] = ()

    @property
    def all(self) -> tuple[str, ...]:
        """Every node still consumed: the active ones, then the draining ones."""
        return self.active + self.draining

    @classmethod
    def of(cls, active: Sequence[str], draining: Sequence[str] = ()) -> Membership:
        """Checked: at least one active node, no node listed twice, addresses host:port."""
        if isinstance(draining, str):
            raise ConfigError("draining must be a list of host:port strings, not one string")
        both = check_nodes([*active, *draining])
        return cls(tuple(both[: len(active)]), tuple(both[len(active) :]))

    def to_document(self) -> dict[str, Any]:
        nodes = [{"address": a, "state": ACTIVE} for a in self.active]
        nodes += [{"address": a, "state": DRAINING} for a in self.draining]
        return {"nodes": nodes}


def parse_document(data: Any, where: str = "nodes file") -> Membership:
    """The membership in a parsed nodes document; ConfigError naming what is wrong."""
    if not isinstance(data, Mapping) or not isinstance(data.get("nodes"), list):
        raise ConfigError(f'{where}: expected {{"nodes": [{{"address": ..., "state": ...}}]}}')
    active: list[str] = []
    draining: list[str] = []
    for i, entry in enumerate(data["nodes"]):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("address"), str):
            raise ConfigError(f"{where}: nodes[{i}] needs an address (host:port)")
        state = entry.get("state", ACTIVE)
        if state not in (ACTIVE, DRAINING):
            raise ConfigError(f"{where}: nodes[{i}].state is {state!r}; use active or draining")
        (active if state == ACTIVE else draining).append(entry["address"])
    try:
        return Membership.of(active, draining)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def read_nodes_file(path: str | Path) -> Membership:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"nodes file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"nodes file {path}: not JSON ({exc})") from None
    return parse_document(data, f"nodes file {path}")


Listener = Callable[[Membership], Awaitable[None]]


class NodesFileWatcher:
    """Polls a nodes file and calls ``listener`` with each new membership.

    Polling (content, not mtime alone) because a mounted ConfigMap is replaced by a symlink
    swap that inotify on the file path does not see, and polling every 2 s is cheap. A file
    that is briefly missing or unreadable (mid-swap) keeps the last good membership.
    """

    def __init__(self, path: str | Path, listener: Listener, *, interval: float = POLL_SECONDS) -> None:
        self.path = Path(path)
        self._listener = listener
        self._interval = interval
        self.current = read_nodes_file(self.path)  # a bad file at start is a config error
        self._text = self._read_text()
        self.error: str | None = None

    def _read_text(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8")
        except OSError:
            return None

    async def check(self) -> bool:
        """Look once; True when the membership changed (and the listener was told)."""
        text = await asyncio.to_thread(self._read_text)
        if text is None or text == self._text:
            return False
        try:
            membership = parse_document(json.loads(text), f"nodes file {self.path}")
        except (ValueError, ConfigError) as exc:
            if self.error != str(exc):
                log.warning("keeping the last good node list: %s", exc)
            self.error = str(exc)
            return False
        self._text, self.error = text, None
        if membership == self.current:
            return False
        log.info(
            "node list changed",
            extra={"active": list(membership.active), "draining": list(membership.draining)},
        )
        self.current = membership
        await self._listener(membership)
        return True

    async def run(self) -> None:
        """Poll until cancelled; a failing listener is logged and tried again on the next change."""
        while True:
            try:
                await self.check()
            except Exception:  # a bug in a listener must not end the watch
                log.exception("applying the new node list failed")
            await asyncio.sleep(self._interval)
