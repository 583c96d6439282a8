"""The ``status`` both resources write: ``Ready``, ``Progressing`` and ``Degraded``, plus observed fields.

Pure functions: what the status should be, and the smallest merge patch that gets there.

The three conditions follow the Kubernetes API conventions (each has ``status``, ``reason``,
``message``, ``lastTransitionTime`` and ``observedGeneration``):

- ``Ready``: the queue can be used now (nodes ready, topics there).
- ``Progressing``: the operator is still bringing the queue to its spec and expects to get
  there (children being created, a StatefulSet rolling out, a topic being created).
- ``Degraded``: something keeps the spec from being applied or kept, and the message says what
  (an apply the API refused, with the API's message; an invalid spec; a Secret; a conflict).

``status.observedGeneration`` moves only when the spec of that generation was fully applied, so
``observedGeneration == metadata.generation`` with ``Ready=True`` means "this spec is live".
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import kopf

from queue_operator.spec import SpecError

SpecT = TypeVar("SpecT")
TYPES = ("Ready", "Progressing", "Degraded")


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Verdict:
    """What the operator concluded about a resource; ``status`` turns it into conditions."""

    ready: bool
    reason: str  # the reason of the condition that explains the state best (see ``condition_reasons``)
    message: str
    progressing: bool = False
    degraded: bool = False
    applied: bool = False  # the spec of the body's generation is fully applied
    degraded_reason: str | None = None  # when Degraded has a reason other than ``reason``
    degraded_message: str | None = None

    @classmethod
    def problem(cls, reason: str, message: str) -> Verdict:
        """Not ready, and the operator cannot get there until something is fixed."""
        return cls(False, reason, message, degraded=True)


def condition(kind: str, values: tuple[bool, str, str], generation: int, previous: Any) -> dict[str, Any]:
    """One condition from (status, reason, message); its transition time moves only when its
    status flips."""
    status, reason, message = values
    text = "True" if status else "False"
    old = next((c for c in previous or [] if isinstance(c, Mapping) and c.get("type") == kind), None)
    since = old.get("lastTransitionTime") if old is not None and old.get("status") == text else None
    return {
        "type": kind,
        "status": text,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": since or now(),
    }


def conditions_of(verdict: Verdict, generation: int, previous: Any) -> list[dict[str, Any]]:
    main = (verdict.reason, verdict.message)
    done = ("Reconciled", "the spec is applied")
    healthy = ("AsExpected", "nothing keeps the spec from being applied")
    degraded = (verdict.degraded_reason or verdict.reason, verdict.degraded_message or verdict.message)
    values = {
        "Ready": (verdict.ready, *main),
        "Progressing": (verdict.progressing, *(main if verdict.progressing or not verdict.applied else done)),
        "Degraded": (verdict.degraded, *(degraded if verdict.degraded else healthy)),
    }
    return [condition(kind, values[kind], generation, previous) for kind in TYPES]


def status_of(body: Mapping[str, Any], verdict: Verdict, **fields: Any) -> dict[str, Any]:
    """The desired status: ``fields``, the three conditions, and ``observedGeneration`` when
    this generation is applied (otherwise the last applied one stays)."""
    status = body.get("status") or {}
    generation = int(body.get("metadata", {}).get("generation") or 1)
    previous = status.get("conditions")
    others = [c for c in previous or [] if isinstance(c, Mapping) and c.get("type") not in TYPES]
    conditions = [*conditions_of(verdict, generation, previous), *others]
    desired: dict[str, Any] = {**fields, "conditions": conditions}
    if verdict.applied:
        desired["observedGeneration"] = generation
    return desired


def write_status(body: Mapping[str, Any], patch: kopf.Patch, desired: Mapping[str, Any]) -> None:
    """Patch only the status fields that differ, so a steady state writes nothing."""
    current = body.get("status") or {}
    for key, value in desired.items():
        if current.get(key) != value:
            patch.status[key] = value


def report(body: Mapping[str, Any], patch: kopf.Patch, verdict: Verdict, **fields: Any) -> None:
    write_status(body, patch, status_of(body, verdict, **fields))


def parse_or_report(
    from_body: Callable[[Mapping[str, Any]], SpecT], body: Mapping[str, Any], patch: kopf.Patch
) -> SpecT:
    """The spec, or ``Degraded`` (and not ready) saying what to fix, and a permanent failure (no
    retries until the spec changes)."""
    try:
        return from_body(body)
    except SpecError as exc:
        report(body, patch, Verdict.problem("InvalidSpec", str(exc)))
        raise kopf.PermanentError(f"invalid spec: {exc}") from exc
