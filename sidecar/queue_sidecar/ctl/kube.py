"""Queues read from the cluster: the DelayQueue / KafkaQueue resources and the Secrets they name.

The settings built here are the sidecar's own config models, filled the way the operator
fills a sidecar's config: nodes from ``status.endpoints``, the Redis URL from ``spec.redis``
(or its Secret), brokers, topic, group and auth from the KafkaQueue's ``spec``. Secret values
are held in memory only (a CA bundle goes to a private temporary file that is removed on
close).
"""

from __future__ import annotations

import base64
import contextlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from pydantic import ValidationError

from queue_engine.errors import ConfigError, NotFound, Unavailable
from queue_sidecar.config import DelayQueueConfig, KafkaQueueConfig
from queue_sidecar.ctl.source import Kind, QueueSettings, unknown_queue

GROUP = "queue-operator.dev"
VERSION = "v1alpha1"
PLURALS: dict[Kind, str] = {"DelayQueue": "delayqueues", "KafkaQueue": "kafkaqueues"}
DEFAULT_CA_KEY = "ca.crt"


class KubeSource:
    """Queues of one namespace, through a kubeconfig context (the current one by default)."""

    def __init__(
        self,
        context: str | None = None,
        namespace: str | None = None,
        *,
        kubeconfig: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        from kubernetes import client, config  # noqa: PLC0415 - only kube mode pays for the import
        from urllib3.exceptions import HTTPError  # noqa: PLC0415

        try:
            # No file given: the client's default, $KUBECONFIG (several files merged) or ~/.kube/config.
            self._api_client = config.new_client_from_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]
            contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        except config.ConfigException as exc:
            raise ConfigError(
                f"no usable kubeconfig ({exc}); set KUBECONFIG, or pass --config FILE to use a sidecar config"
            ) from None
        chosen = next((c for c in contexts if c["name"] == context), active) if context else active
        self.context = chosen["name"] if chosen else context or "(none)"
        self.namespace = namespace or ((chosen or {}).get("context") or {}).get("namespace") or "default"
        self._custom = client.CustomObjectsApi(self._api_client)
        self._core = client.CoreV1Api(self._api_client)
        self._api_exception = client.ApiException
        self._unreachable = (OSError, HTTPError)
        self._timeout = timeout
        self._temp_files: list[Path] = []

    def find(self, name: str, kind: Kind | None) -> QueueSettings:
        for candidate in [kind] if kind else list(PLURALS):
            body = self._get(candidate, name)
            if body is not None:
                return self._settings(candidate, body)
        where = f"in namespace {self.namespace!r} (context {self.context})"
        raise unknown_queue(name, kind, where, self._list())

    def close(self) -> None:
        for path in self._temp_files:
            with contextlib.suppress(OSError):
                path.unlink()
        self._api_client.close()

    # -------------------------------------------------------------- reading the API

    def _get(self, kind: Kind, name: str) -> dict[str, Any] | None:
        try:
            body = cast(
                dict[str, Any],
                self._custom.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURALS[kind], name, _request_timeout=self._timeout
                ),
            )
        except self._api_exception as exc:
            if exc.status == 404:
                return None
            raise self._error(exc, f"reading {kind} {name}") from None
        except self._unreachable as exc:
            host = self._api_client.configuration.host
            raise Unavailable(
                f"the Kubernetes API at {host} (context {self.context}) is unreachable: "
                f"{getattr(exc, 'reason', None) or exc}"
            ) from None
        return body

    def _list(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for kind, plural in PLURALS.items():
            with contextlib.suppress(self._api_exception, *self._unreachable):
                items = cast(
                    dict[str, Any],
                    self._custom.list_namespaced_custom_object(
                        GROUP, VERSION, self.namespace, plural, _request_timeout=self._timeout
                    ),
                )
                found += [(kind, item["metadata"]["name"]) for item in items.get("items", [])]
        return found

    def _secret(self, name: str, key: str, field: str) -> str:
        try:
            secret = self._core.read_namespaced_secret(name, self.namespace, _request_timeout=self._timeout)
        except self._api_exception as exc:
            raise self._error(exc, f"reading Secret {name} ({field})") from None
        data = secret.data or {}
        if key not in data:
            raise ConfigError(
                f"{field}: Secret {name} has no key {key!r}; its keys: {', '.join(sorted(data)) or 'none'}"
            )
        return base64.b64decode(data[key]).decode()

    def _error(self, exc: Any, what: str) -> Exception:
        if exc.status in (401, 403):
            return ConfigError(
                f"{what}: the Kubernetes API refused it ({exc.status} {exc.reason}); check RBAC"
            )
        if exc.status == 404:
            return NotFound(f"{what}: not found in namespace {self.namespace!r}")
        return Unavailable(f"{what}: the Kubernetes API answered {exc.status} {exc.reason}")

    # -------------------------------------------------------------- building settings

    def _settings(self, kind: Kind, body: Mapping[str, Any]) -> QueueSettings:
        name = body["metadata"]["name"]
        spec = body.get("spec") or {}
        try:
            if kind == "DelayQueue":
                return self._delay_queue(name, spec, body.get("status") or {})
            return self._kafka_queue(name, spec)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"{kind} {name} cannot be used: {problems}") from None
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{kind} {name}: its spec is missing {exc}; see kubectl describe") from None

    def _delay_queue(self, name: str, spec: Mapping[str, Any], status: Mapping[str, Any]) -> DelayQueueConfig:
        nodes = list(status.get("endpoints") or [])
        if not nodes:
            raise Unavailable(
                f"DelayQueue {name} has no status.endpoints yet: the operator has not provisioned "
                "its beanstalkd nodes (see kubectl describe delayqueue " + name + ")"
            )
        redis = spec.get("redis")
        if redis is None:  # the operator provisioned one: its URL is in the Secret it generated
            url = self._secret(f"{name}-redis", "url", "the provisioned Redis's Secret")
        elif redis.get("url"):
            url = str(redis["url"])
        elif redis.get("secretRef"):
            ref = redis["secretRef"]
            url = self._secret(ref["name"], ref.get("key", "url"), "spec.redis.secretRef")
        else:
            raise ConfigError(f"DelayQueue {name}: spec.redis has neither url nor secretRef")
        return DelayQueueConfig.model_validate(
            {
                "kind": "DelayQueue",
                "name": name,
                "nodes": nodes,
                "tube": spec.get("tube") or name,
                "redis": {"url": url},
                "maxJobBytes": spec.get("maxJobBytes", 65535),
            }
        )

    def _kafka_queue(self, name: str, spec: Mapping[str, Any]) -> KafkaQueueConfig:
        topic = (spec.get("topic") or {}).get("name") or name
        settings: dict[str, Any] = {
            "kind": "KafkaQueue",
            "name": name,
            "brokers": list(spec.get("brokers") or []),
            "topic": topic,
            "group": spec.get("group") or f"{self.namespace}.{name}",  # the operator's default
            "offset": spec.get("offset") or "last",
            "deadLetterTopic": spec.get("deadLetterTopic") or f"{topic}.dlq",
        }
        auth = spec.get("auth") or {}
        if auth.get("sasl") or auth.get("tls"):
            settings["auth"] = self._kafka_auth(auth)
        return KafkaQueueConfig.model_validate(settings)

    def _kafka_auth(self, auth: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if sasl := auth.get("sasl"):
            ref = sasl.get("secretRef") or {}
            field = "spec.auth.sasl.secretRef"
            result["sasl"] = {
                "mechanism": sasl["mechanism"],
                "username": self._secret(ref["name"], ref.get("usernameKey", "username"), field),
                "password": self._secret(ref["name"], ref.get("passwordKey", "password"), field),
            }
        if "tls" in auth:
            tls = auth.get("tls") or {}
            ref = tls.get("caSecretRef")
            result["tls"] = {}
            if ref:
                pem = self._secret(ref["name"], ref.get("key", DEFAULT_CA_KEY), "spec.auth.tls.caSecretRef")
                result["tls"]["caFile"] = str(self._private_file(pem))
        return result

    def _private_file(self, content: str) -> Path:
        fd, name = tempfile.mkstemp(prefix="queuectl-ca-", suffix=".pem")  # mode 0600
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
        self._temp_files.append(Path(name))
        return Path(name)
