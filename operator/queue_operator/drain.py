"""Scaling a DelayQueue down without losing a job: which nodes leave, and moving their jobs.

When ``spec.replicas`` drops below the StatefulSet's replicas, the highest ordinals leave, in
three steps, each recorded in ``status.drain`` so that an operator restart resumes it:

1. *draining*: the nodes ConfigMap marks them ``draining``; sidecars (polling every 2 s) stop
   writing to them and keep consuming from them. The StatefulSet keeps its size.
2. after a grace period (``--drain-grace``: the kubelet's ConfigMap sync plus the sidecars'
   2 s poll plus a publish in flight), their
   buried, delayed and ready jobs are moved to the staying nodes (``queue_engine.dq.drain``),
   pass after pass, until their tube is empty.
3. only then the StatefulSet shrinks and the ConfigMap drops them.

A node that cannot be reached (or a Redis that cannot) stops the drain: it is reported in
``Degraded`` (reason ``DrainStuck``) and retried; the node is never removed with jobs on it.
The blocking work runs in the calling thread (kopf runs sync handlers in a thread pool), on an
event loop of its own, never on kopf's.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from queue_engine.dq.drain import DrainResult, NodeDrainer
from queue_operator.builders.nodes import node_endpoints
from queue_operator.kube import Kube
from queue_operator.spec import DelayQueueSpec

PASS_SECONDS = 30.0  # one handler call moves jobs at most this long, then reports progress


@dataclass(frozen=True)
class Plan:
    """The node set to run now: StatefulSet size, and the nodes by state."""

    replicas: int  # the StatefulSet's replicas to apply
    active: list[str]
    draining: list[str]


def plan(body: Mapping[str, Any], spec: DelayQueueSpec, statefulset: Mapping[str, Any] | None) -> Plan:
    """Draining when the spec asks for fewer nodes than the StatefulSet runs; otherwise all active."""
    running = int(((statefulset or {}).get("spec") or {}).get("replicas") or 0)
    size = max(spec.replicas, running)
    nodes = node_endpoints(body, size)
    return Plan(size, nodes[: spec.replicas], nodes[spec.replicas :])


@dataclass(frozen=True)
class Step:
    """What a drain step found; ``finished`` means the leaving nodes are empty."""

    status: dict[str, Any]  # the new status.drain
    finished: bool = False
    waiting: float = 0.0  # seconds of grace left before moving starts
    error: str | None = None


def step(
    kube: Kube,
    body: Mapping[str, Any],
    spec: DelayQueueSpec,
    current: Plan,
    *,
    grace: float,
    clock: float | None = None,
) -> Step:
    """Advance the drain of ``current.draining`` by one step (see the module docs)."""
    now = time.time() if clock is None else clock
    previous = ((body.get("status") or {}).get("drain")) or {}
    since = _parse_time(previous.get("since")) if previous.get("nodes") == current.draining else None
    if since is None:
        return Step(
            _status(current.draining, now, 0, -1, "marked draining; waiting for writers to stop"),
            waiting=grace,
        )
    moved_before = int(previous.get("moved") or 0)
    left = grace - (now - since)
    if left > 0:
        return Step(
            _status(current.draining, since, moved_before, -1, "waiting for writers to stop"), waiting=left
        )
    url = redis_url(kube, str(body["metadata"]["namespace"]), spec)
    results = asyncio.run(_move_all(spec.tube, url, current.draining, current.active))
    moved = moved_before + sum(r.moved for r in results.values())
    remaining = sum(max(0, r.remaining) for r in results.values())
    errors = [f"{node}: {r.error}" for node, r in results.items() if r.error]
    finished = not errors and all(r.done for r in results.values())
    message = (
        "; ".join(errors)
        if errors
        else "all jobs moved"
        if finished
        else f"{remaining} job(s) left (reserved by consumers or arrived meanwhile)"
    )
    return Step(
        _status(current.draining, since, moved, remaining, message), finished, 0.0, "; ".join(errors) or None
    )


def redis_url(kube: Kube, namespace: str, spec: DelayQueueSpec) -> str:
    if spec.redis_url is not None:
        return spec.redis_url
    assert spec.redis_secret_ref is not None  # exactly one of the two is set
    return kube.secret_value(namespace, spec.redis_secret_ref.name, spec.redis_secret_ref.key)


async def _move_all(
    tube: str, url: str, leaving: Sequence[str], staying: Sequence[str]
) -> dict[str, DrainResult]:
    drainer = NodeDrainer(tube, url)
    deadline = time.monotonic() + PASS_SECONDS
    results: dict[str, DrainResult] = {}
    try:
        for node in leaving:
            result = await drainer.drain(node, staying)
            # Copies a consumer held come back (a retry, a hand-back): a few quick passes more.
            while not result.done and result.error is None and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                again = await drainer.drain(node, staying)
                result = DrainResult(
                    result.moved + again.moved, result.dropped + again.dropped, again.remaining, again.error
                )
            results[node] = result
    finally:
        await drainer.close()
    return results


def _status(nodes: list[str], since: float, moved: int, remaining: int, message: str) -> dict[str, Any]:
    stamp = datetime.datetime.fromtimestamp(since, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"nodes": list(nodes), "since": stamp, "moved": moved, "remaining": remaining, "message": message}


def _parse_time(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return (
            datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC).timestamp()
        )
    except ValueError:
        return None
