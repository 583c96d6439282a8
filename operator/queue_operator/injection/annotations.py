"""The pod annotations that ask for a sidecar (SPEC section 3), read strictly.

Every value is checked here; a bad one raises :class:`InjectionError` whose message names the
annotation and says what to write instead, which the webhook returns to whoever created the pod.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from queue_engine.durations import parse_duration

PREFIX = "queue-operator.dev/"
INJECT = f"{PREFIX}inject"
QUEUES = f"{PREFIX}queues"
APP_PORT = f"{PREFIX}app-port"
APP_PROTOCOL = f"{PREFIX}app-protocol"
APP_PATH = f"{PREFIX}app-path"
MAX_CONCURRENCY = f"{PREFIX}max-concurrency"
PUBLISH_PORT = f"{PREFIX}publish-port"
# Bulk delivery for every queue of the pod: setting either turns it on (the other defaults).
BULK_MAX_MESSAGES = f"{PREFIX}bulk-max-messages"
BULK_MAX_WAIT = f"{PREFIX}bulk-max-wait"
# Written by the webhook: the sidecar's rendered config, mounted through the downward API.
SIDECAR_CONFIG = f"{PREFIX}sidecar-config"

DEFAULT_PROTOCOL = "http"
DEFAULT_PATH = "/messages"
DEFAULT_MAX_CONCURRENCY = 8
MAX_MAX_CONCURRENCY = 10_000  # the sidecar's own bound
DEFAULT_PUBLISH_PORT = 3500
HEALTH_PORT = 9464  # the sidecar's health port: an app or publish port may not take it
MAX_BULK_MESSAGES = 1000  # the sidecar's own bound
MAX_BULK_WAIT = 10.0  # seconds, the sidecar's own bound

# kind/NAME, with the short forms kubectl users know.
KINDS = {
    "delayqueue": "DelayQueue",
    "dq": "DelayQueue",
    "kafkaqueue": "KafkaQueue",
    "kq": "KafkaQueue",
}
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")


class InjectionError(ValueError):
    """The pod cannot get a sidecar; the message names the annotation or queue and what to fix."""


@dataclass(frozen=True)
class QueueRef:
    kind: str  # "DelayQueue" | "KafkaQueue"
    name: str

    def __str__(self) -> str:
        return f"{self.kind.lower()}/{self.name}"


@dataclass(frozen=True)
class InjectionRequest:
    """What the pod's annotations ask for, defaults filled in."""

    queues: tuple[QueueRef, ...]
    app_port: int
    app_protocol: str
    app_path: str
    max_concurrency: int
    publish_port: int
    # The sidecar config's ``delivery.bulk`` for every queue, or None: one message per call.
    bulk: dict[str, Any] | None = None


def wants_injection(pod: Mapping[str, Any]) -> bool:
    """``queue-operator.dev/inject: "true"`` (any case) is set."""
    return str(_annotations(pod).get(INJECT, "")).strip().lower() == "true"


def read_request(pod: Mapping[str, Any]) -> InjectionRequest:
    """The pod's annotations as an :class:`InjectionRequest`, or :class:`InjectionError`."""
    annotations = _annotations(pod)
    queues = _queues(annotations.get(QUEUES))
    app_port = _port(annotations, APP_PORT, None)
    protocol = str(annotations.get(APP_PROTOCOL, DEFAULT_PROTOCOL)).strip().lower()
    if protocol not in ("http", "grpc"):
        raise InjectionError(f'annotation {APP_PROTOCOL}: {protocol!r} is not known; write "http" or "grpc"')
    path = str(annotations.get(APP_PATH, DEFAULT_PATH)).strip()
    if not _PATH.match(path):
        raise InjectionError(
            f'annotation {APP_PATH}: {path!r} is not an HTTP path; write one starting with "/", '
            f'e.g. "{DEFAULT_PATH}"'
        )
    concurrency = _int(annotations, MAX_CONCURRENCY, DEFAULT_MAX_CONCURRENCY, 1, MAX_MAX_CONCURRENCY)
    publish_port = _port(annotations, PUBLISH_PORT, DEFAULT_PUBLISH_PORT)
    if publish_port == app_port:
        raise InjectionError(
            f"annotations {APP_PORT} and {PUBLISH_PORT} are both {app_port}; the app and the sidecar "
            f"share the pod's network, so give {PUBLISH_PORT} another port"
        )
    for key, port in ((APP_PORT, app_port), (PUBLISH_PORT, publish_port)):
        if port == HEALTH_PORT:
            raise InjectionError(f"annotation {key}: {port} is the sidecar's health port; use another port")
    return InjectionRequest(
        queues=queues,
        app_port=app_port,
        app_protocol=protocol,
        app_path=path,
        max_concurrency=concurrency,
        publish_port=publish_port,
        bulk=_bulk(annotations),
    )


