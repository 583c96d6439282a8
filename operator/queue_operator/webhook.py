"""The mutating admission webhook that adds the sidecar to annotated pods (SPEC section 3).

kopf serves it (``@kopf.on.mutate`` on pods, kopf's ``WebhookServer``) on the path
``/inject-sidecar``; the MutatingWebhookConfiguration comes from the Helm chart, so kopf does not
manage one. Here only the lookups of the named queues live; everything else is the pure
``queue_operator.injection``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp.web
import kopf

from queue_operator import metrics, missed_injections
from queue_operator.handlers.options import API_VERSION
from queue_operator.injection import (
    InjectionError,
    InjectionRequest,
    SidecarQueue,
    SidecarSettings,
    has_sidecar,
    inject,
    read_request,
    sidecar_queue,
    wants_injection,
)
from queue_operator.injection.pod import DEFAULT_IMAGE, DEFAULT_RESOURCES
from queue_operator.kube import own_namespace

log = logging.getLogger("queue_operator.webhook")

WEBHOOK_ID = "inject-sidecar"  # kopf's handler id is the URL path: https://<service>/inject-sidecar
DEFAULT_PORT = 9443


class AdmissionServer(kopf.WebhookServer):
    """kopf's webhook server, with the admission review checked and completed before kopf sees it.

    A request that is not an AdmissionReview gets 400 instead of an error deep in kopf. A pod
    created by a controller may arrive without ``metadata.namespace`` (the API server fills it
    in later); the request's ``namespace`` is copied in so the handler can find the queues.
    """

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async def checked(
            request: Any,
            *,
            webhook: str | None = None,
            headers: kopf.Headers | None = None,
            sslpeer: kopf.SSLPeer | None = None,
        ) -> Any:
            started = time.perf_counter()
            result = "error"
            try:
                review = _checked_review(request)
                response = await fn(review, webhook=webhook, headers=headers, sslpeer=sslpeer)
                result = metrics.admission_result(response)
                return response
            finally:
                metrics.ADMISSIONS.labels(result).inc()
                metrics.ADMISSION_SECONDS.observe(time.perf_counter() - started)

        async for client_config in super().__call__(checked):
            yield client_config


def _checked_review(data: Any) -> Any:
    request = data.get("request") if isinstance(data, Mapping) else None
    if not isinstance(request, dict):
        raise aiohttp.web.HTTPBadRequest(reason="expected an AdmissionReview with a request")
    resource = request.get("resource")
    if not isinstance(resource, Mapping) or not all(k in resource for k in ("group", "version", "resource")):
        raise aiohttp.web.HTTPBadRequest(reason="request.resource needs group, version and resource")
    request.setdefault("userInfo", {})
    pod = request.get("object")
    if not isinstance(pod, dict) or not isinstance(pod.get("metadata", {}), dict):
        raise aiohttp.web.HTTPBadRequest(reason="request.object must be an object with metadata")
    metadata = pod.setdefault("metadata", {})
    if not metadata.get("namespace") and isinstance(request.get("namespace"), str):
        metadata["namespace"] = request["namespace"]
    return data


def register(registry: kopf.OperatorRegistry, kube: Any, settings: SidecarSettings) -> None:
    """Install the mutating handler on pods; ``kube`` is a ``queue_operator.kube.Kube``.

    The handler runs in the event loop and answers from an in-memory index of the queues (kept
    by kopf's watch), so an admission costs no API call and never waits for a thread that
    reconciliation work holds. A queue created a moment ago and not indexed yet is read once
    from the API, with the short timeout of ``kube``.
    """
    for plural, index_id in INDEXES.items():
        kopf.index(GROUP, VERSION, plural, id=index_id, registry=registry)(_index_entry)

    @kopf.on.mutate("v1", "pods", id=WEBHOOK_ID, operations=["CREATE"], side_effects=False, registry=registry)
    async def inject_sidecar(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
        pod: Mapping[str, Any] = body
        if not wants_injection(pod):
            return
        try:
            request = read_request(pod)
            if has_sidecar(pod):
                queues: list[SidecarQueue] = []  # left as it is; only new app containers get the URL
            else:
                namespace = str(body.metadata.namespace or "default")
                queues = await _resolve(kube, namespace, request, kwargs)
            mutated = inject(pod, request, queues, settings)
        except InjectionError as exc:
            raise kopf.AdmissionError(str(exc), code=400) from None
        _set_patch(patch, pod, mutated)


GROUP, VERSION = API_VERSION.split("/")
INDEXES = {"delayqueues": "delayqueue_index", "kafkaqueues": "kafkaqueue_index"}
INDEX_OF_KIND = {"DelayQueue": "delayqueue_index", "KafkaQueue": "kafkaqueue_index"}


def _index_entry(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Index: (namespace, name) -> the queue as the webhook needs it (a copy, not kopf's view)."""
    meta = body.metadata
    entry = {
        "metadata": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid},
        "spec": copy.deepcopy(dict(body.spec)),
        "status": copy.deepcopy(dict(body.status)),
    }
    return {(str(meta.namespace), str(meta.name)): entry}


async def _resolve(
    kube: Any, namespace: str, request: InjectionRequest, indexes: Mapping[str, Any]
) -> list[SidecarQueue]:
    bodies: list[Mapping[str, Any]] = []
    missing: list[str] = []
    for ref in request.queues:
        found = _indexed(indexes.get(INDEX_OF_KIND[ref.kind]), namespace, ref.name)
        if found is None:
            try:
                loop = asyncio.get_running_loop()
                found = await loop.run_in_executor(
                    None, kube.read, API_VERSION, ref.kind, namespace, ref.name
                )
            except Exception as exc:  # the API failed: refuse, the pod can be created again
                log.warning("reading %s in %s failed: %s", ref, namespace, exc)
                raise InjectionError(f"cannot read {ref} in namespace {namespace}: {exc}") from None
        if found is None:
            missing.append(str(ref))
        else:
            bodies.append(found)
    if missing:
        raise InjectionError(
            f"queue(s) {', '.join(missing)} not found in namespace {namespace}; create them first or fix "
            "the annotation queue-operator.dev/queues"
        )
    return [
        sidecar_queue(ref, body, i) for i, (ref, body) in enumerate(zip(request.queues, bodies, strict=True))
    ]


