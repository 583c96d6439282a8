"""The webhook's in-memory copy of the DelayQueues and KafkaQueues it may inject, kept by a watch.

One thread per (kind, namespace) lists the queues, then watches them, and keeps for each only
what injection reads (name, namespace, uid and spec: the status, which the controller rewrites
all the time, is dropped). Why not a kopf index: kopf runs a worker task, an executor call, a
readiness toggle and a log line per event in the event loop that also answered admissions, so
a controller reconciling 1,000 queues pushed the webhook's p99 past 100 ms. Here an event costs
one ``json.loads`` and a dict assignment, off the admission server's loop.

While the API server is away, the last known queues stay and the watch retries with a backoff:
admissions keep being answered from them.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from queue_operator.kube import Kube, KubeError

log = logging.getLogger("queue_operator.queue_cache")

API_VERSION = "queue-operator.dev/v1alpha1"
KINDS = ("DelayQueue", "KafkaQueue")
Key = tuple[str, str, str]  # kind, namespace, name


def lean(body: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a queue injection reads (see :func:`queue_operator.injection.sidecar_queue`)."""
    meta = body.get("metadata") or {}
    return {
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid")},
        "spec": body.get("spec") or {},
    }


class QueueCache:
    """``get(kind, namespace, name)``: the lean queue, or None when not (yet) seen."""

    def __init__(
        self, kube: Kube, namespaces: Iterable[str] = (), *, watch_timeout: float = 300.0, page: int = 200
    ) -> None:
        self._kube = kube
        patterns = list(namespaces)
        # Exact names: a watch per namespace (a Role there is enough). Globs or none: one
        # cluster-wide watch, filtered here (needs list/watch on the queues cluster-wide).
        self._exact = patterns if patterns and not any(set(p) & set("*?[") for p in patterns) else []
        self._patterns = patterns if not self._exact else []
        self._watch_timeout = watch_timeout
        self._page = page
        self._entries: dict[Key, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._synced: list[threading.Event] = []

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._entries.get((kind, namespace, name))  # a plain dict read: safe across threads

    def __len__(self) -> int:
        return len(self._entries)

    def start(self) -> None:
        for kind in KINDS:
            scopes: list[str | None] = [*self._exact] or [None]
            for namespace in scopes:
                synced = threading.Event()
                thread = threading.Thread(
                    target=self._run,
                    args=(kind, namespace, synced),
                    name=f"watch-{kind.lower()}-{namespace or 'all'}",
                    daemon=True,
                )
                self._synced.append(synced)
                self._threads.append(thread)
                thread.start()

    def wait_synced(self, timeout: float) -> bool:
        """True once every watch has listed its queues; False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        return all(synced.wait(max(0.0, deadline - time.monotonic())) for synced in self._synced)

    def stop(self) -> None:
        """Stop watching (a watch in progress ends with its current request)."""
        self._stop.set()

    def _run(self, kind: str, namespace: str | None, synced: threading.Event) -> None:
        delay = 0.5
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    version = self._relist(kind, namespace)
                    synced.set()
                began = time.monotonic()
                version = self._follow(kind, namespace, version)
                delay = 0.5
                if time.monotonic() - began < 1.0:  # ended at once: do not spin on the API
                    self._stop.wait(1.0)
                continue  # the server ended the watch (timeoutSeconds): resume at once
            except KubeError as exc:
                if exc.status == 410:  # too old: list again (and drop what was deleted meanwhile)
                    version = ""
                    continue
                log.warning("watching %ss failed: %s; retrying in %.1fs", kind, exc, delay)
            except Exception as exc:  # the API server is away: keep the queues known so far
                log.warning("watching %ss failed: %s; retrying in %.1fs", kind, exc, delay)
            self._stop.wait(delay)
            delay = min(delay * 2, 10.0)

    def _relist(self, kind: str, namespace: str | None) -> str:
        items, version = self._kube.list_with_version(API_VERSION, kind, namespace, page=self._page)
        fresh = {self._key(kind, item): lean(item) for item in items if self._wanted(item)}
        # list(): a copy taken at once; the other kinds' threads add entries meanwhile.
        for key in [k for k in list(self._entries) if k[0] == kind and self._scoped(k[1], namespace)]:
            if key not in fresh:
                del self._entries[key]
        self._entries.update(fresh)
        log.info("%d %ss known; watching from resourceVersion %s", len(fresh), kind, version)
        return version

    def _follow(self, kind: str, namespace: str | None, version: str) -> str:
        """Apply watch events until the server ends the watch; the last resourceVersion seen."""
        for event in self._kube.watch(API_VERSION, kind, namespace, version, self._watch_timeout):
            obj = event.get("object") or {}
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if event.get("type") == "BOOKMARK" or not self._wanted(obj):
                continue
            key = self._key(kind, obj)
            if event.get("type") == "DELETED":
                self._entries.pop(key, None)
            else:
                self._entries[key] = lean(obj)
            if self._stop.is_set():
                break
        return version

    @staticmethod
    def _key(kind: str, obj: Mapping[str, Any]) -> Key:
        meta = obj.get("metadata") or {}
        return kind, str(meta.get("namespace")), str(meta.get("name"))

    def _wanted(self, obj: Mapping[str, Any]) -> bool:
        namespace = str((obj.get("metadata") or {}).get("namespace"))
        return not self._patterns or any(fnmatch.fnmatchcase(namespace, p) for p in self._patterns)

    @staticmethod
    def _scoped(key_namespace: str, namespace: str | None) -> bool:
        return namespace is None or key_namespace == namespace
