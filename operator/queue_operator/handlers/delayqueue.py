"""DelayQueue: a beanstalkd StatefulSet, its headless Service and a PodDisruptionBudget.

Level-based: ``reconcile`` (on create, update of spec, and resume after an operator restart)
applies each child in its own sub-handler (stable ids, so a retry redoes only what failed),
then writes the status it observes; the ``observe`` timer re-applies children that drifted
or vanished and keeps ``readyReplicas`` and ``Ready`` current. Children carry owner
references, so Kubernetes deletes them with the DelayQueue. A watch on the StatefulSets
brings ``readyReplicas`` and ``Ready`` up to date as soon as pods become ready.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from queue_operator.builders import beanstalkd
from queue_operator.builders.labels import MANAGED_BY
from queue_operator.handlers.conditions import parse_or_report, set_ready, with_ready, write_status
from queue_operator.handlers.options import (
    API_VERSION,
    Options,
    Runtime,
    register_level_based,
)
from queue_operator.kube import Kube, SecretMissing, SecretNotAllowed
from queue_operator.spec import DelayQueueSpec, SpecError

PLURAL = "delayqueues"


def register(registry: kopf.OperatorRegistry, options: Options) -> None:
    register_level_based(registry, PLURAL, options, reconcile, observe)
    kopf.on.event(
        "apps",
        "v1",
        "statefulsets",
        id="statefulset-status",
        registry=registry,
        labels={"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/name": beanstalkd.APP},
    )(statefulset_changed)


def parse(body: Mapping[str, Any], patch: kopf.Patch) -> DelayQueueSpec:
    return parse_or_report(DelayQueueSpec.from_body, body, patch)


def reconcile(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
    spec = parse(body, patch)
    backoff = memo.runtime.options.retry_delay
    for child in beanstalkd.children(body, spec):
        kopf.register(apply_child, id=child["kind"].lower(), param=child, backoff=backoff)
    kopf.register(report_status, id="status", backoff=backoff)


def apply_child(*, param: Any = None, body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    child = dict(param)
    kopf.adopt(child, owner=body)
    runtime.kube.apply(child)
    logger.info("applied %s %s", child["kind"], child["metadata"]["name"])


def report_status(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
    spec = parse(body, patch)
    write_status(body, patch, observe_state(memo.runtime.kube, body, spec))


def observe_state(kube: Kube, body: Mapping[str, Any], spec: DelayQueueSpec) -> dict[str, Any]:
    """Read what the status reports on: the StatefulSet, and that the Redis Secret is there."""
    namespace = str(body["metadata"]["namespace"])
    statefulset = kube.read("apps/v1", "StatefulSet", namespace, beanstalkd.child_name(body))
    redis_problem = None
    if spec.redis_secret_ref is not None:
        try:
            kube.secret_value(namespace, spec.redis_secret_ref.name, spec.redis_secret_ref.key)
        except SecretNotAllowed as exc:
            redis_problem = ("SecretNotAllowed", f"spec.redis.secretRef: {exc}")
        except SecretMissing as exc:
            redis_problem = (
                "RedisSecretMissing",
                f"spec.redis.secretRef: {exc}; create it, the consumers read the Redis URL from it",
            )
    return observed_status(body, spec, statefulset, redis_problem)


def statefulset_changed(type: str | None, body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Pods became ready (or not): bring the owning DelayQueue's status up to date at once.

    Only the observed fields move; ``observedGeneration`` stays for ``reconcile`` to advance.
    """
    owner = next(
        (ref for ref in body.metadata.get("ownerReferences") or [] if ref.get("kind") == "DelayQueue"), None
    )
    if owner is None or type == "DELETED":
        return  # a vanished StatefulSet is noticed and re-created by the periodic check
    kube: Kube = memo.runtime.kube
    namespace = str(body.metadata.namespace)
    queue = kube.read(API_VERSION, "DelayQueue", namespace, owner["name"])
    if (
        queue is None
        or queue["metadata"].get("uid") != owner.get("uid")
        or queue["metadata"].get("deletionTimestamp")
    ):
        return
    try:
        spec = DelayQueueSpec.from_body(queue)
    except SpecError:
        return
    current = queue.get("status") or {}
    observed = current.get("observedGeneration") or queue["metadata"].get("generation")
    view = {**queue, "metadata": {**queue["metadata"], "generation": observed}}
    desired = observe_state(kube, view, spec)
    changes = {
        key: desired[key] for key in ("readyReplicas", "conditions") if current.get(key) != desired[key]
    }
    if changes:
        kube.patch_status(API_VERSION, "DelayQueue", namespace, owner["name"], changes)
        logger.debug(
            "DelayQueue %s: %s/%s nodes ready", owner["name"], desired["readyReplicas"], spec.replicas
        )


def observe(body: kopf.Body, patch: kopf.Patch, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """The periodic check: heal drifted or missing children, then write what is observed."""
    try:
        spec = DelayQueueSpec.from_body(body)
    except SpecError as exc:
        set_ready(body, patch, False, "InvalidSpec", str(exc))
        return
    kube = memo.runtime.kube
    namespace = str(body.metadata.namespace)
    for child in beanstalkd.children(body, spec):
        actual = kube.read(child["apiVersion"], child["kind"], namespace, child["metadata"]["name"])
        if actual is None or not contains(actual.get("spec"), child["spec"]):
            logger.info(
                "%s %s is missing or drifted; re-applying it", child["kind"], child["metadata"]["name"]
            )
            kopf.adopt(child, owner=body)
            kube.apply(child)
    write_status(body, patch, observe_state(kube, body, spec))


def contains(actual: Any, desired: Any) -> bool:
    """Whether ``actual`` has everything ``desired`` asks for (the API server adds defaults)."""
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(contains(actual.get(k), v) for k, v in desired.items())
    if isinstance(desired, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(desired)
            and all(contains(a, d) for a, d in zip(actual, desired, strict=True))
        )
    return bool(actual == desired)


def observed_status(
    body: Mapping[str, Any],
    spec: DelayQueueSpec,
    statefulset: Mapping[str, Any] | None,
    redis_problem: tuple[str, str] | None = None,  # (condition reason, message)
) -> dict[str, Any]:
    name = beanstalkd.child_name(body)
    endpoints = beanstalkd.endpoints(body, spec)
    ready = int(((statefulset or {}).get("status") or {}).get("readyReplicas") or 0)
    if redis_problem is not None:
        reason, message = redis_problem
        return with_ready(body, False, reason, message, readyReplicas=ready, endpoints=endpoints)
    if statefulset is None:
        return with_ready(
            body,
            False,
            "Provisioning",
            f"StatefulSet {name} does not exist yet",
            readyReplicas=0,
            endpoints=endpoints,
        )
    if ready >= spec.replicas:
        reason, message = "NodesReady", f"{ready}/{spec.replicas} beanstalkd nodes are ready"
    else:
        reason = "NodesNotReady"
        message = (
            f"{ready}/{spec.replicas} beanstalkd nodes are ready; waiting for the pods of StatefulSet {name}"
        )
    return with_ready(body, ready >= spec.replicas, reason, message, readyReplicas=ready, endpoints=endpoints)
