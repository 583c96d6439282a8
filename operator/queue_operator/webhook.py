"""The mutating admission webhook that adds the sidecar to annotated pods (SPEC section 3).

Served on ``/inject-sidecar`` by :class:`queue_operator.admission_server.AdmissionServer` (its
own thread and event loop), answered from :class:`queue_operator.queue_cache.QueueCache` (its own
watch threads), so neither kopf's loop nor the controller's work delays an admission. The
MutatingWebhookConfiguration comes from the Helm chart. Here only the AdmissionReview handling
and the lookups of the named queues live; everything else is the pure ``queue_operator.injection``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import json
import logging
from collections.abc import Mapping
from typing import Any

import kopf
import orjson

from queue_operator import missed_injections
from queue_operator.admission_server import AdmissionServer, BadReview
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
from queue_operator.kube import Kube, own_namespace
from queue_operator.queue_cache import QueueCache

log = logging.getLogger("queue_operator.webhook")

PATH = "/inject-sidecar"
DEFAULT_PORT = 9443
SYNC_WAIT_SECONDS = 10.0  # at start, serve only once the queues are listed, or after this long


class Injector:
    """AdmissionReview in, AdmissionReview with the answer out (``BadReview`` for a malformed one)."""

    def __init__(self, cache: QueueCache, kube: Kube, settings: SidecarSettings) -> None:
        self.cache = cache
        self.kube = kube  # reads a queue the cache has not seen yet (short timeout)
        self.settings = settings

    async def review(self, data: Any) -> dict[str, Any]:
        request = checked_request(data)
        answer: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": True}
        try:
            patch = await self._patch(request)
        except InjectionError as exc:
            answer.update(allowed=False, status={"message": str(exc), "code": 400})
        except Exception as exc:  # a bug: refuse (failurePolicy decides nothing here) and say why
            log.exception("answering an admission review failed")
            answer.update(allowed=False, status={"message": str(exc) or repr(exc), "code": 500})
        else:
            if patch:
                answer["patch"] = base64.b64encode(orjson.dumps(patch)).decode("ascii")
                answer["patchType"] = "JSONPatch"
        return {
            "apiVersion": data.get("apiVersion", "admission.k8s.io/v1"),
            "kind": data.get("kind", "AdmissionReview"),
            "response": answer,
        }

    async def _patch(self, request: Mapping[str, Any]) -> list[dict[str, Any]]:
        pod: dict[str, Any] = request["object"]
        if request.get("operation", "CREATE") != "CREATE" or not wants_injection(pod):
            return []
        wanted = read_request(pod)
        if has_sidecar(pod):
            queues: list[SidecarQueue] = []  # left as it is; only new app containers get the URL
        else:
            namespace = str(pod["metadata"].get("namespace") or "default")
            queues = await self._resolve(namespace, wanted)
        return json_patch(pod, inject(pod, wanted, queues, self.settings))

    async def _resolve(self, namespace: str, request: InjectionRequest) -> list[SidecarQueue]:
        bodies: list[Mapping[str, Any]] = []
        missing: list[str] = []
        for ref in request.queues:
            found = self.cache.get(ref.kind, namespace, ref.name)
            if found is None:  # created a moment ago, or the cache is still listing: ask the API
                try:
                    loop = asyncio.get_running_loop()
                    found = await loop.run_in_executor(
                        None, self.kube.read, API_VERSION, ref.kind, namespace, ref.name
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
                f"queue(s) {', '.join(missing)} not found in namespace {namespace}; create them first or "
                "fix the annotation queue-operator.dev/queues"
            )
        return [
            sidecar_queue(ref, copy.deepcopy(body), i)
            for i, (ref, body) in enumerate(zip(request.queues, bodies, strict=True))
        ]


def checked_request(data: Any) -> dict[str, Any]:
    """The review's ``request``, checked; a pod created by a controller may arrive without
    ``metadata.namespace`` (the API server fills it in later): the request's is copied in."""
    request = data.get("request") if isinstance(data, Mapping) else None
    if not isinstance(request, dict):
        raise BadReview("expected an AdmissionReview with a request")
    resource = request.get("resource")
    if not isinstance(resource, Mapping) or not all(k in resource for k in ("group", "version", "resource")):
        raise BadReview("request.resource needs group, version and resource")
    if (resource.get("group"), resource.get("resource")) != ("", "pods"):
        raise BadReview(f"this webhook admits pods, not {resource.get('resource')}")
    pod = request.get("object")
    if not isinstance(pod, dict) or not isinstance(pod.get("metadata", {}), dict):
        raise BadReview("request.object must be an object with metadata")
    metadata = pod.setdefault("metadata", {})
    if not metadata.get("namespace") and isinstance(request.get("namespace"), str):
        metadata["namespace"] = request["namespace"]
    return request


def json_patch(pod: Mapping[str, Any], mutated: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The JSONPatch from ``pod`` to ``mutated``: the changed annotations, labels and spec fields."""
    ops: list[dict[str, Any]] = []

    def put(path: str, old: Mapping[str, Any], key: str, value: Any) -> None:
        op = "replace" if key in old else "add"
        ops.append({"op": op, "path": f"{path}/{_pointer(key)}", "value": value})

    meta, new_meta = pod.get("metadata") or {}, mutated.get("metadata") or {}
    for key in ("annotations", "labels"):
        if new_meta.get(key) != meta.get(key):
            put("/metadata", meta, key, new_meta.get(key) or {})
    spec, new_spec = pod.get("spec"), mutated.get("spec") or {}
    if not isinstance(spec, Mapping):
        if new_spec:
            ops.append({"op": "add", "path": "/spec", "value": new_spec})
        return ops
    for key, value in new_spec.items():
        if spec.get(key) != value:
            put("/spec", spec, key, value)
    return ops


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


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


def enable(args: argparse.Namespace, registry: kopf.OperatorRegistry) -> None:
    """Serve the webhook when ``--webhook-port`` is given: the queue cache and the HTTPS server
    start now, on their own threads; kopf only runs the missed-injection sweep and stops them."""
    if args.webhook_port is None:
        return
    if not args.webhook_insecure and not (args.webhook_cert and args.webhook_key):
        raise SystemExit("--webhook-port needs --webhook-cert and --webhook-key (or --webhook-insecure)")
    # Its own API client with a short timeout: a lookup must answer within the admission timeout.
    kube = Kube.from_environment(timeout=5.0)
    cache = QueueCache(kube, args.namespace or (), watch_timeout=args.watch_timeout)
    injector = Injector(cache, kube, sidecar_settings(args))
    server = AdmissionServer(
        injector.review,
        port=args.webhook_port,
        path=PATH,
        certfile=None if args.webhook_insecure else args.webhook_cert,
        keyfile=None if args.webhook_insecure else args.webhook_key,
    )
    cache.start()
    server.start(before=lambda: cache.wait_synced(SYNC_WAIT_SECONDS))

    @kopf.on.probe(registry=registry, id="webhook")
    def serving(**_: Any) -> bool:
        if server.failed:
            raise RuntimeError("the admission server stopped")  # the liveness probe fails: restart
        return server.serving

    @kopf.on.cleanup(registry=registry, id="webhook")
    def stop(**_: Any) -> None:
        server.stop()
        cache.stop()

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
