"""The Deployment and StatefulSet controllers: pods from templates, status as the real ones write it.

Simplifications (docs/e2e.md): a Deployment owns its pods directly (no ReplicaSets; the
``pod-template-hash`` label tells revisions apart) and rolls with one surge pod at a time, an
old pod going once a new one is ready (or, with ``strategy: Recreate``, makes new pods only once
the old ones' processes have ended); a StatefulSet creates pods in ordinal order, each once
the one before is ready (OrderedReady), removes the highest ordinal first, and rolls
(RollingUpdate) from the highest ordinal down.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

from harness.kubelet.api import Api, JsonObj
from harness.kubelet.probes import is_ready

log = logging.getLogger("kubelet.controllers")

HASH_LABEL = "pod-template-hash"
REVISION_LABEL = "controller-revision-hash"


def template_hash(template: JsonObj) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def owned_by(pod: JsonObj, owner: JsonObj) -> bool:
    refs = pod["metadata"].get("ownerReferences") or []
    return any(r.get("uid") == owner["metadata"]["uid"] for r in refs)


def _pod(owner: JsonObj, name: str, labels: dict[str, str]) -> JsonObj:
    template = copy.deepcopy(owner["spec"]["template"])
    meta = template.setdefault("metadata", {})
    meta["name"], meta["namespace"] = name, owner["metadata"]["namespace"]
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    meta["ownerReferences"] = [
        {
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    return {"apiVersion": "v1", "kind": "Pod", **template}


class Controllers:
    """One pass over the workloads, told by the kubelet which pods still have processes.

    ``gone(namespace, name)``: no process of a pod of that name runs; ``running(owner_uid)``: how
    many pods of that owner still have processes (deleted ones included, while they stop).
    """

    def __init__(self, api: Api, gone: Callable[[str, str], bool], running: Callable[[str], int]) -> None:
        self.api, self.gone, self.running = api, gone, running

    def _create(self, pod: JsonObj) -> None:
        try:
            self.api.create("pods", pod["metadata"]["namespace"], pod)
        except RuntimeError as exc:  # refused, by the admission webhook for one: try again next pass
            log.warning("cannot create pod %s: %s", pod["metadata"]["name"], exc)

    def _status(self, plural: str, obj: JsonObj, status: JsonObj) -> None:
        if {**(obj.get("status") or {}), **status} != (obj.get("status") or {}):
            self.api.patch_status(plural, obj["metadata"]["namespace"], obj["metadata"]["name"], status)

    # ------------------------------------------------------------ Deployment

    def deployment(self, deploy: JsonObj, pods: list[JsonObj]) -> None:
        meta, spec = deploy["metadata"], deploy["spec"]
        if meta.get("deletionTimestamp"):
            return
        mine = [p for p in pods if owned_by(p, deploy)]
        want, current = int(spec.get("replicas", 1)), template_hash(spec["template"])
        new = [p for p in mine if p["metadata"]["labels"].get(HASH_LABEL) == current]
        old = [p for p in mine if p not in new]
        ready_new = [p for p in new if is_ready(p)]
        ready_old = [p for p in old if is_ready(p)]
        recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
        if recreate and old:
            for pod in old:  # every old pod goes before any new one is made
                self.api.delete("pods", meta["namespace"], pod["metadata"]["name"])
        elif recreate and self.running(meta["uid"]) > len(new):
            pass  # an old pod's processes are still stopping
        elif len(new) < want and len(mine) < want + 1:
            name = f"{meta['name']}-{current}-{secrets.token_hex(3)[:5]}"
            self._create(_pod(deploy, name, {HASH_LABEL: current}))
        elif len(new) > want:
            self.api.delete("pods", meta["namespace"], sorted(p["metadata"]["name"] for p in new)[-1])
        if old and not recreate and (len(ready_new) + len(ready_old) > want or not ready_old):
            doomed = sorted(old, key=lambda p: (is_ready(p), p["metadata"]["name"]))[0]
            self.api.delete("pods", meta["namespace"], doomed["metadata"]["name"])
        ready = len(ready_new) + len(ready_old)
        available = "True" if ready >= want else "False"
        self._status(
            "deployments",
            deploy,
            {
                "observedGeneration": meta.get("generation", 1),
                "replicas": len(mine),
                "updatedReplicas": len(new),
                "readyReplicas": ready,
                "availableReplicas": ready,
                "unavailableReplicas": max(want - ready, 0),
                "conditions": [{"type": "Available", "status": available, "reason": "MinimumReplicas"}],
            },
        )

    # ------------------------------------------------------------ StatefulSet

    def statefulset(self, sts: JsonObj, pods: list[JsonObj]) -> None:
        meta, spec = sts["metadata"], sts["spec"]
        if meta.get("deletionTimestamp"):
            return
        name = meta["name"]
        want, revision = int(spec.get("replicas", 1)), f"{name}-{template_hash(spec['template'])}"
        by_ordinal: dict[int, JsonObj] = {}
        for pod in pods:
            prefix, _, ordinal = pod["metadata"]["name"].rpartition("-")
            if owned_by(pod, sts) and prefix == name and ordinal.isdigit():
                by_ordinal[int(ordinal)] = pod
        self._reconcile_ordinals(sts, by_ordinal, want, revision)
        ready = [p for p in by_ordinal.values() if is_ready(p)]
        updated = [p for p in by_ordinal.values() if p["metadata"]["labels"].get(REVISION_LABEL) == revision]
        current = (sts.get("status") or {}).get("currentRevision") or revision
        if len(updated) == len(by_ordinal) == want:
            current = revision  # the roll is over
        self._status(
            "statefulsets",
            sts,
            {
                "observedGeneration": meta.get("generation", 1),
                "replicas": len(by_ordinal),
                "readyReplicas": len(ready),
                "availableReplicas": len(ready),
                "currentReplicas": len(by_ordinal) - len(updated) if current != revision else len(updated),
                "updatedReplicas": len(updated),
                "currentRevision": current,
                "updateRevision": revision,
            },
        )

    def _reconcile_ordinals(self, sts: JsonObj, pods: dict[int, JsonObj], want: int, revision: str) -> None:
        meta, spec = sts["metadata"], sts["spec"]
        name, namespace = meta["name"], meta["namespace"]
        for ordinal in range(want):
            pod = pods.get(ordinal)
            if pod is None:
                pod_name = f"{name}-{ordinal}"
                if self.gone(namespace, pod_name):  # the old pod's processes have ended
                    self._create(self._sts_pod(sts, ordinal, revision))
                return
            if not is_ready(pod):
                return  # OrderedReady: one at a time
        if self.running(meta["uid"]) > len(pods):
            return  # a deleted pod is still stopping: one at a time, as the controller waits
        extra = sorted(o for o in pods if o >= want)
        if extra:
            self.api.delete("pods", namespace, pods[extra[-1]]["metadata"]["name"])
            return
        stale = sorted(o for o, p in pods.items() if p["metadata"]["labels"].get(REVISION_LABEL) != revision)
        strategy = (spec.get("updateStrategy") or {}).get("type", "RollingUpdate")
        if stale and strategy == "RollingUpdate":
            self.api.delete("pods", namespace, pods[stale[-1]]["metadata"]["name"])

    def _sts_pod(self, sts: JsonObj, ordinal: int, revision: str) -> JsonObj:
        meta, spec = sts["metadata"], sts["spec"]
        pod_name = f"{meta['name']}-{ordinal}"
        pod = _pod(
            sts,
            pod_name,
            {REVISION_LABEL: revision, "statefulset.kubernetes.io/pod-name": pod_name},
        )
        pod["spec"]["hostname"], pod["spec"]["subdomain"] = pod_name, spec.get("serviceName", "")
        volumes: list[Any] = pod["spec"].setdefault("volumes", [])
        for claim in spec.get("volumeClaimTemplates") or []:
            claim_name = f"{claim['metadata']['name']}-{pod_name}"
            volumes.append(
                {"name": claim["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim_name}}
            )
        return pod
