"""KafkaQueue: the topic and its dead-letter topic on the brokers.

``reconcile`` (create, spec update, resume) ensures each topic in its own sub-handler, then
reports; the ``observe`` timer re-creates a topic that vanished and keeps the status current.
An unreachable broker is a transient state: reported in ``Ready`` and retried with backoff.
A partition decrease (or brokers that cannot add partitions) is reported and not retried
until the spec changes. ``deletionPolicy: Delete`` removes both topics through the finalizer.
Credentials come from Secrets at each connection and never reach status, logs or events.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import kopf

from queue_engine.errors import ConfigError
from queue_engine.kq.security import KafkaSecurity
from queue_operator.builders import scaling
from queue_operator.handlers import autoscaling
from queue_operator.handlers.conditions import Verdict, parse_or_report, report
from queue_operator.handlers.options import GROUP, VERSION, Options, Runtime, register_level_based
from queue_operator.kube import SecretMissing, SecretNotAllowed
from queue_operator.spec import KafkaQueueSpec, SpecError

if TYPE_CHECKING:
    from queue_operator.topics import TopicAdmin
from queue_operator.kafka_errors import BrokerUnavailable, ClientConfigInvalid

PLURAL = "kafkaqueues"
# As queue_engine.kq.attempt_journal makes it (not imported: that loads the Kafka client).
ATTEMPTS_CONFIG = {"cleanup.policy": "compact"}


def register(registry: kopf.OperatorRegistry, options: Options) -> None:
    kopf.index(GROUP, VERSION, PLURAL, id="topic_claims", registry=registry)(topic_claims)
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


def admin(
    runtime: Runtime, spec: KafkaQueueSpec, namespace: str
) -> contextlib.AbstractContextManager[TopicAdmin]:
    """A topic admin for the spec's brokers, authenticated from the referenced Secrets (shared
    with every KafkaQueue on the same brokers and credentials: see :class:`AdminPool`).

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
        shared = runtime.admins.get(
            spec.brokers, security, timeout=runtime.options.kafka_timeout, ca_pem=ca_pem
        )
        return contextlib.nullcontext(shared)
    except ClientConfigInvalid as exc:
        secrets = [ref.name for ref in (spec.sasl_secret_ref, spec.tls_ca_secret_ref) if ref is not None]
        hint = f"; check Secret {', '.join(secrets)}" if secrets else ""
        raise ClientConfigInvalid(f"{exc}{hint}") from exc


# Failures reported in Ready and Degraded, and retried: (exception, condition reason).
RETRIED: tuple[tuple[type[Exception], str], ...] = (
    (SecretNotAllowed, "SecretNotAllowed"),
    (SecretMissing, "SecretMissing"),
    (PlaintextCredentials, "PlaintextCredentialsRefused"),
    (ClientConfigInvalid, "InvalidClientConfig"),
    (BrokerUnavailable, "BrokerUnavailable"),
)


def reason_of(exc: Exception) -> str:
    return next(reason for kind, reason in RETRIED if isinstance(exc, kind))


class Claim(NamedTuple):
    """What the ownership index keeps of each KafkaQueue, under each of its two topic names."""

    uid: str
    namespace: str
    name: str
    created: str  # metadata.creationTimestamp: the oldest claim owns the topic
    brokers: frozenset[str]
    cluster_id: str | None  # status.clusterID, as the brokers named their cluster
    deleting: bool

    def same_cluster(self, other: Claim) -> bool:
        if self.cluster_id and other.cluster_id and self.cluster_id == other.cluster_id:
            return True
        return bool(self.brokers & other.brokers)

    def rank(self) -> tuple[str, str, str]:
        return (self.created, self.namespace, self.name)


def topic_claims(body: kopf.Body, **_: Any) -> dict[str, Claim]:
    """Index: topic name -> the KafkaQueues naming it (as their topic or dead-letter topic)."""
    try:
        spec = KafkaQueueSpec.from_body(body)
    except SpecError:
        return {}
    meta = body.metadata
    claim = Claim(
        uid=str(meta.uid or ""),
        namespace=str(meta.namespace),
        name=str(meta.name),
        created=str(meta.get("creationTimestamp") or ""),
        brokers=frozenset(spec.brokers),
        cluster_id=(body.get("status") or {}).get("clusterID"),
        deleting=bool(meta.get("deletionTimestamp")),
    )
    return dict.fromkeys(spec.topics, claim)


