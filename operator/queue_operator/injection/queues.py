"""A DelayQueue or KafkaQueue resource turned into one queue of the sidecar's config.

Pure: the resource body in, the sidecar's config entry out, together with what the sidecar
container needs to reach the queue's secrets. A Secret's value is never read or copied: a Redis
URL or SASL credential reaches the sidecar as an environment variable with ``secretKeyRef``
(the config names the variable: ``urlEnv``, ``usernameEnv``, ``passwordEnv``), a TLS CA bundle as
a Secret volume (the config names the file: ``caFile``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from queue_operator.builders import beanstalkd
from queue_operator.injection.annotations import InjectionError, QueueRef
from queue_operator.spec import DelayQueueSpec, KafkaQueueSpec, SecretRef, SpecError

TLS_DIR = "/etc/queue-sidecar/tls"
CA_FILE = "ca.crt"


@dataclass(frozen=True)
class SidecarQueue:
    """One queue of the sidecar's config and what the sidecar container needs for it."""

    config: dict[str, Any]  # an entry of the config's ``queues`` list (camelCase, as the YAML)
    env: list[dict[str, Any]] = field(default_factory=list)  # secretKeyRef variables
    volumes: list[dict[str, Any]] = field(default_factory=list)  # pod volumes (Secrets)
    mounts: list[dict[str, Any]] = field(default_factory=list)  # the sidecar's volumeMounts


def sidecar_queue(ref: QueueRef, body: Mapping[str, Any], index: int) -> SidecarQueue:
    """The sidecar's view of the resource ``ref`` (``index``: its place in the pod's list)."""
    try:
        if ref.kind == "DelayQueue":
            return _delay_queue(ref, body, DelayQueueSpec.from_body(body), index)
        return _kafka_queue(ref, body, KafkaQueueSpec.from_body(body), index)
    except SpecError as exc:
        raise InjectionError(f"{ref} cannot be used until its spec is fixed: {exc}") from None


def _delay_queue(ref: QueueRef, body: Mapping[str, Any], spec: DelayQueueSpec, index: int) -> SidecarQueue:
    status = body.get("status")
    nodes = status.get("endpoints") if isinstance(status, Mapping) else None
    if not nodes or not isinstance(nodes, list):
        # The operator has not written status yet: the names it will give the nodes are stable.
        nodes = beanstalkd.endpoints(body, spec)
    env: list[dict[str, Any]] = []
    if spec.redis_secret_ref is not None:
        variable = f"QUEUE_{index}_REDIS_URL"
        env.append(_secret_env(variable, spec.redis_secret_ref))
        redis: dict[str, Any] = {"urlEnv": variable}
    else:
        redis = {"url": spec.redis_url}
    config: dict[str, Any] = {
        "kind": "DelayQueue",
        "name": ref.name,
        "nodes": [str(node) for node in nodes],
        "tube": spec.tube,
        "redis": redis,
        "maxJobBytes": spec.max_job_bytes,
    }
    if spec.delivery:
        config["delivery"] = dict(spec.delivery)
    return SidecarQueue(config=config, env=env)


def _kafka_queue(ref: QueueRef, body: Mapping[str, Any], spec: KafkaQueueSpec, index: int) -> SidecarQueue:
    config: dict[str, Any] = {
        "kind": "KafkaQueue",
        "name": ref.name,
        "brokers": list(spec.brokers),
        "topic": spec.topic,
        "group": spec.group,
        "offset": spec.offset,
        "deadLetterTopic": spec.dead_letter_topic,
    }
    env: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    auth: dict[str, Any] = {}
    if spec.sasl_mechanism is not None and spec.sasl_secret_ref is not None:
        secret = spec.sasl_secret_ref
        user_var, password_var = f"QUEUE_{index}_SASL_USERNAME", f"QUEUE_{index}_SASL_PASSWORD"
        env.append(_secret_env(user_var, SecretRef(secret.name, secret.username_key)))
        env.append(_secret_env(password_var, SecretRef(secret.name, secret.password_key)))
        auth["sasl"] = {
            "mechanism": spec.sasl_mechanism,
            "usernameEnv": user_var,
            "passwordEnv": password_var,
        }
    if spec.tls:
        auth["tls"] = {}
        if spec.tls_ca_secret_ref is not None:
            volume = f"queue-sidecar-ca-{index}"
            directory = f"{TLS_DIR}/{index}"
            volumes.append(
                {
                    "name": volume,
                    "secret": {
                        "secretName": spec.tls_ca_secret_ref.name,
                        "items": [{"key": spec.tls_ca_secret_ref.key, "path": CA_FILE}],
                    },
                }
            )
            mounts.append({"name": volume, "mountPath": directory, "readOnly": True})
            auth["tls"] = {"caFile": f"{directory}/{CA_FILE}"}
    if auth:
        config["auth"] = auth
    if spec.delivery:
        config["delivery"] = dict(spec.delivery)
    return SidecarQueue(config=config, env=env, volumes=volumes, mounts=mounts)


def _secret_env(variable: str, ref: SecretRef) -> dict[str, Any]:
    return {"name": variable, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
