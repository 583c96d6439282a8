"""DelayQueue: a beanstalkd StatefulSet, its headless Service and a PodDisruptionBudget.

Level-based: ``reconcile`` (on create, update of spec, and resume after an operator restart)
applies each child in its own sub-handler (stable ids, so a retry redoes only what failed),
then writes the status it observes; the ``observe`` timer re-applies children that drifted
or vanished and keeps ``readyReplicas`` and ``Ready`` current. Children carry owner
references, so Kubernetes deletes them with the DelayQueue. A watch on the StatefulSets
brings ``readyReplicas`` and ``Ready`` up to date as soon as pods become ready.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping
from typing import Any

import kopf

from queue_operator import drain, redis_check
from queue_operator.builders import beanstalkd, network_policy, nodes, redis, scaling
from queue_operator.builders.labels import MANAGED_BY
from queue_operator.handlers import autoscaling
from queue_operator.handlers.conditions import Verdict, parse_or_report, report, status_of, write_status
from queue_operator.handlers.options import (
    API_VERSION,
    Options,
    Runtime,
    register_level_based,
)
from queue_operator.kube import Kube, KubeError, SecretMissing, SecretNotAllowed
from queue_operator.spec import DelayQueueSpec, SpecError, provisioned_redis_name

PLURAL = "delayqueues"
log = logging.getLogger(__name__)


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


def reconcile(
    body: kopf.Body, patch: kopf.Patch, memo: Any, logger: kopf.Logger, retry: int = 0, **_: Any
) -> None:
    """Apply every child, then report. An apply the API refuses (RBAC, an immutable field) is
    reported in ``Degraded`` with the API's message and retried; ``observedGeneration`` stays."""
    spec = parse(body, patch)
    runtime: Runtime = memo.runtime
    with _exclusive(body):
        failure = apply_children(runtime.kube, body, spec, logger, only_drifted=False)
        progress = scale_down(runtime, body, spec, logger) if failure is None else None
        status = observe_state(runtime.kube, body, spec, failure, progress=progress)
    write_status(body, patch, with_redis_check(runtime, body, spec, status))
    if failure is not None:
        delay = runtime.options.backoff(retry)
        raise kopf.TemporaryError(f"{failure}; retrying in {delay:g}s", delay=delay)
    if progress is not None and progress.status is not None:
        # Level-based, but a drain should not wait for the periodic check: come back soon.
        delay = max(1.0, min(progress.waiting or 2.0, 5.0))
        raise kopf.TemporaryError(f"draining: {progress.status['message']}", delay=delay)


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _exclusive(body: kopf.Body) -> threading.Lock:
    """One DelayQueue's children are applied by one handler at a time: kopf runs the periodic
    check beside the change handlers, and a check that read the StatefulSet before a drain
    finished must not grow it back after the drain shrank it."""
    with _locks_guard:
        return _locks.setdefault(str(body.metadata.uid), threading.Lock())


@dataclasses.dataclass(frozen=True)
class DrainProgress:
    status: dict[str, Any] | None  # status.drain; None once no node is leaving
    waiting: float = 0.0
    error: str | None = None


def scale_down(runtime: Runtime, body: kopf.Body, spec: DelayQueueSpec, logger: kopf.Logger) -> DrainProgress:
    """Move the leaving nodes' jobs, then shrink the StatefulSet; see queue_operator.drain."""
    kube, namespace = runtime.kube, str(body.metadata.namespace)
    current = drain.plan(
        body, spec, kube.read("apps/v1", "StatefulSet", namespace, beanstalkd.child_name(body))
    )
    if not current.draining:
        return DrainProgress(None)
    try:
        result = drain.step(kube, body, spec, current, grace=runtime.options.drain_grace)
    except (SecretMissing, KubeError) as exc:
        return DrainProgress(
            {"nodes": current.draining, "message": str(exc)}, error=f"reading the Redis URL: {exc}"
        )
    if result.error is not None:
        logger.warning("drain of %s stuck: %s; retrying", current.draining, result.error)
    if not result.finished:
        status = {**result.status, "error": result.error} if result.error else result.status
        return DrainProgress(status, result.waiting, result.error)
    # Empty: now the nodes may go. The ConfigMap first, so that nothing consumes a node after it left.
    final = drain.Plan(spec.replicas, current.active, [])
    for child in [nodes.configmap(body, final.active, []), beanstalkd.statefulset(body, spec)]:
        kopf.adopt(child, owner=body)
        kube.apply(child)
    logger.info(
        "drained %s (%s job copies moved); StatefulSet scaled to %d",
        current.draining,
        result.status["moved"],
        spec.replicas,
    )
    return DrainProgress(None)


