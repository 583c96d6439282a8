"""Mutating admission for the emulator's pod creates, as kube-apiserver does it.

For each stored MutatingWebhookConfiguration whose rules match a pod CREATE and whose
``namespaceSelector`` / ``objectSelector`` match, an ``admission.k8s.io/v1`` AdmissionReview is
POSTed over HTTPS to the Service named in ``clientConfig`` (resolved to a ready pod behind it,
on the Service's ``targetPort``: there is no kube-proxy), the server certificate checked
against ``caBundle`` for the name ``<service>.<namespace>.svc``; the returned JSONPatch is
applied; a refusal is the API server's 400 with the webhook's message, and a call that fails
is refused or ignored as ``failurePolicy`` says. ``matchConditions`` are evaluated with
cel-python (variables ``object``, ``oldObject`` and ``request``), as the API server does.
"""

from __future__ import annotations

import base64
import json
import ssl
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp
import celpy
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

from harness.kube_objects import ApiError, JsonObj, json_patch

Store = Mapping[tuple[str, str, str | None, str], JsonObj]


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector object (matchLabels and matchExpressions); empty matches everything."""
    if not selector:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression["key"], expression["operator"], expression.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def _rule_matches(rules: list[JsonObj]) -> bool:
    def has(values: list[str], value: str) -> bool:
        return "*" in values or value in values

    return any(
        has(r.get("operations") or [], "CREATE")
        and has(r.get("apiGroups") or [], "")
        and has(r.get("apiVersions") or [], "v1")
        and has(r.get("resources") or [], "pods")
        for r in rules
    )


def _endpoint(store: Store, service: JsonObj) -> tuple[str, int]:
    """A ready pod behind the Service and the container port its ``targetPort`` names."""
    namespace, name = service["namespace"], service["name"]
    svc = store.get(("", "services", namespace, name))
    if svc is None:
        raise ConnectionError(f'service "{name}" not found')
    port = next(
        (p for p in svc["spec"].get("ports") or [] if p.get("port") == service.get("port", 443)),
        None,
    )
    if port is None:
        raise ConnectionError(f"service {name} has no port {service.get('port', 443)}")
    target = port.get("targetPort", port["port"])
    selector = svc["spec"].get("selector") or {}
    for (group, plural, pod_ns, _), pod in store.items():
        if (group, plural, pod_ns) != ("", "pods", namespace) or not selector_matches(
            {"matchLabels": selector}, pod["metadata"].get("labels") or {}
        ):
            continue
        status = pod.get("status") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
        )
        if not ready or not status.get("podIP"):
            continue
        if isinstance(target, int):
            return status["podIP"], target
        for container in pod["spec"].get("containers") or []:
            for declared in container.get("ports") or []:
                if declared.get("name") == target:
                    return status["podIP"], int(declared["containerPort"])
    raise ConnectionError(f'no endpoints available for service "{name}"')


def _conditions_match(webhook: JsonObj, review: JsonObj) -> bool:
    """Every ``matchConditions`` expression is true (an error counts as a failed call)."""
    env = celpy.Environment()
    request = review["request"]
    activation = {
        "object": json_to_cel(request["object"]),
        "oldObject": json_to_cel(request["oldObject"]),
        "request": json_to_cel(request),
    }
    for condition in webhook.get("matchConditions") or []:
        program = env.program(env.compile(condition["expression"]))
        result = program.evaluate(activation)
        if isinstance(result, CELEvalError):
            raise result
        if not bool(result):
            return False
    return True


async def _call(store: Store, webhook: JsonObj, review: JsonObj) -> JsonObj:
    config = webhook["clientConfig"]
    service = config["service"]
    ip, port = _endpoint(store, service)
    context = ssl.create_default_context(cadata=base64.b64decode(config.get("caBundle", "")).decode() or None)
    url = f"https://{ip}:{port}{service.get('path', '/')}"
    timeout = aiohttp.ClientTimeout(total=float(webhook.get("timeoutSeconds", 10)))
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(
            url, json=review, ssl=context, server_hostname=f"{service['name']}.{service['namespace']}.svc"
        ) as response,
    ):
        if response.status != 200:
            raise ConnectionError(f"the server answered {response.status}")
        answer: JsonObj = await response.json()
        return answer


async def admit_pod(store: Store, namespace: str, pod: JsonObj) -> JsonObj:
    """The pod after every matching mutating webhook (or ``ApiError`` when one refuses it)."""
    ns = store.get(("", "namespaces", None, namespace)) or {"metadata": {}}
    # The API server labels every namespace with its name; the emulator's objects may lack it.
    ns_labels = {**(ns["metadata"].get("labels") or {}), "kubernetes.io/metadata.name": namespace}
    kind = ("admissionregistration.k8s.io", "mutatingwebhookconfigurations")
    configurations = sorted(
        (o for k, o in store.items() if k[:2] == kind), key=lambda o: o["metadata"]["name"]
    )
    for configuration in configurations:
        for webhook in configuration.get("webhooks") or []:
            labels = pod.get("metadata", {}).get("labels") or {}
            if not (
                _rule_matches(webhook.get("rules") or [])
                and selector_matches(webhook.get("namespaceSelector"), ns_labels)
                and selector_matches(webhook.get("objectSelector"), labels)
            ):
                continue
            review = {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": str(uuid.uuid4()),
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                    "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                    "name": pod.get("metadata", {}).get("name", ""),
                    "namespace": namespace,
                    "operation": "CREATE",
                    "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                    "object": {**pod, "metadata": {**pod.get("metadata", {}), "namespace": namespace}},
                    "oldObject": None,
                    "dryRun": False,
                    "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
                },
            }
            try:
                if not _conditions_match(webhook, review):
                    continue
                response = (await _call(store, webhook, review)).get("response") or {}
            except (
                OSError,
                aiohttp.ClientError,
                TimeoutError,
                ValueError,
                ssl.SSLError,
                CELEvalError,
            ) as exc:
                if webhook.get("failurePolicy", "Fail") == "Ignore":
                    continue
                raise ApiError(
                    500,
                    "InternalError",
                    f'Internal error occurred: failed calling webhook "{webhook["name"]}": {exc}',
                ) from None
            if not response.get("allowed"):
                message = (response.get("status") or {}).get("message", "")
                raise ApiError(
                    400, "BadRequest", f'admission webhook "{webhook["name"]}" denied the request: {message}'
                )
            if response.get("patch"):
                pod = json_patch(pod, json.loads(base64.b64decode(response["patch"])))
    return pod
