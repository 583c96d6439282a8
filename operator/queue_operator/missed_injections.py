"""Pods that asked for the sidecar but run without it: found and replaced through their controller.

With ``failurePolicy: Fail`` (the chart's default) such a pod cannot be created while the webhook
is down; with ``Ignore``, or when the webhook configuration was installed after the pod, it can.
The webhook process looks for them at start and then every ``interval`` seconds: a pod annotated
``queue-operator.dev/inject: "true"`` without the sidecar container is

- deleted when a controller owns it (ReplicaSet, StatefulSet, Job, ...): the controller creates
  it again, through the webhook this time; a Normal event on the pod says why;
- left alone when nobody would re-create it (a bare pod): a Warning event on it says how to fix
  it (delete and create it again).

Never in the namespaces the webhook never serves (kube-system, the release's own). At most
``budget`` pods are deleted per round, so a misconfiguration cannot empty a namespace at once.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from queue_operator.injection import has_sidecar, wants_injection
from queue_operator.kube import Kube, KubeError

log = logging.getLogger("queue_operator.missed_injections")

NEVER = frozenset({"kube-system", "kube-public", "kube-node-lease"})
REASON = "SidecarMissing"


@dataclass(frozen=True)
class Round:
    replaced: list[str]  # namespace/name of pods deleted for their controller to re-create
    reported: list[str]  # bare pods, told about with a Warning event


def missing_sidecar(pod: Mapping[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    return wants_injection(pod) and not has_sidecar(pod) and not meta.get("deletionTimestamp")


def controller_of(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    refs = (pod.get("metadata") or {}).get("ownerReferences") or []
    return next((ref for ref in refs if isinstance(ref, Mapping) and ref.get("controller")), None)


def sweep(kube: Kube, namespaces: Iterable[str] | None, skip: Iterable[str] = (), budget: int = 20) -> Round:
    """One round over ``namespaces`` (None: the whole cluster); see the module docs."""
    excluded = NEVER | set(skip)
    replaced: list[str] = []
    reported: list[str] = []
    for pod in _pods(kube, namespaces):
        meta = pod["metadata"]
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        if namespace in excluded or not missing_sidecar(pod):
            continue
        owner = controller_of(pod)
        where = f"{namespace}/{name}"
        if owner is None:
            if not _already_reported(kube, pod):
                _event(
                    kube,
                    pod,
                    "Warning",
                    "this pod asked for the queue-operator sidecar but was created without it (the "
                    "injection webhook was unavailable); nothing re-creates a bare pod: delete it and "
                    "create it again",
                )
                reported.append(where)
            continue
        if len(replaced) >= budget:
            continue  # the next round takes the rest
        _event(
            kube,
            pod,
            "Normal",
            f"created without the queue-operator sidecar (the injection webhook was unavailable); "
            f"deleted so that {owner.get('kind')} {owner.get('name')} creates it again with the sidecar",
        )
        try:
            kube.delete("v1", "Pod", namespace, name)
        except KubeError as exc:
            log.warning("could not delete pod %s to re-create it with its sidecar: %s", where, exc)
            continue
        replaced.append(where)
    if replaced or reported:
        log.info(
            "pods without their sidecar: re-created %s; told about %s",
            ", ".join(replaced) or "none",
            ", ".join(reported) or "none",
        )
    return Round(replaced, reported)


def _pods(kube: Kube, namespaces: Iterable[str] | None) -> Iterable[dict[str, Any]]:
    if namespaces is None:
        yield from kube.list("v1", "Pod", None)
        return
    for namespace in namespaces:
        yield from kube.list("v1", "Pod", namespace)


def _already_reported(kube: Kube, pod: Mapping[str, Any]) -> bool:
    meta = pod["metadata"]
    return any(
        (event.get("involvedObject") or {}).get("uid") == meta.get("uid") and event.get("reason") == REASON
        for event in kube.list("v1", "Event", meta["namespace"])
    )


def _event(kube: Kube, pod: Mapping[str, Any], kind: str, message: str) -> None:
    meta = pod["metadata"]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": kind,
        "reason": REASON,
        "message": message,
        "source": {"component": "queue-operator-webhook"},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        kube.create(event)
    except KubeError as exc:
        log.warning("could not post an event on pod %s/%s: %s", meta["namespace"], meta["name"], exc)