def apply_children(
    kube: Kube, body: kopf.Body, spec: DelayQueueSpec, logger: kopf.Logger, *, only_drifted: bool
) -> str | None:
    """Apply the children (all, or those missing or drifted); the first refusal, described."""
    namespace = str(body.metadata.namespace)
    if spec.redis_provisioned:
        failure = _ensure_redis_secret(kube, body, logger)
        if failure is not None:
            return failure
    # While nodes drain, the StatefulSet keeps them and the ConfigMap marks them draining.
    current = drain.plan(
        body, spec, kube.read("apps/v1", "StatefulSet", namespace, beanstalkd.child_name(body))
    )
    running = dataclasses.replace(spec, replicas=current.replicas)
    node_list = nodes.configmap(body, current.active, current.draining)
    policy = network_policy.network_policy(body, spec)
    for child in [node_list, *beanstalkd.children(body, running), *redis.children(body, spec), policy]:
        kind, name = child["kind"], child["metadata"]["name"]
        if only_drifted:
            actual = kube.read(child["apiVersion"], kind, namespace, name)
            part = "spec" if "spec" in child else "data"  # a ConfigMap has data, no spec
            if actual is not None and contains(actual.get(part), child[part]):
                continue
            logger.info("%s %s is missing or drifted; re-applying it", kind, name)
        kopf.adopt(child, owner=body)
        try:
            kube.apply(child)
        except KubeError as exc:
            return f"applying {kind} {name} failed: {exc}"
        logger.debug("applied %s %s", kind, name)
    return autoscaling.sync(kube, body, scaled_object(body, spec))


def scaled_object(body: Mapping[str, Any], spec: DelayQueueSpec) -> dict[str, Any] | None:
    if spec.autoscaling is None:
        return None
    triggers = scaling.beanstalkd_triggers(beanstalkd.endpoints(body, spec), spec.tube, spec.autoscaling)
    return scaling.scaled_object(body, spec.autoscaling, triggers)


def _ensure_redis_secret(kube: Kube, body: kopf.Body, logger: kopf.Logger) -> str | None:
    """Create the provisioned Redis's Secret once; an existing one is kept as it is (the running
    Redis has its password)."""
    name = provisioned_redis_name(str(body.metadata.name))
    namespace = str(body.metadata.namespace)
    try:
        if kube.read("v1", "Secret", namespace, name) is not None:
            return None
        secret = redis.secret(body)
        kopf.adopt(secret, owner=body)
        kube.create(secret)
    except KubeError as exc:
        if exc.status == 409:
            return None  # created meanwhile
        return f"creating Secret {name} failed: {exc}"
    logger.info("created Secret %s with the provisioned Redis's password", name)
    return None


def observe_state(
    kube: Kube,
    body: Mapping[str, Any],
    spec: DelayQueueSpec,
    apply_failure: str | None = None,
    *,
    applied: bool | None = None,  # default: applied unless the apply failed
    progress: DrainProgress | None = None,  # None: keep what status.drain says
) -> dict[str, Any]:
    """Read what the status reports on: the StatefulSet, and that the Redis Secret is there."""
    namespace = str(body["metadata"]["namespace"])
    statefulset = kube.read("apps/v1", "StatefulSet", namespace, beanstalkd.child_name(body))
    redis_statefulset = None
    if spec.redis_provisioned:
        redis_name = provisioned_redis_name(str(body["metadata"]["name"]))
        redis_statefulset = kube.read("apps/v1", "StatefulSet", namespace, redis_name) or {}
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
    if apply_failure is not None:
        redis_problem = redis_problem or ("ApplyFailed", apply_failure)
    applied = apply_failure is None if applied is None else applied
    if progress is None:
        drain_status = (body.get("status") or {}).get("drain")
        progress = DrainProgress(drain_status) if drain_status else DrainProgress(None)
    status = observed_status(
        body,
        spec,
        statefulset,
        redis_problem,
        applied=applied and progress.status is None,
        redis_statefulset=redis_statefulset,
        progress=progress,
    )
    status["drain"] = progress.status
    return status


