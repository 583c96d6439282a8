"""A Kubernetes API server emulator over real HTTP, for kopf and the ``kubernetes`` client.

kmock 0.8 (by kopf's author) provides the API discovery of the built-in resources and its
HTTP plumbing; it has gaps that break kopf and the official client (see INFRA.md), so the
object API itself is served here:

- server-set ``uid``, ``resourceVersion`` (one global counter), ``creationTimestamp`` and
  ``generation`` (bumped only when something outside metadata and status changes);
- create answers 201 and 409 on duplicates; GET, LIST, PUT (optimistic concurrency), merge /
  strategic-merge (as merge) / JSON patch (a failed ``test`` answers 422), DELETE,
  delete-collection; ``labelSelector`` and ``fieldSelector`` (name, namespace);
- the ``status`` subresource: status writes change only status, main writes keep the status;
- CRDs: created ones join discovery (kopf scans it), their schema defaults are applied,
  undeclared fields pruned and the common OpenAPI checks enforced (422 with the API
  server's wording; CEL rules are not evaluated); a StatefulSet's fixed spec fields refused on
  update (422, as apps/validation does);
- finalizers (delete sets ``deletionTimestamp``; the object goes once they are removed),
  owner references with background garbage collection of dependents, namespaces whose
  deletion removes their objects;
- mutating admission webhooks for pod creates (``harness.kube_admission``): a real
  AdmissionReview over TLS to the webhook's pod, its JSONPatch applied;
- watch streams (ADDED / MODIFIED / DELETED) resumable from a ``resourceVersion`` (410 when
  too old), ``timeoutSeconds`` honoured.

There are no controllers here: nothing fills Deployment or StatefulSet status; tests write it,
or the e2e bed's kubelet stand-in (``harness.kubelet``) does.
Run it with ``python -m harness.kube_emulator --port PORT`` (see ``harness.kube.KubeApi``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import copy
import datetime
import json
import logging
import secrets
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import kmock
from aiohttp import web

from harness.kube_admission import admit_pod
from harness.kube_objects import (
    ApiError,
    JsonObj,
    apply_defaults,
    field_selector_matches,
    json_patch,
    label_selector_matches,
    merge_patch,
    prune,
    validate,
)

log = logging.getLogger("kube-emulator")

CRD_GROUP, CRD_PLURAL = "apiextensions.k8s.io", "customresourcedefinitions"
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
WATCH_LOG_SIZE = 50_000  # events kept for watches resuming from a resourceVersion


@dataclass
class Kind:
    """A served resource: what the emulator needs to know to store its objects."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    status_subresource: bool
    schema: JsonObj | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


@dataclass(frozen=True)
class Route:
    group: str
    version: str
    plural: str
    namespace: str | None
    name: str | None
    subresource: str | None


@dataclass
class Event:
    rv: int
    group: str
    plural: str
    type: str
    obj: JsonObj
    old: JsonObj | None


@dataclass
class Watcher:
    group: str
    plural: str
    namespace: str | None
    name: str | None
    labels: str | None
    fields: str | None
    queue: asyncio.Queue[JsonObj] = field(default_factory=asyncio.Queue)

    def translate(self, event: Event) -> JsonObj | None:
        """The event this watcher sees: selectors turn entering/leaving into ADDED/DELETED."""
        if (event.group, event.plural) != (self.group, self.plural):
            return None
        meta = event.obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return None
        if self.name is not None and meta.get("name") != self.name:
            return None
        now = self._matches(event.obj)
        before = event.old is not None and self._matches(event.old)
        if event.type == "DELETED":
            return {"type": "DELETED", "object": event.obj} if now or before else None
        if now:
            kind = "ADDED" if event.type == "ADDED" or not before else "MODIFIED"
            return {"type": kind, "object": event.obj}
        return {"type": "DELETED", "object": event.obj} if before else None

    def _matches(self, obj: JsonObj) -> bool:
        labels = obj.get("metadata", {}).get("labels")
        return label_selector_matches(self.labels, labels) and field_selector_matches(self.fields, obj)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_route(path: str) -> Route | None:
    """Split an object API path; ``None`` for discovery and other non-object paths."""
    parts = [part for part in path.split("/") if part]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    namespace_itself = len(rest) == 3 and rest[2] in ("status", "finalize")
    if rest[0] == "namespaces" and len(rest) >= 3 and not (group == "" and namespace_itself):
        namespace, rest = rest[1], rest[2:]
    name = rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    return Route(group, version, rest[0], namespace, name, subresource)


