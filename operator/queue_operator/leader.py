"""Leader election on a ``coordination.k8s.io/v1`` Lease, so that several controller replicas are safe.

The shape of client-go's leader election, kept small: a replica acts only while it holds the
Lease; it renews it every ``renew_every`` seconds; the others retry every ``retry_every`` and
take it over once it has not been renewed for ``lease_seconds``. Expiry is judged on this
replica's monotonic clock from when it last saw the record change (never by comparing the
holder's timestamps with our wall clock), so clock skew between nodes cannot make two leaders.

A leader that cannot renew for ``renew_deadline`` (shorter than ``lease_seconds``, so it stops
before anyone may take over), or that sees another holder, stops acting at once: the controller
exits non-zero and Kubernetes restarts it as a follower. A leader stopping normally releases
the Lease, so a successor takes over in ``retry_every`` seconds rather than ``lease_seconds``.
Every write is a PUT with the last ``resourceVersion`` seen, so two replicas racing for an
expired Lease cannot both win.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from queue_operator.kube import Kube, KubeError

log = logging.getLogger("queue_operator.leader")

API_VERSION, KIND = "coordination.k8s.io/v1", "Lease"


def _micro_time() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Timing:
    lease_seconds: float = 15.0  # a silent leader is replaced after this long
    renew_deadline: float = 10.0  # a leader that could not renew for this long stops acting
    renew_every: float = 4.0
    retry_every: float = 2.0


class LeaderElection:
    """One replica's view of the Lease ``namespace/name``; ``identity`` names this replica."""

    def __init__(
        self, kube: Kube, namespace: str, name: str, identity: str, timing: Timing = Timing()
    ) -> None:
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.timing = timing
        self._seen: tuple[str, str] | None = None  # (holder, renewTime) as last read
        self._seen_at = 0.0  # monotonic time the record last changed
        self._renewed_at = 0.0  # monotonic time of our last successful renewal

    # --- one attempt -----------------------------------------------------------------------

    def try_acquire_or_renew(self) -> bool:
        """One round: renew our Lease, or take an expired or free one. True while we hold it."""
        try:
            lease = self.kube.read(API_VERSION, KIND, self.namespace, self.name)
            if lease is None:
                self.kube.create(self._lease(None, transitions=0))
                return self._won("created")
            spec = lease.get("spec") or {}
            holder = str(spec.get("holderIdentity") or "")
            record = (holder, str(spec.get("renewTime") or ""))
            now = time.monotonic()
            if record != self._seen:
                self._seen, self._seen_at = record, now
            if holder and holder != self.identity:
                duration = float(spec.get("leaseDurationSeconds") or self.timing.lease_seconds)
                if now - self._seen_at < duration:
                    return False  # somebody else holds a live Lease
            transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
            acquired = spec.get("acquireTime") if holder == self.identity else None
            self.kube.replace(self._lease(lease, transitions=transitions, acquire_time=acquired))
            return self._won(
                "renewed" if holder == self.identity else f"taken over from {holder or 'nobody'}"
            )
        except KubeError as exc:
            if exc.status != 409:  # 409: another replica wrote first; not an error, just not us
                log.warning("leader election on Lease %s/%s: %s", self.namespace, self.name, exc)
            return False
        except Exception as exc:  # the API unreachable: we cannot prove we lead
            log.warning("leader election on Lease %s/%s: %s", self.namespace, self.name, exc)
            return False

    def _won(self, how: str) -> bool:
        if how != "renewed":
            log.info(
                "became the leader (Lease %s/%s %s) as %s", self.namespace, self.name, how, self.identity
            )
        self._renewed_at = time.monotonic()
        return True

    def _lease(
        self, current: dict[str, Any] | None, *, transitions: int, acquire_time: Any = None
    ) -> dict[str, Any]:
        now = _micro_time()
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if current is not None:
            metadata["resourceVersion"] = current["metadata"]["resourceVersion"]
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": metadata,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.timing.lease_seconds),
                "acquireTime": acquire_time or now,
                "renewTime": now,
                "leaseTransitions": transitions,
            },
        }

    # --- the loops -------------------------------------------------------------------------

    def acquire(self, stop: threading.Event) -> bool:
        """Block until this replica leads (True) or ``stop`` is set (False)."""
        log.info("waiting to become the leader (Lease %s/%s) as %s", self.namespace, self.name, self.identity)
        while not stop.is_set():
            if self.try_acquire_or_renew():
                return True
            stop.wait(self.timing.retry_every)
        return False

    def keep(self, stop: threading.Event, on_lost: Callable[[], None]) -> threading.Thread:
        """Renew in a daemon thread until ``stop``; call ``on_lost`` once leadership cannot be proven."""

        def run() -> None:
            while not stop.wait(self.timing.renew_every):
                if self.try_acquire_or_renew():
                    continue
                held = self._seen is not None and self._seen[0] == self.identity
                # Stop before the Lease can expire for the others, never after.
                if not held or time.monotonic() - self._renewed_at >= self.timing.renew_deadline:
                    log.error("lost the leadership (Lease %s/%s); stopping", self.namespace, self.name)
                    on_lost()
                    return

        thread = threading.Thread(target=run, name="leader-election", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """Give the Lease up (when we still hold it), so a successor need not wait for expiry."""
        try:
            lease = self.kube.read(API_VERSION, KIND, self.namespace, self.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            released = self._lease(lease, transitions=int(lease["spec"].get("leaseTransitions") or 0))
            released["spec"].update(holderIdentity="", leaseDurationSeconds=1)
            self.kube.replace(released)
            log.info("released the leadership (Lease %s/%s)", self.namespace, self.name)
        except Exception as exc:  # it expires by itself
            log.warning("could not release Lease %s/%s: %s", self.namespace, self.name, exc)