def owner_elsewhere(body: Mapping[str, Any], spec: KafkaQueueSpec, claims: Any) -> tuple[str, Claim] | None:
    """The older KafkaQueue on the same brokers that names one of our topics, if any.

    Ownership is first come, first served (creation time, then namespace and name), decided
    among the resources this operator watches; a resource being deleted no longer claims.
    """
    mine = topic_claims(body)  # type: ignore[arg-type]
    for topic, me in mine.items():
        for other in claims.get(topic, []) if claims is not None else []:
            if (
                other.uid != me.uid
                and not other.deleting
                and other.same_cluster(me)
                and other.rank() < me.rank()
            ):
                return topic, other
    return None


def reconcile(body: kopf.Body, patch: kopf.Patch, memo: Any, retry: int = 0, **kwargs: Any) -> None:
    """Bring the topics (and the group's start) to the spec; retry what may pass by itself."""
    spec = parse(body, patch)
    runtime: Runtime = memo.runtime
    verdict, fields, transient = converge(body, spec, runtime, kwargs.get("topic_claims"))
    if transient:
        delay = runtime.options.backoff(retry)
        verdict = dataclasses.replace(verdict, message=f"{verdict.message}; retrying in {delay:g}s")
        report(body, patch, verdict, **fields)
        raise kopf.TemporaryError(verdict.message, delay=delay)
    report(body, patch, verdict, **fields)
    if verdict.degraded:
        raise kopf.PermanentError(verdict.message)  # no retries until the spec changes


def observe(body: kopf.Body, patch: kopf.Patch, memo: Any, **kwargs: Any) -> None:
    """The periodic check: re-create vanished topics, then write what is observed."""
    runtime: Runtime = memo.runtime
    try:
        spec = KafkaQueueSpec.from_body(body)
    except SpecError as exc:
        report(body, patch, Verdict.problem("InvalidSpec", str(exc)))
        return
    verdict, fields, transient = converge(body, spec, runtime, kwargs.get("topic_claims"))
    if transient:
        message = f"{verdict.message}; retrying in {runtime.options.reconcile_interval:g}s"
        verdict = dataclasses.replace(verdict, message=message)
    report(body, patch, verdict, **fields)


def converge(
    body: kopf.Body, spec: KafkaQueueSpec, runtime: Runtime, claims: Any
) -> tuple[Verdict, dict[str, Any], bool]:
    """Ensure both topics and the group's start offsets; (verdict, status fields, transient)."""
    status = body.get("status") or {}
    fields: dict[str, Any] = {"topic": spec.topic, "deadLetterTopic": spec.dead_letter_topic}
    conflict = owner_elsewhere(body, spec, claims)
    if conflict is not None:
        topic, other = conflict
        message = (
            f"topic {topic} on these brokers belongs to KafkaQueue {other.namespace}/{other.name}, created "
            "earlier; this resource never changes or deletes it: choose another spec.topic.name "
            "(or spec.deadLetterTopic)"
        )
        return Verdict.problem("ResourceConflict", message), fields, False
    created = list(status.get("createdTopics") or [])
    problems: list[str] = []
    try:
        with admin(runtime, spec, str(body.metadata.namespace)) as topics:
            partitions = topics.partitions()
            if topics.cluster_id:
                fields["clusterID"] = topics.cluster_id
            for name, count, config in (
                (spec.topic, spec.partitions, spec.topic_config),
                # Dead letters are rare: the topic is created alike, but never resized.
                (spec.dead_letter_topic, partitions.get(spec.dead_letter_topic) or spec.partitions, {}),
                # The consumers' attempt counts, one record per partition and group: compacted when
                # made (its settings are then left alone) and never resized (a partition is
                # journaled on partition % count). Made here so that consumers need no right to
                # create topics (they make it on first use where it is missing).
                (spec.attempts_topic, *attempts_topic(partitions.get(spec.attempts_topic), spec)),
            ):
                # One listing serves both topics and the status: a steady state costs one call.
                result = topics.ensure(name, count, spec.replication_factor, config, existing=partitions)
                if result.partitions > 0:
                    partitions[name] = result.partitions
                if result.created and name not in created:
                    created.append(name)
                if result.problem:
                    problems.append(result.problem)
            if spec.offset == "last" and spec.topic in partitions:
                topics.start_group_at_end(spec.group, spec.topic, partitions[spec.topic])
    except (SecretMissing, ClientConfigInvalid, BrokerUnavailable) as exc:
        if created:
            fields["createdTopics"] = created
        return Verdict.problem(reason_of(exc), str(exc)), fields, True
    if created:
        fields["createdTopics"] = created
    verdict = topics_verdict(spec, partitions, problems)
    failure = autoscaling.sync(runtime.kube, body, scaled_object(body, spec))
    if failure is not None:
        verdict = dataclasses.replace(
            verdict,
            degraded=True,
            degraded_reason="AutoscalingFailed",
            degraded_message=failure,
            applied=False,
        )
    return (
        verdict,
        {**fields, "partitions": partitions.get(spec.topic)} if spec.topic in partitions else fields,
        False,
    )