def _spec_part(obj: JsonObj) -> JsonObj:
    """What bumps ``generation``: everything but metadata and status."""
    return {key: value for key, value in obj.items() if key not in ("metadata", "status")}


def _secret_string_data(kind: Kind, obj: JsonObj) -> JsonObj:
    """A Secret's write-only ``stringData`` is stored base64-encoded into ``data``."""
    if (kind.group, kind.plural) == ("", "secrets") and isinstance(obj.get("stringData"), dict):
        encoded = {k: base64.b64encode(str(v).encode()).decode() for k, v in obj.pop("stringData").items()}
        obj["data"] = {**(obj.get("data") or {}), **encoded}
    return obj


# What the API server lets change in a StatefulSet's spec (apps/validation); the rest is fixed.
STATEFULSET_MUTABLE = (
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
)


def _check_statefulset_update(kind: Kind, old: JsonObj, new: JsonObj) -> None:
    """Refuse changes to a StatefulSet's fixed fields with the API server's 422 and wording."""
    if (kind.group, kind.plural) != ("apps", "statefulsets"):
        return
    fixed = [
        key
        for key in set(old.get("spec") or {}) | set(new.get("spec") or {})
        if key not in STATEFULSET_MUTABLE
        and (old.get("spec") or {}).get(key) != (new.get("spec") or {}).get(key)
    ]
    if fixed:
        allowed = ", ".join(f"'{key}'" for key in STATEFULSET_MUTABLE[:-1])
        raise ApiError(
            422,
            "Invalid",
            f'StatefulSet.apps "{new["metadata"]["name"]}" is invalid: spec: Forbidden: updates to '
            f"statefulset spec for fields other than {allowed} and '{STATEFULSET_MUTABLE[-1]}' are forbidden",
        )


