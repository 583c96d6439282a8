"""A DelayQueue or KafkaQueue resource turned into one queue of the sidecar's config.

Pure: the resource body in, the sidecar's config entry out, together with what the sidecar
container needs to reach the queue's secrets. A Secret's value is never read or copied: the
Secret is mounted into the sidecar as a volume holding only the keys it needs, and the config
names the files (``urlFile``, ``usernameFile``, ``passwordFile``, ``caFile``). Files rather than
environment variables: they stay out of ``/proc/<pid>/environ``, child processes and crash
reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from queue_operator.builders.network_policy import client_label
from queue_operator.builders.nodes import NODES_FILE, nodes_configmap_name
from queue_operator.injection.annotations import InjectionError, QueueRef
from queue_operator.spec import DelayQueueSpec, KafkaQueueSpec, SpecError

SECRETS_DIR = "/etc/queue-sidecar/secrets"  # <i>/: the credentials of the pod's i-th queue
TLS_DIR = "/etc/queue-sidecar/tls"  # <i>/ca.crt: the CA bundle of the pod's i-th queue
NODES_DIR = "/etc/queue-sidecar/nodes"  # <i>/nodes.json: the node list of the pod's i-th queue
REDIS_URL_FILE = "redis-url"
USERNAME_FILE = "username"
PASSWORD_FILE = "password"
CA_FILE = "ca.crt"


@dataclass(frozen=True)
class SidecarQueue:
    """One queue of the sidecar's config and what the sidecar container needs for it."""

    config: dict[str, Any]  # an entry of the config's ``queues`` list (camelCase, as the YAML)
    volumes: list[dict[str, Any]] = field(default_factory=list)  # pod volumes (Secrets)
    mounts: list[dict[str, Any]] = field(default_factory=list)  # the sidecar's volumeMounts
    labels: dict[str, str] = field(default_factory=dict)  # pod labels (NetworkPolicy clients)


def sidecar_queue(ref: QueueRef, body: Mapping[str, Any], index: int) -> SidecarQueue:
    """The sidecar's view of the resource ``ref`` (``index``: its place in the pod's list)."""
    try:
        if ref.kind == "DelayQueue":
            return _delay_queue(ref, body, DelayQueueSpec.from_body(body), index)
        return _kafka_queue(ref, KafkaQueueSpec.from_body(body), index)
    except SpecError as exc:
        raise InjectionError(f"{ref} cannot be used until its spec is fixed: {exc}") from None


def _delay_queue(ref: QueueRef, body: Mapping[str, Any], spec: DelayQueueSpec, index: int) -> SidecarQueue:
    # The label lets this pod through the queue's NetworkPolicy.
    queue = SidecarQueue(config={}, labels=client_label(ref.name))
    # The node list is a ConfigMap the operator keeps current (nodes added, draining, removed);
    # the kubelet updates the mounted file in place and the sidecar watches it: no restart.
    nodes_volume = f"queue-sidecar-nodes-{index}"
    queue.volumes.append({"name": nodes_volume, "configMap": {"name": nodes_configmap_name(body)}})
    queue.mounts.append({"name": nodes_volume, "mountPath": f"{NODES_DIR}/{index}", "readOnly": True})
    if spec.redis_secret_ref is not None:
        secret = spec.redis_secret_ref
        keys = [(secret.key, REDIS_URL_FILE)]
        directory = _mount(
            queue, f"queue-sidecar-secret-{index}", f"{SECRETS_DIR}/{index}", secret.name, keys
        )
        redis: dict[str, Any] = {"urlFile": f"{directory}/{REDIS_URL_FILE}"}
    else:
        redis = {"url": spec.redis_url}
    queue.config.update(
        kind="DelayQueue",
        name=ref.name,
        nodesFile=f"{NODES_DIR}/{index}/{NODES_FILE}",
        tube=spec.tube,
        redis=redis,
        maxJobBytes=spec.max_job_bytes,
    )
    if spec.delivery:
        queue.config["delivery"] = dict(spec.delivery)
    return queue


def _kafka_queue(ref: QueueRef, spec: KafkaQueueSpec, index: int) -> SidecarQueue:
    queue = SidecarQueue(
        config={
            "kind": "KafkaQueue",
            "name": ref.name,
            "brokers": list(spec.brokers),
            "topic": spec.topic,
            "group": spec.group,
            "offset": spec.offset,
            "deadLetterTopic": spec.dead_letter_topic,
        }
    )
    refused = spec.plaintext_credentials_refused
    if refused:
        raise InjectionError(f"{ref}: {refused}")
    auth: dict[str, Any] = {}
    if spec.sasl_mechanism is not None and spec.sasl_secret_ref is not None:
        secret = spec.sasl_secret_ref
        keys = [(secret.username_key, USERNAME_FILE), (secret.password_key, PASSWORD_FILE)]
        directory = _mount(
            queue, f"queue-sidecar-secret-{index}", f"{SECRETS_DIR}/{index}", secret.name, keys
        )
        auth["sasl"] = {
            "mechanism": spec.sasl_mechanism,
            "usernameFile": f"{directory}/{USERNAME_FILE}",
            "passwordFile": f"{directory}/{PASSWORD_FILE}",
        }
    if spec.tls:
        auth["tls"] = {}
        if spec.tls_ca_secret_ref is not None:
            ca = spec.tls_ca_secret_ref
            directory = _mount(
                queue, f"queue-sidecar-ca-{index}", f"{TLS_DIR}/{index}", ca.name, [(ca.key, CA_FILE)]
            )
            auth["tls"] = {"caFile": f"{directory}/{CA_FILE}"}
    if spec.librdkafka:
        queue.config["librdkafka"] = dict(spec.librdkafka)
    if auth:
        queue.config["auth"] = auth
    if spec.delivery:
        queue.config["delivery"] = dict(spec.delivery)
    return queue


def _mount(queue: SidecarQueue, volume: str, directory: str, secret: str, keys: list[tuple[str, str]]) -> str:
    """Mount only ``keys`` ((Secret key, file name) pairs) of ``secret`` at ``directory``."""
    items = [{"key": key, "path": path} for key, path in keys]
    queue.volumes.append({"name": volume, "secret": {"secretName": secret, "items": items}})
    queue.mounts.append({"name": volume, "mountPath": directory, "readOnly": True})
    return directory
