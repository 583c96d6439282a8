"""The ``status`` both resources write: a ``Ready`` condition plus observed fields.

Pure functions: what the status should be, and the smallest merge patch that gets there.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import kopf

from queue_operator.spec import SpecError

SpecT = TypeVar("SpecT")


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ready_condition(ready: bool, reason: str, message: str, generation: int, previous: Any) -> dict[str, Any]:
    """A ``Ready`` condition; its transition time moves only when its status flips."""
    status = "True" if ready else "False"
    old = next((c for c in previous or [] if isinstance(c, Mapping) and c.get("type") == "Ready"), None)
    since = old.get("lastTransitionTime") if old is not None and old.get("status") == status else None
    return {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": since or now(),
    }


def with_ready(
    body: Mapping[str, Any], ready: bool, reason: str, message: str, **fields: Any
) -> dict[str, Any]:
    """The desired status: ``fields``, ``observedGeneration`` and the ``Ready`` condition."""
    status = body.get("status") or {}
    generation = int(body.get("metadata", {}).get("generation") or 1)
    others = [
        c for c in status.get("conditions") or [] if isinstance(c, Mapping) and c.get("type") != "Ready"
    ]
    condition = ready_condition(ready, reason, message, generation, status.get("conditions"))
    return {**fields, "observedGeneration": generation, "conditions": [*others, condition]}


def write_status(body: Mapping[str, Any], patch: kopf.Patch, desired: Mapping[str, Any]) -> None:
    """Patch only the status fields that differ, so a steady state writes nothing."""
    current = body.get("status") or {}
    for key, value in desired.items():
        if current.get(key) != value:
            patch.status[key] = value


def set_ready(body: Mapping[str, Any], patch: kopf.Patch, ready: bool, reason: str, message: str) -> None:
    """Only the ``Ready`` condition (and observedGeneration), other status fields untouched."""
    write_status(body, patch, with_ready(body, ready, reason, message))


def parse_or_report(
    from_body: Callable[[Mapping[str, Any]], SpecT], body: Mapping[str, Any], patch: kopf.Patch
) -> SpecT:
    """The spec, or ``Ready=False`` saying what to fix and a permanent failure (no retries
    until the spec changes)."""
    try:
        return from_body(body)
    except SpecError as exc:
        set_ready(body, patch, False, "InvalidSpec", str(exc))
        raise kopf.PermanentError(f"invalid spec: {exc}") from exc