class Emulator:
    """The in-memory API server state and its HTTP entry point (:meth:`handle`)."""

    def __init__(self) -> None:
        self.discovery = kmock.KubernetesScaffold()
        self.discovery.resources.load_bundled()
        self.kinds: dict[tuple[str, str, str], Kind] = {}
        for res in self.discovery.resources:
            info = self.discovery.resources[res]
            group, version, plural = str(res.group), str(res.version), str(res.plural)
            self.kinds[(group, version, plural)] = Kind(
                group,
                version,
                plural,
                info.kind or plural.capitalize(),
                bool(info.namespaced),
                "status" in info.subresources,
            )
        self.objects: dict[tuple[str, str, str | None, str], JsonObj] = {}
        self.rv = 0
        self.events: collections.deque[Event] = collections.deque(maxlen=WATCH_LOG_SIZE)
        self.watchers: list[Watcher] = []
        for name in ("default", "kube-system"):
            self._create(self.kinds[("", "v1", "namespaces")], None, {"metadata": {"name": name}})

    # ------------------------------------------------------------ HTTP

    async def handle(self, request: web.Request) -> web.StreamResponse:
        route = parse_route(request.path)
        try:
            if route is None:
                if len(request.path) > 1 and request.path.endswith("/"):  # the client asks for /apis/
                    request = request.clone(rel_url=request.rel_url.with_path(request.path.rstrip("/")))
                response = await self.discovery(request)
                if request.path == "/api/v1" and isinstance(response, web.Response) and response.body:
                    # kmock 0.8 answers groupVersion "/v1" for the core group; clients expect "v1".
                    listing = json.loads(bytes(response.body))  # type: ignore[arg-type]
                    listing["groupVersion"] = "v1"
                    return web.json_response(listing)
                return response
            kind = self.kinds.get((route.group, route.version, route.plural))
            if kind is None or (route.namespace is not None and not kind.namespaced):
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if route.subresource not in (None, "status"):
                raise ApiError(404, "NotFound", f"subresource {route.subresource!r} is not served here")
            if route.subresource == "status" and not kind.status_subresource and route.plural != "namespaces":
                raise ApiError(404, "NotFound", f"{kind.qualified} has no status subresource")
            if request.method == "GET" and request.query.get("watch") in ("true", "1"):
                return await self._watch(request, kind, route)
            body = await self._body(request)
            if (route.group, route.plural, route.name, request.method) == (
                "",
                "pods",
                None,
                "POST",
            ) and isinstance(body, dict):
                body = await admit_pod(self.objects, route.namespace or "default", body)
            status, payload = self._dispatch(request, kind, route, body)
            return web.json_response(payload, status=status, dumps=json.dumps)
        except ApiError as exc:
            return web.json_response(exc.status(), status=exc.code)
        except Exception as exc:  # an emulator bug: answer like an API server would, and say so
            log.exception("failed to serve %s %s", request.method, request.path)
            return web.json_response(ApiError(500, "InternalError", repr(exc)).status(), status=500)

    @staticmethod
    async def _body(request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(400, "BadRequest", "the request body is not JSON") from None

    def _dispatch(self, request: web.Request, kind: Kind, route: Route, body: Any) -> tuple[int, JsonObj]:
        method, params = request.method, request.query
        if method == "GET" and route.name is None:
            return 200, self._list(kind, route, params.get("labelSelector"), params.get("fieldSelector"))
        if method == "POST" and route.name is None:
            return 201, self._create(kind, route.namespace, body)
        if method == "DELETE" and route.name is None:
            return 200, self._delete_collection(kind, route, params.get("labelSelector"))
        if route.name is None:
            raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on a collection")
        key = self._key(kind, route.namespace, route.name)
        if method == "GET":
            return 200, self._get(kind, key)
        if method == "PUT":
            return 200, self._replace(kind, key, body, status_only=route.subresource == "status")
        if method == "PATCH":
            return 200, self._patch(kind, key, body, request.content_type, route.subresource == "status")
        if method == "DELETE":
            options = body if isinstance(body, dict) else {}
            policy = params.get("propagationPolicy") or options.get("propagationPolicy")
            return 200, self._delete(kind, key, orphan=policy == "Orphan")
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")

    async def _watch(self, request: web.Request, kind: Kind, route: Route) -> web.StreamResponse:
        params = request.query
        watcher = Watcher(
            kind.group,
            kind.plural,
            route.namespace,
            route.name,
            params.get("labelSelector"),
            params.get("fieldSelector"),
        )
        since = params.get("resourceVersion") or "0"
        initial = list(self._watch_backlog(kind, watcher, since))
        self.watchers.append(watcher)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(params.get("timeoutSeconds") or 1800)
        try:
            for event in initial:
                await response.write(json.dumps(event).encode() + b"\n")
            while (remaining := deadline - loop.time()) > 0:
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                await response.write(json.dumps(event).encode() + b"\n")
        except ConnectionResetError:
            return response  # the client went away
        finally:
            self.watchers.remove(watcher)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    def _watch_backlog(self, kind: Kind, watcher: Watcher, since: str) -> Iterator[JsonObj]:
        if since == "0":
            for (group, plural, _, _), obj in list(self.objects.items()):
                if (group, plural) == (kind.group, kind.plural):
                    event = watcher.translate(Event(0, group, plural, "ADDED", obj, None))
                    if event is not None:
                        yield event
            return
        try:
            start = int(since)
        except ValueError:
            raise ApiError(400, "BadRequest", f"invalid resourceVersion {since!r}") from None
        if len(self.events) == self.events.maxlen and start < self.events[0].rv - 1:
            expired = ApiError(410, "Expired", f"too old resource version: {start} ({self.events[0].rv})")
            yield {"type": "ERROR", "object": expired.status()}
            return
        for past in list(self.events):
            if past.rv > start and (event := watcher.translate(past)) is not None:
                yield event

    # ------------------------------------------------------------ store

    def _key(self, kind: Kind, namespace: str | None, name: str) -> tuple[str, str, str | None, str]:
        return (kind.group, kind.plural, namespace if kind.namespaced else None, name)

    def _get(self, kind: Kind, key: tuple[str, str, str | None, str]) -> JsonObj:
        obj = self.objects.get(key)
        if obj is None:
            raise ApiError(404, "NotFound", f'{kind.qualified} "{key[3]}" not found')
        return obj

    def _list(self, kind: Kind, route: Route, labels: str | None, fields: str | None) -> JsonObj:
        items = [
            obj
            for (group, plural, namespace, _), obj in self.objects.items()
            if (group, plural) == (kind.group, kind.plural)
            and (route.namespace is None or namespace == route.namespace)
            and label_selector_matches(labels, obj.get("metadata", {}).get("labels"))
            and field_selector_matches(fields, obj)
        ]
        return {
            "apiVersion": kind.api_version,
            "kind": f"{kind.kind}List",
            "metadata": {"resourceVersion": str(self.rv)},
            "items": items,
        }

    def _publish(self, kind: Kind, event_type: str, obj: JsonObj, old: JsonObj | None) -> None:
        event = Event(self.rv, kind.group, kind.plural, event_type, obj, old)
        self.events.append(event)
        for watcher in self.watchers:
            translated = watcher.translate(event)
            if translated is not None:
                watcher.queue.put_nowait(translated)

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _check_schema(self, kind: Kind, obj: JsonObj) -> JsonObj:
        if kind.schema is None:
            return obj
        obj = prune(kind.schema, apply_defaults(kind.schema, obj), root=True)
        errors = validate(
            kind.schema, {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
        )
        if errors:
            name = obj.get("metadata", {}).get("name")
            raise ApiError(
                422, "Invalid", f'{kind.kind}.{kind.group} "{name}" is invalid: {", ".join(errors)}'
            )
        return obj

    def _create(self, kind: Kind, namespace: str | None, body: Any) -> JsonObj:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the object to create must be a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if not meta.get("name"):
            raise ApiError(
                422,
                "Invalid",
                f"{kind.kind} is invalid: metadata.name: Required value: name or generateName is required",
            )
        if kind.namespaced:
            if namespace and meta.get("namespace") not in (None, namespace):
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        key = self._key(kind, meta.get("namespace"), meta["name"])
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{kind.qualified} "{meta["name"]}" already exists')
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        if kind.status_subresource:
            obj.pop("status", None)
        obj = self._check_schema(kind, _secret_string_data(kind, obj))
        for server_set in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
            meta.pop(server_set, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
        if (kind.group, kind.plural) == (CRD_GROUP, CRD_PLURAL):
            self._register_crd(obj)
        if (kind.group, kind.plural) == ("", "namespaces"):
            obj["status"] = {"phase": "Active"}
        meta["resourceVersion"] = self._next_rv()
        self.objects[key] = obj
        self._publish(kind, "ADDED", obj, None)
        if meta.get("ownerReferences") and not self._an_owner_exists(meta):
            # Kubernetes' garbage collector deletes a dependent created after its owners were
            # gone (a controller's reconcile racing the owner's deletion); here at once.
            self._remove(kind, key, orphan=False)
        return obj

    def _an_owner_exists(self, meta: JsonObj) -> bool:
        for ref in meta["ownerReferences"]:
            group, _, version = str(ref.get("apiVersion", "")).rpartition("/")
            owner_kind = next(
                (
                    k
                    for k in self.kinds.values()
                    if (k.group, k.version, k.kind) == (group, version, ref.get("kind"))
                ),
                None,
            )
            if owner_kind is None:
                return True  # a kind this emulator does not serve: not ours to judge
            owner = self.objects.get(self._key(owner_kind, meta.get("namespace"), str(ref.get("name"))))
            if owner is not None and owner["metadata"]["uid"] == ref.get("uid"):
                return True
        return False

    def _replace(
        self, kind: Kind, key: tuple[str, str, str | None, str], body: Any, status_only: bool
    ) -> JsonObj:
        old = self._get(kind, key)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the replacement must be a JSON object")
        given_rv = body.get("metadata", {}).get("resourceVersion")
        if given_rv and given_rv != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", self._conflict(kind, key))
        return self._write(kind, key, old, copy.deepcopy(body), status_only)

    def _patch(
        self,
        kind: Kind,
        key: tuple[str, str, str | None, str],
        body: Any,
        content_type: str,
        status_only: bool,
    ) -> JsonObj:
        old = self._get(kind, key)
        if content_type == "application/json-patch+json":
            new = json_patch(old, body)
        elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
            given_rv = (body.get("metadata") or {}).get("resourceVersion")
            if given_rv and given_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", self._conflict(kind, key))
            new = merge_patch(old, body)
        else:
            raise ApiError(
                415, "UnsupportedMediaType", f"the patch content type {content_type!r} is not supported"
            )
        return self._write(kind, key, old, new, status_only)

    @staticmethod
    def _conflict(kind: Kind, key: tuple[str, str, str | None, str]) -> str:
        return (
            f'Operation cannot be fulfilled on {kind.qualified} "{key[3]}": the object has been modified; '
            "please apply your changes to the latest version and try again"
        )

    def _write(
        self, kind: Kind, key: tuple[str, str, str | None, str], old: JsonObj, new: JsonObj, status_only: bool
    ) -> JsonObj:
        if status_only:
            result = copy.deepcopy(old)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
        else:
            result = new
            result["apiVersion"], result["kind"] = old["apiVersion"], old["kind"]
            if kind.status_subresource:
                if "status" in old:
                    result["status"] = copy.deepcopy(old["status"])
                else:
                    result.pop("status", None)
            meta = result.setdefault("metadata", {})
            for immutable in (
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "namespace",
                "name",
                "generation",
            ):
                if immutable in old["metadata"]:
                    meta[immutable] = old["metadata"][immutable]
                else:
                    meta.pop(immutable, None)
        result["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        result = self._check_schema(kind, _secret_string_data(kind, result))
        if not status_only:
            _check_statefulset_update(kind, old, result)
        if result == old:
            return old  # a no-op write changes nothing, not even the resourceVersion
        if _spec_part(result) != _spec_part(old):
            result["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        if (kind.group, kind.plural) == (CRD_GROUP, CRD_PLURAL):
            self._register_crd(result)
        result["metadata"]["resourceVersion"] = self._next_rv()
        self.objects[key] = result
        self._publish(kind, "MODIFIED", result, old)
        if result["metadata"].get("deletionTimestamp") and not result["metadata"].get("finalizers"):
            return self._remove(kind, key, orphan=False)
        return result

    def _delete(self, kind: Kind, key: tuple[str, str, str | None, str], orphan: bool) -> JsonObj:
        old = self._get(kind, key)
        if not old["metadata"].get("finalizers"):
            return self._remove(kind, key, orphan)
        if old["metadata"].get("deletionTimestamp"):
            return old
        marked = copy.deepcopy(old)
        marked["metadata"].update(deletionTimestamp=now_rfc3339(), deletionGracePeriodSeconds=0)
        marked["metadata"]["resourceVersion"] = self._next_rv()
        self.objects[key] = marked
        self._publish(kind, "MODIFIED", marked, old)
        return marked

    def _delete_collection(self, kind: Kind, route: Route, labels: str | None) -> JsonObj:
        listing = self._list(kind, route, labels, None)
        for obj in listing["items"]:
            key = self._key(kind, obj["metadata"].get("namespace"), obj["metadata"]["name"])
            if key in self.objects:
                self._delete(kind, key, orphan=False)
        return listing

    def _remove(self, kind: Kind, key: tuple[str, str, str | None, str], orphan: bool) -> JsonObj:
        obj = copy.deepcopy(self.objects.pop(key))
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self._publish(kind, "DELETED", obj, obj)
        if (kind.group, kind.plural) == (CRD_GROUP, CRD_PLURAL):
            self._unregister_crd(obj)
        if (kind.group, kind.plural) == ("", "namespaces"):
            self._empty_namespace(obj["metadata"]["name"])
        if not orphan:
            self._collect_garbage()
        return obj

    def _kind_of(self, key: tuple[str, str, str | None, str]) -> Kind:
        return next(k for k in self.kinds.values() if (k.group, k.plural) == key[:2])

    def _collect_garbage(self) -> None:
        """Delete dependents none of whose owners exist any more (background propagation)."""
        live = {obj["metadata"]["uid"] for obj in self.objects.values()}
        for key, obj in list(self.objects.items()):
            owners = obj["metadata"].get("ownerReferences") or []
            if owners and key in self.objects and not any(ref.get("uid") in live for ref in owners):
                self._delete(self._kind_of(key), key, orphan=False)

    def _empty_namespace(self, namespace: str) -> None:
        for key in [key for key in self.objects if key[2] == namespace]:
            if key in self.objects:
                self._delete(self._kind_of(key), key, orphan=False)

    # ------------------------------------------------------------ CRDs

    def _register_crd(self, crd: JsonObj) -> None:
        spec = crd.get("spec", {})
        names = spec.get("names", {})
        group, plural = spec.get("group"), names.get("plural")
        if not group or not plural or not names.get("kind"):
            raise ApiError(
                422,
                "Invalid",
                "CustomResourceDefinition needs spec.group, spec.names.plural and spec.names.kind",
            )
        self._unregister_crd(crd, keep_objects=True)
        for version in spec.get("versions", []):
            if not version.get("served", True):
                continue
            subresources = set(version.get("subresources") or {})
            kind = Kind(
                group,
                version["name"],
                plural,
                names["kind"],
                spec.get("scope", "Namespaced") == "Namespaced",
                "status" in subresources,
                (version.get("schema") or {}).get("openAPIV3Schema"),
            )
            self.kinds[(group, version["name"], plural)] = kind
            self.discovery.resources[f"{group}/{version['name']}/{plural}"] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular") or names["kind"].lower(),
                namespaced=kind.namespaced,
                verbs=set(VERBS),
                shortnames=set(names.get("shortNames") or []),
                categories=set(names.get("categories") or []),
                subresources=subresources,
            )
        crd["status"] = {
            "acceptedNames": names,
            "storedVersions": [v["name"] for v in spec.get("versions", []) if v.get("storage")],
            "conditions": [
                {"type": t, "status": "True", "reason": r, "lastTransitionTime": now_rfc3339(), "message": ""}
                for t, r in (("NamesAccepted", "NoConflicts"), ("Established", "InitialNamesAccepted"))
            ],
        }

    def _unregister_crd(self, crd: JsonObj, keep_objects: bool = False) -> None:
        spec = crd.get("spec", {})
        group, plural = spec.get("group"), spec.get("names", {}).get("plural")
        for key in [key for key in self.kinds if (key[0], key[2]) == (group, plural)]:
            del self.kinds[key]
            with contextlib.suppress(KeyError):
                del self.discovery.resources[f"{key[0]}/{key[1]}/{key[2]}"]
        if not keep_objects:
            for gone in [key for key in self.objects if key[:2] == (group, plural)]:
                obj = self.objects.pop(gone)
                self.rv += 1
                event = Event(self.rv, gone[0], gone[1], "DELETED", obj, obj)
                for watcher in self.watchers:
                    if (translated := watcher.translate(event)) is not None:
                        watcher.queue.put_nowait(translated)


async def serve(host: str, port: int) -> None:
    emulator = Emulator()
    async with emulator.discovery:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", emulator.handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("Kubernetes API emulator on http://%s:%d", host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Kubernetes API emulator for tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
