"""KafkaQueue: the topic and its dead-letter topic on the brokers.

``reconcile`` (create, spec update, resume) ensures each topic in its own sub-handler, then
reports; the ``observe`` timer re-creates a topic that vanished and keeps the status current.
An unreachable broker is a transient state: reported in ``Ready`` and retried with backoff.
A partition decrease (or brokers that cannot add partitions) is reported and not retried
until the spec changes. ``deletionPolicy: Delete`` removes both topics through the finalizer.
Credentials come from Secrets at each connection and never reach status, logs or events.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from queue_engine.errors import ConfigError
from queue_engine.kq.security import KafkaSecurity
from queue_operator.handlers.conditions import parse_or_report, set_ready, with_ready, write_status
from queue_operator.handlers.options import GROUP, VERSION, Options, Runtime, register_level_based
from queue_operator.kube import SecretMissing, SecretNotAllowed
from queue_operator.spec import KafkaQueueSpec, SpecError
from queue_operator.topics import BrokerUnavailable, ClientConfigInvalid, TopicAdmin

PLURAL = "kafkaqueues"
TOPIC, DEAD_LETTER = "topic", "dead-letter-topic"


def register(registry: kopf.OperatorRegistry, options: Options) -> None:
    register_level_based(registry, PLURAL, options, reconcile, observe)
    # Only a KafkaQueue whose topics must go with it gets a finalizer (kopf adds one for each
    # matching mandatory delete handler, and takes it back when the policy changes to Retain).
    kopf.on.delete(
        GROUP,
        VERSION,
        PLURAL,
        id="delete-topics",
        field="spec.deletionPolicy",
        value="Delete",
        retries=options.delete_retries,
        registry=registry,
        backoff=options.retry_delay,
    )(delete_topics)


def parse(body: Mapping[str, Any], patch: kopf.Patch) -> KafkaQueueSpec:
    return parse_or_report(KafkaQueueSpec.from_body, body, patch)


class PlaintextCredentials(ClientConfigInvalid):
    """SASL without TLS, not allowed by the spec: the credentials are never sent."""


def admin(runtime: Runtime, spec: KafkaQueueSpec, namespace: str) -> TopicAdmin:
    """A topic admin for the spec's brokers, authenticated from the referenced Secrets.

    Raises :class:`SecretMissing` or :class:`ClientConfigInvalid` (with the Secret to check)
    for what a person must fix, :class:`BrokerUnavailable` for what may pass by itself.
    """
    refused = spec.plaintext_credentials_refused
    if refused:
        raise PlaintextCredentials(refused)
    security = None
    if spec.sasl_mechanism and spec.sasl_secret_ref:
        ref = spec.sasl_secret_ref
        try:
            security = KafkaSecurity(
                sasl_mechanism=spec.sasl_mechanism,
                username=runtime.kube.secret_value(namespace, ref.name, ref.username_key),
                password=runtime.kube.secret_value(namespace, ref.name, ref.password_key),
                tls=spec.tls,
            )
        except ConfigError as exc:  # e.g. an empty username or password in the Secret
            raise ClientConfigInvalid(f"{exc}; check Secret {namespace}/{ref.name}") from exc
    elif spec.tls:
        security = KafkaSecurity(tls=True)
    ca_pem = None
    if spec.tls_ca_secret_ref is not None:
        ca_pem = runtime.kube.secret_value(namespace, spec.tls_ca_secret_ref.name, spec.tls_ca_secret_ref.key)
    try:
        return TopicAdmin(spec.brokers, security, timeout=runtime.options.kafka_timeout, ca_pem=ca_pem)
    except ClientConfigInvalid as exc:
        secrets = [ref.name for ref in (spec.sasl_secret_ref, spec.tls_ca_secret_ref) if ref is not None]
        hint = f"; check Secret {', '.join(secrets)}" if secrets else ""
        raise ClientConfigInvalid(f"{exc}{hint}") from exc


# Failures reported in Ready and retried: (exception, condition reason).
RETRIED: tuple[tuple[type[Exception], str], ...] = (
    (SecretNotAllowed, "SecretNotAllowed"),
    (SecretMissing, "SecretMissing"),
    (PlaintextCredentials, "PlaintextCredentialsRefused"),
    (ClientConfigInvalid, "InvalidClientConfig"),
    (BrokerUnavailable, "BrokerUnavailable"),
)


def reason_of(exc: Exception) -> str:
    return next(reason for kind, reason in RETRIED if isinstance(exc, kind))


def retry_later(
    body: kopf.Body, patch: kopf.Patch, runtime: Runtime, retry: int, exc: Exception
) -> kopf.TemporaryError:
    """Report in ``Ready`` and retry after an exponentially growing delay."""
    delay = runtime.options.backoff(retry)
    set_ready(body, patch, False, reason_of(exc), f"{exc}; retrying in {delay:g}s")
    return kopf.TemporaryError(str(exc), delay=delay)


def reconcile(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
    parse(body, patch)
    backoff = memo.runtime.options.retry_delay
    kopf.register(ensure_topic, id=TOPIC, param=TOPIC, backoff=backoff)
    kopf.register(ensure_topic, id=DEAD_LETTER, param=DEAD_LETTER, backoff=backoff)
    kopf.register(report_status, id="status", backoff=backoff)


def ensure_topic(
    *, param: Any = None, body: kopf.Body, patch: kopf.Patch, memo: Any, retry: int = 0, **_: Any
) -> None:
    runtime: Runtime = memo.runtime
    spec = parse(body, patch)
    problems: dict[str, str | None] = memo.setdefault("problems", {})
    try:
        with admin(runtime, spec, str(body.metadata.namespace)) as topics:
            if param == TOPIC:
                report = topics.ensure(
                    spec.topic, spec.partitions, spec.replication_factor, spec.topic_config
                )
            else:
                # Dead letters are rare: the topic is created alike, but never resized.
                existing = topics.partitions().get(spec.dead_letter_topic)
                partitions = existing or spec.partitions
                report = topics.ensure(spec.dead_letter_topic, partitions, spec.replication_factor, {})
    except (SecretMissing, ClientConfigInvalid, BrokerUnavailable) as exc:
        raise retry_later(body, patch, runtime, retry, exc) from exc
    problems[param] = report.problem
    if report.problem:
        raise kopf.PermanentError(report.problem)


def report_status(body: kopf.Body, patch: kopf.Patch, memo: Any, retry: int = 0, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    spec = parse(body, patch)
    try:
        with admin(runtime, spec, str(body.metadata.namespace)) as topics:
            partitions = topics.partitions()
    except (SecretMissing, ClientConfigInvalid, BrokerUnavailable) as exc:
        raise retry_later(body, patch, runtime, retry, exc) from exc
    write_status(body, patch, observed_status(body, spec, partitions, memo.get("problems", {})))


def observe(body: kopf.Body, patch: kopf.Patch, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """The periodic check: re-create vanished topics, then write what is observed."""
    runtime: Runtime = memo.runtime
    try:
        spec = KafkaQueueSpec.from_body(body)
    except SpecError as exc:
        set_ready(body, patch, False, "InvalidSpec", str(exc))
        return
    try:
        with admin(runtime, spec, str(body.metadata.namespace)) as topics:
            partitions = topics.partitions()
            for name in (spec.topic, spec.dead_letter_topic):
                if name not in partitions:
                    logger.warning("topic %s is missing on the brokers; creating it", name)
                    topics.ensure(name, spec.partitions, spec.replication_factor, spec.topic_config)
            partitions = topics.partitions()
    except (SecretMissing, ClientConfigInvalid, BrokerUnavailable) as exc:
        message = f"{exc}; retrying in {runtime.options.reconcile_interval:g}s"
        set_ready(body, patch, False, reason_of(exc), message)
        return
    write_status(body, patch, observed_status(body, spec, partitions, memo.get("problems", {})))


def observed_status(
    body: Mapping[str, Any], spec: KafkaQueueSpec, partitions: Mapping[str, int], problems: Mapping[str, Any]
) -> dict[str, Any]:
    fields: dict[str, Any] = {"topic": spec.topic, "deadLetterTopic": spec.dead_letter_topic}
    actual = partitions.get(spec.topic)
    if actual is None:
        return with_ready(body, False, "TopicMissing", f"topic {spec.topic} does not exist yet", **fields)
    fields["partitions"] = actual
    if actual > spec.partitions:
        message = problems.get(TOPIC) or (
            f"topic {spec.topic} has {actual} partitions and spec asks for {spec.partitions}: Kafka cannot "
            f"remove partitions, so the decrease is refused; set partitions to {actual} or more"
        )
        return with_ready(body, False, "PartitionDecreaseRefused", message, **fields)
    if actual < spec.partitions:
        message = problems.get(TOPIC) or (
            f"topic {spec.topic} has {actual} partitions and spec asks for {spec.partitions}; "
            "the brokers have not added them"
        )
        return with_ready(body, False, "PartitionsNotRaised", message, **fields)
    if spec.dead_letter_topic not in partitions:
        message = f"dead-letter topic {spec.dead_letter_topic} does not exist yet"
        return with_ready(body, False, "DeadLetterTopicMissing", message, **fields)
    message = f"topic {spec.topic} has {actual} partitions; dead letters go to {spec.dead_letter_topic}"
    return with_ready(body, True, "TopicReady", message, **fields)


def delete_topics(body: kopf.Body, memo: Any, logger: kopf.Logger, retry: int = 0, **_: Any) -> None:
    """Delete both topics; never hold the resource longer than ``delete_timeout``.

    When the brokers, or the Secret to reach them (a namespace being deleted removes it first),
    stay unavailable, the resource is released after the bound with a Warning event naming the
    topics left behind, rather than leaving it (and its namespace) Terminating for good.
    """
    runtime: Runtime = memo.runtime
    try:
        spec = KafkaQueueSpec.from_body(body)
    except SpecError:
        logger.warning("the spec is invalid, so no topic is known to delete; leaving the brokers alone")
        return
    if spec.deletion_policy != "Delete":
        return
    try:
        with admin(runtime, spec, str(body.metadata.namespace)) as topics:
            deleted = topics.delete([spec.topic, spec.dead_letter_topic])
    except (SecretMissing, ClientConfigInvalid, BrokerUnavailable) as exc:
        remaining = runtime.options.delete_timeout - _seconds_since_deletion(body)
        if remaining <= 0 or retry + 1 >= runtime.options.delete_retries:
            kopf.warn(
                body,
                reason="TopicsNotDeleted",
                message=(
                    f"gave up deleting topics {spec.topic} and {spec.dead_letter_topic}: {exc}; "
                    "they are left on the brokers, delete them by hand"
                ),
            )
            return
        delay = min(runtime.options.backoff(retry), max(1.0, remaining))
        raise kopf.TemporaryError(f"cannot delete the topics yet: {exc}", delay=delay) from exc
    logger.info("deletionPolicy Delete: deleted topics %s", ", ".join(deleted) or "(none were left)")


def _seconds_since_deletion(body: kopf.Body) -> float:
    stamp = body.metadata.get("deletionTimestamp")
    if not stamp:
        return 0.0
    started = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    return (datetime.now(UTC) - started).total_seconds()