def _bulk(annotations: Mapping[str, Any]) -> dict[str, Any] | None:
    if BULK_MAX_MESSAGES not in annotations and BULK_MAX_WAIT not in annotations:
        return None
    bulk: dict[str, Any] = {}
    if BULK_MAX_MESSAGES in annotations:
        bulk["maxMessages"] = _int(annotations, BULK_MAX_MESSAGES, None, 1, MAX_BULK_MESSAGES)
    if BULK_MAX_WAIT in annotations:
        text = str(annotations[BULK_MAX_WAIT]).strip()
        try:
            seconds = parse_duration(text)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= MAX_BULK_WAIT:
            raise InjectionError(
                f'annotation {BULK_MAX_WAIT}: {text!r} is not a duration from 0 to 10s, e.g. "10ms"'
            )
        bulk["maxWait"] = text
    return bulk


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = pod.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    return annotations if isinstance(annotations, Mapping) else {}


def _queues(value: Any) -> tuple[QueueRef, ...]:
    example = f'e.g. {QUEUES}: "delayqueue/reminders,kafkaqueue/orders"'
    if value is None or not str(value).strip():
        raise InjectionError(f"annotation {QUEUES} is missing; list the queues for the sidecar, {example}")
    refs: list[QueueRef] = []
    for item in (part.strip() for part in str(value).split(",")):
        if not item:
            continue
        kind, sep, name = item.partition("/")
        if not sep or kind.lower() not in KINDS:
            raise InjectionError(
                f"annotation {QUEUES}: {item!r} must be delayqueue/NAME or kafkaqueue/NAME "
                f"(or dq/NAME, kq/NAME), {example}"
            )
        if not _NAME.match(name) or len(name) > 253:
            raise InjectionError(
                f"annotation {QUEUES}: {item!r} has no valid resource name after '/'; "
                "names are lower-case letters, digits, '-' and '.'"
            )
        ref = QueueRef(KINDS[kind.lower()], name)
        if ref in refs:
            continue  # named twice: one sidecar queue is enough
        if any(other.name == name for other in refs):
            raise InjectionError(
                f"annotation {QUEUES}: a DelayQueue and a KafkaQueue are both named {name!r}; the sidecar "
                "addresses queues by name, so one pod can use only one of them"
            )
        refs.append(ref)
    if not refs:
        raise InjectionError(f"annotation {QUEUES} lists no queue; {example}")
    return tuple(refs)


def _int(annotations: Mapping[str, Any], key: str, default: int | None, low: int, high: int) -> int:
    value = annotations.get(key)
    if value is None:
        if default is None:
            raise InjectionError(
                f'annotation {key} is missing; give the port your app listens on, e.g. {key}: "8080"'
            )
        return default
    text = str(value).strip()
    if not text.isdigit() or not low <= int(text) <= high:
        raise InjectionError(f"annotation {key}: {str(value)!r} is not a whole number from {low} to {high}")
    return int(text)


def _port(annotations: Mapping[str, Any], key: str, default: int | None) -> int:
    return _int(annotations, key, default, 1, 65535)