def _indexed(index: Any, namespace: str, name: str) -> dict[str, Any] | None:
    if index is None:
        return None
    for entry in index.get((namespace, name), []):
        return copy.deepcopy(entry)  # type: ignore[no-any-return]
    return None


def _set_patch(patch: kopf.Patch, pod: Mapping[str, Any], mutated: Mapping[str, Any]) -> None:
    """Hand kopf the changed parts; it answers with the JSON patch between pod and result."""
    if mutated.get("metadata") != pod.get("metadata"):
        patch["metadata"] = {"annotations": dict(mutated["metadata"].get("annotations") or {})}
    spec, new_spec = pod.get("spec") or {}, mutated.get("spec") or {}
    changed = {key: value for key, value in new_spec.items() if spec.get(key) != value}
    if changed:
        patch["spec"] = changed


# --- command line ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sidecar injection webhook")
    group.add_argument(
        "--webhook-port",
        type=int,
        metavar="PORT",
        help=f"serve the admission webhook on this port (e.g. {DEFAULT_PORT}); default: no webhook",
    )
    group.add_argument("--webhook-cert", metavar="FILE", help="the webhook's TLS certificate (PEM)")
    group.add_argument("--webhook-key", metavar="FILE", help="the webhook's TLS private key (PEM)")
    group.add_argument(
        "--webhook-insecure", action="store_true", help="serve plain HTTP (behind a TLS proxy, or to debug)"
    )
    group.add_argument(
        "--missed-injection-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help=(
            "how often the webhook looks for annotated pods created without their sidecar (while it "
            "was down) and has their controller re-create them; 0: never (default %(default)s)"
        ),
    )
    group.add_argument(
        "--sidecar-image", default=DEFAULT_IMAGE, help="image of the injected sidecar (default %(default)s)"
    )
    group.add_argument(
        "--sidecar-image-pull-policy",
        default="IfNotPresent",
        choices=("Always", "IfNotPresent", "Never"),
        help="imagePullPolicy of the injected sidecar (default %(default)s)",
    )
    group.add_argument(
        "--sidecar-resources",
        type=_resources,
        default=None,
        metavar="JSON",
        help='resources of the injected sidecar, e.g. \'{"requests": {"cpu": "50m"}}\' '
        "(default: requests cpu 50m, memory 64Mi; limits memory 256Mi)",
    )
    group.add_argument(
        "--sidecar-image-pull-secret",
        action="append",
        default=[],
        metavar="NAME",
        help="a Secret added to injected pods' imagePullSecrets "
        "(repeatable; it must exist in the pod's namespace)",
    )


def _resources(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict) or set(value) - {"requests", "limits"}:
        raise argparse.ArgumentTypeError('give a JSON object with "requests" and/or "limits"')
    return value


def sidecar_settings(args: argparse.Namespace) -> SidecarSettings:
    """What every injected sidecar gets, from the command line (the chart's webhook.sidecar values)."""
    return SidecarSettings(
        image=args.sidecar_image,
        image_pull_policy=args.sidecar_image_pull_policy,
        resources=args.sidecar_resources or copy.deepcopy(DEFAULT_RESOURCES),
        image_pull_secrets=tuple(args.sidecar_image_pull_secret),
    )


def enable(args: argparse.Namespace, registry: kopf.OperatorRegistry, settings: Any, kube: Any) -> None:
    """Register the webhook and its server on kopf's ``settings`` when ``--webhook-port`` is given."""
    if args.webhook_port is None:
        return
    if not args.webhook_insecure and not (args.webhook_cert and args.webhook_key):
        raise SystemExit("--webhook-port needs --webhook-cert and --webhook-key (or --webhook-insecure)")
    register(registry, kube, sidecar_settings(args))
    settings.admission.server = AdmissionServer(
        addr="0.0.0.0",
        port=args.webhook_port,
        certfile=None if args.webhook_insecure else args.webhook_cert,
        pkeyfile=None if args.webhook_insecure else args.webhook_key,
        insecure=args.webhook_insecure,
    )
    log.info("serving the sidecar injection webhook on port %d", args.webhook_port)
    if args.missed_injection_interval > 0:
        _sweep_periodically(registry, kube, args.namespace or None, args.missed_injection_interval)


def _sweep_periodically(
    registry: kopf.OperatorRegistry, kube: Any, namespaces: list[str] | None, interval: float
) -> None:
    """From start, and every ``interval`` seconds: see :mod:`queue_operator.missed_injections`."""
    tasks: list[asyncio.Task[None]] = []

    async def loop() -> None:
        skip = [own_namespace()]
        while True:
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, missed_injections.sweep, kube, namespaces, skip
                )
            except Exception as exc:  # the API may be away: try again next round
                log.warning("looking for pods without their sidecar failed: %s", exc)
            await asyncio.sleep(interval)

    @kopf.on.startup(registry=registry, id="missed-injections")
    async def start(**_: Any) -> None:
        tasks.append(asyncio.create_task(loop(), name="missed-injections"))

    @kopf.on.cleanup(registry=registry, id="missed-injections")
    async def stop(**_: Any) -> None:
        for task in tasks:
            task.cancel()