def attempts_topic(existing: int | None, spec: KafkaQueueSpec) -> tuple[int, Mapping[str, str]]:
    """(partitions, config) to ensure the attempts journal with: as it is when it exists."""
    return (existing, {}) if existing else (spec.partitions, ATTEMPTS_CONFIG)


def scaled_object(body: Mapping[str, Any], spec: KafkaQueueSpec) -> dict[str, Any] | None:
    if spec.autoscaling is None:
        return None
    triggers = scaling.kafka_triggers(spec.brokers, spec.group, spec.topic, spec.offset, spec.autoscaling)
    return scaling.scaled_object(body, spec.autoscaling, triggers)


def topics_verdict(spec: KafkaQueueSpec, partitions: Mapping[str, int], problems: list[str]) -> Verdict:
    """Ready when both topics serve; Degraded when the brokers refused part of the spec."""
    # Not the attempts journal: consumers make it where it is missing, and the topic serves without.
    missing = [name for name in (spec.topic, spec.dead_letter_topic) if name not in partitions]
    if missing:
        reason = "TopicMissing" if spec.topic in missing else "DeadLetterTopicMissing"
        message = "; ".join(problems) or f"topic {missing[0]} does not exist yet"
        return Verdict(False, reason, message, progressing=not problems, degraded=bool(problems))
    actual = partitions[spec.topic]
    ready = f"topic {spec.topic} has {actual} partitions; dead letters go to {spec.dead_letter_topic}"
    if not problems:
        return Verdict(True, "TopicReady", ready, applied=True)
    if actual > spec.partitions:
        why = "PartitionDecreaseRefused"
    elif actual < spec.partitions:
        why = "PartitionsNotRaised"
    else:
        why = "TopicNotReconciled"
    # The topic serves as it is; what the spec asks and the brokers refused is Degraded.
    return Verdict(
        True, "TopicReady", ready, degraded=True, degraded_reason=why, degraded_message="; ".join(problems)
    )


def delete_topics(body: kopf.Body, memo: Any, logger: kopf.Logger, retry: int = 0, **_: Any) -> None:
    """Delete the topics this resource created; never hold it longer than ``delete_timeout``.

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
    created = set((body.get("status") or {}).get("createdTopics") or [])
    # Only topics this resource created: an adopted topic, or one another resource owns, stays.
    mine = [name for name in spec.topics if name in created]
    kept = [name for name in spec.topics if name not in created]
    if kept:
        logger.info("deletionPolicy Delete: keeping %s, not created by this resource", ", ".join(kept))
    if not mine:
        return
    try:
        with admin(runtime, spec, str(body.metadata.namespace)) as topics:
            deleted = topics.delete(mine)
    except (SecretMissing, ClientConfigInvalid, BrokerUnavailable) as exc:
        remaining = runtime.options.delete_timeout - _seconds_since_deletion(body)
        if remaining <= 0 or retry + 1 >= runtime.options.delete_retries:
            kopf.warn(
                body,
                reason="TopicsNotDeleted",
                message=(
                    f"gave up deleting topics {' and '.join(mine)}: {exc}; "
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