def statefulset_changed(type: str | None, body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Pods became ready (or not): bring the owning DelayQueue's status up to date at once."""
    owner = next(
        (ref for ref in body.metadata.get("ownerReferences") or [] if ref.get("kind") == "DelayQueue"), None
    )
    if owner is None or type == "DELETED":
        return  # a vanished StatefulSet is noticed and re-created by the periodic check
    refresh_status(memo.runtime, str(body.metadata.namespace), owner["name"], owner.get("uid"), logger)


def refresh_status(
    runtime: Runtime,
    namespace: str,
    name: str,
    uid: str | None = None,
    logger: logging.Logger | kopf.Logger = log,
) -> None:
    """Write what is observed now into a DelayQueue's status, outside its change handlers.

    Only the observed fields move; ``observedGeneration`` stays for ``reconcile`` to advance.
    A refused apply reported by ``reconcile`` stays reported until an apply succeeds.
    """
    kube: Kube = runtime.kube
    queue = kube.read(API_VERSION, "DelayQueue", namespace, name)
    if (
        queue is None
        or (uid is not None and queue["metadata"].get("uid") != uid)
        or queue["metadata"].get("deletionTimestamp")
    ):
        return
    try:
        spec = DelayQueueSpec.from_body(queue)
    except SpecError:
        return
    current = queue.get("status") or {}
    # The last apply's outcome is the reconcile's to change; this only moves what pods decide.
    degraded: Mapping[str, Any] = next(
        (c for c in current.get("conditions") or [] if c.get("type") == "Degraded"), {}
    )
    failure = degraded.get("message") if degraded.get("reason") == "ApplyFailed" else None
    applied = current.get("observedGeneration") == queue["metadata"].get("generation")
    desired = with_redis_check(
        runtime, queue, spec, observe_state(kube, queue, spec, failure, applied=applied)
    )
    changes = {
        key: desired[key] for key in ("readyReplicas", "conditions") if current.get(key) != desired[key]
    }
    if changes:
        kube.patch_status(API_VERSION, "DelayQueue", namespace, name, changes)
        logger.debug("DelayQueue %s: %s/%s nodes ready", name, desired["readyReplicas"], spec.replicas)


def observe(body: kopf.Body, patch: kopf.Patch, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """The periodic check: heal drifted or missing children, then write what is observed.

    Children that all match the spec mean this generation is applied, whoever applied it.
    """
    try:
        spec = DelayQueueSpec.from_body(body)
    except SpecError as exc:
        report(body, patch, Verdict.problem("InvalidSpec", str(exc)))
        return
    runtime: Runtime = memo.runtime
    with _exclusive(body):
        failure = apply_children(runtime.kube, body, spec, logger, only_drifted=True)
    status = observe_state(runtime.kube, body, spec, failure)
    write_status(body, patch, with_redis_check(runtime, body, spec, status))


def with_redis_check(
    runtime: Runtime, body: Mapping[str, Any], spec: DelayQueueSpec, status: dict[str, Any]
) -> dict[str, Any]:
    """``status`` with the ``RedisDurable`` condition as last checked (never waiting for Redis:
    a check still running reports itself when done; see queue_operator.redis_check)."""
    metadata = body["metadata"]
    namespace, name, uid = str(metadata["namespace"]), str(metadata["name"]), metadata.get("uid")
    verdict = runtime.redis_checks.verdict(
        runtime.kube, namespace, name, spec, then=lambda: refresh_status(runtime, namespace, name, uid)
    )
    previous = (body.get("status") or {}).get("conditions")
    redis_check.with_condition(status, previous, int(metadata.get("generation") or 1), verdict)
    return status


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
    problem: tuple[str, str] | None = None,  # (condition reason, message) of what keeps it Degraded
    *,
    applied: bool = True,
    redis_statefulset: Mapping[str, Any] | None = None,  # the provisioned Redis's, when there is one
    progress: DrainProgress | None = None,
) -> dict[str, Any]:
    ready = int(((statefulset or {}).get("status") or {}).get("readyReplicas") or 0)
    fields = {"readyReplicas": ready, "endpoints": beanstalkd.endpoints(body, spec)}
    verdict = nodes_verdict(beanstalkd.child_name(body), spec.replicas, statefulset)
    if redis_statefulset is not None and verdict.ready:
        redis_ready = int((redis_statefulset.get("status") or {}).get("readyReplicas") or 0)
        if redis_ready < 1:
            name = provisioned_redis_name(str(body["metadata"]["name"]))
            message = f"the nodes are ready; waiting for the provisioned Redis (StatefulSet {name})"
            verdict = Verdict(False, "RedisNotReady", message, progressing=True)
    if progress is not None and progress.status is not None:
        verdict = drain_verdict(spec, verdict.ready, progress)
    if problem is not None:
        reason, message = problem
        # A refused apply leaves the previous generation running: Ready still says whether it serves.
        serving = verdict.ready and reason == "ApplyFailed"
        verdict = Verdict(serving, reason, message, degraded=True)
    return status_of(body, dataclasses.replace(verdict, applied=applied and problem is None), **fields)


def drain_verdict(spec: DelayQueueSpec, ready: bool, progress: DrainProgress) -> Verdict:
    """Progressing while nodes drain; Degraded (DrainStuck) while the drain cannot go on."""
    status = progress.status or {}
    leaving = ", ".join(str(node).split(".")[0] for node in status.get("nodes") or [])
    message = f"scaling down to {spec.replicas}: draining {leaving}: {status.get('message', '')}"
    if status.get("moved"):
        message += f" ({status['moved']} job copies moved so far)"
    error = progress.error or status.get("error")
    if not error:
        return Verdict(ready, "Draining", message, progressing=True)
    stuck = f"the drain of {leaving} cannot finish, retrying (never forced): {error}"
    return Verdict(
        ready,
        "Draining",
        message,
        progressing=True,
        degraded=True,
        degraded_reason="DrainStuck",
        degraded_message=stuck,
    )


def nodes_verdict(name: str, replicas: int, statefulset: Mapping[str, Any] | None) -> Verdict:
    """Ready and Progressing from the StatefulSet as its controller reports it.

    Ready needs every node ready and on the current revision; a rollout in progress
    (``updatedReplicas`` short, revisions differing, or the controller not having seen the
    latest spec) is Progressing, not Ready.
    """
    if statefulset is None:
        return Verdict(False, "Provisioning", f"StatefulSet {name} does not exist yet", progressing=True)
    status = statefulset.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    generation = (statefulset.get("metadata") or {}).get("generation")
    seen = status.get("observedGeneration")
    rolling = (
        updated < replicas
        or (status.get("currentRevision") or "") != (status.get("updateRevision") or "")
        or (generation is not None and seen is not None and int(seen) < int(generation))
    )
    if ready < replicas:
        message = f"{ready}/{replicas} beanstalkd nodes are ready; waiting for the pods of StatefulSet {name}"
        return Verdict(False, "NodesNotReady", message, progressing=True)
    current = int(status.get("replicas") or ready)
    same_revision = (status.get("currentRevision") or "") == (status.get("updateRevision") or "")
    if current > replicas and updated >= replicas and same_revision:
        # Shrinking after a drain (the controller may not have observed it yet): no rollout.
        message = f"{ready} beanstalkd nodes are ready; StatefulSet {name} is scaling down to {replicas}"
        return Verdict(True, "ScalingDown", message, progressing=True)
    if rolling:
        message = (
            f"StatefulSet {name} is rolling out: {updated}/{replicas} nodes updated, {ready}/{replicas} ready"
        )
        return Verdict(False, "RollingOut", message, progressing=True)
    return Verdict(True, "NodesReady", f"{ready}/{replicas} beanstalkd nodes are ready")
