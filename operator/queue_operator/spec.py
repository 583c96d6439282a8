"""DelayQueue and KafkaQueue specs read from a resource body, with the defaults filled in.

The CRD schema (``crds/``) refuses most bad input at the API server and fills the same
defaults; this module repeats the checks a schema cannot make (and those an API server that
skips schema validation would miss, like the test emulator) and raises :class:`SpecError`
with a message that names the field and says what to change. The operator turns that
message into the resource's ``Ready=False`` condition.

Secrets are referenced, never read here, and never copied into a spec value:

- ``spec.redis.secretRef: {name, key}``: the Secret's ``key`` holds the whole Redis URL
  (``redis://:PASSWORD@host:6379/0``), so a password never appears in the resource.
- no ``spec.redis``: the operator provisions a Redis for the queue; its URL is in the Secret
  ``<name>-redis`` (key ``url``) that the operator generates, used like a ``secretRef``.
- ``spec.auth.sasl.secretRef: {name, usernameKey, passwordKey}``: the Secret holds the SASL
  username and password under ``usernameKey`` (default ``username``) and ``passwordKey``
  (default ``password``), which is exactly the layout of a ``kubernetes.io/basic-auth`` Secret.
- ``spec.auth.tls.caSecretRef: {name, key}``: the Secret's ``key`` (default ``ca.crt``, as
  cert-manager writes it) holds the PEM CA bundle that signs the brokers' certificates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from queue_engine.durations import parse_duration
from queue_engine.policy import DeliveryPolicy

# The project's own beanstalkd image (images/beanstalkd): Debian bookworm's 1.12, non-root.
DEFAULT_BEANSTALKD_TAG = "1.12-2-bookworm"
DEFAULT_BEANSTALKD_IMAGE = f"ghcr.io/queue-operator/beanstalkd:{DEFAULT_BEANSTALKD_TAG}"
DEFAULT_REPLICAS = 3
MAX_REPLICAS = 9
DEFAULT_MAX_JOB_BYTES = 65535
MAX_MAX_JOB_BYTES = 1073741824  # beanstalkd's own ceiling for -z (JOB_DATA_SIZE_LIMIT_MAX)
DEFAULT_PERSISTENCE_SIZE = "1Gi"
MAX_FSYNC_MILLIS = 3_600_000
# Children are named "<name>-beanstalkd"; a StatefulSet name must leave room for the pods'
# "-<10 char revision hash>" label value (63 characters), so the resource name is capped.
MAX_DELAYQUEUE_NAME = 41

DEFAULT_PARTITIONS = 3
DEFAULT_REPLICATION_FACTOR = None  # the brokers' default.replication.factor
MAX_REPLICATION_FACTOR = 32767  # Kafka stores it as int16
DEFAULT_CA_KEY = "ca.crt"
OFFSETS = ("first", "last")
DELETION_POLICIES = ("Retain", "Delete")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_TUBE = re.compile(r"^[A-Za-z0-9+/;.$_()][A-Za-z0-9+/;.$_()-]{0,199}$")
_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
PROVISIONED_REDIS_KEY = "url"
_BROKER = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?):[0-9]{1,5}$")
_KAFKA_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_TOPIC_CONFIG_KEY = re.compile(r"^[a-z0-9]+(\.[a-z0-9]+)*$")


class SpecError(ValueError):
    """A spec the operator cannot act on; the message names the field and says what to change."""


@dataclass(frozen=True)
class Autoscaling:
    """``spec.autoscaling``: scale a workload on this queue's backlog (a KEDA ScaledObject)."""

    target_kind: str  # Deployment | StatefulSet
    target_name: str
    min_replicas: int
    max_replicas: int
    threshold: int  # per replica: Kafka lag, or dq jobs ready and in flight
    polling_interval: int | None
    cooldown_period: int | None
    authentication_ref: str | None  # a KEDA TriggerAuthentication for SASL/TLS brokers


class SecretRef(NamedTuple):
    """A key of a Secret in the resource's namespace."""

    name: str
    key: str


class SaslSecretRef(NamedTuple):
    """A Secret in the resource's namespace holding a SASL username and password."""

    name: str
    username_key: str = "username"
    password_key: str = "password"


@dataclass(frozen=True)
class DelayQueueSpec:
    replicas: int
    tube: str
    image: str
    resources: dict[str, Any]
    max_job_bytes: int
    persistence_enabled: bool
    persistence_size: str
    storage_class_name: str | None
    fsync_millis: int | None  # None: beanstalkd's default (fsync at most every 50 ms)
    delete_claim: bool  # delete the nodes' volumes (and their pending jobs) with the resource
    # Exactly one of redis_url and redis_secret_ref is set. The URL may carry a password: kept
    # out of repr() so that logging a spec never shows it.
    redis_url: str | None = field(repr=False)
    redis_secret_ref: SecretRef | None  # the key holds the Redis URL
    delivery: dict[str, Any]  # camelCase delivery policy as given (checked parseable)
    # No spec.redis: the operator runs one (see builders/redis.py); redis_secret_ref then names
    # the Secret it generates.
    redis_provisioned: bool = False
    autoscaling: Autoscaling | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> DelayQueueSpec:
        name = _metadata_name(body)
        if len(name) > MAX_DELAYQUEUE_NAME or not _DNS_LABEL.match(name):
            raise SpecError(
                f"metadata.name {name!r}: a DelayQueue name must be at most {MAX_DELAYQUEUE_NAME} "
                "characters of lower-case letters, digits and '-', starting with a letter "
                "(it names the beanstalkd StatefulSet and each node's DNS name)"
            )
        spec = _section(body, "spec", "spec")
        _refuse_unknown(
            spec,
            "spec",
            {
                "replicas",
                "tube",
                "image",
                "resources",
                "maxJobBytes",
                "persistence",
                "redis",
                "delivery",
                "autoscaling",
            },
        )
        replicas = _int(spec, "replicas", "spec.replicas", DEFAULT_REPLICAS, low=1, high=MAX_REPLICAS)
        tube = _str(spec, "tube", "spec.tube", name)
        if not _TUBE.match(tube):
            raise SpecError(
                f"spec.tube {tube!r}: use 1-200 characters from A-Z a-z 0-9 - + / ; . $ _ ( ), "
                "not starting with '-'"
            )
        image = _str(spec, "image", "spec.image", DEFAULT_BEANSTALKD_IMAGE)
        if not image.strip() or any(c.isspace() for c in image):
            raise SpecError(f"spec.image {image!r}: give an image reference without spaces")
        persistence = _section(spec, "persistence", "spec.persistence")
        _refuse_unknown(
            persistence,
            "spec.persistence",
            {"enabled", "size", "storageClassName", "fsyncMillis", "deleteClaim"},
        )
        size = _str(persistence, "size", "spec.persistence.size", DEFAULT_PERSISTENCE_SIZE)
        if not _QUANTITY.match(size):
            raise SpecError(f"spec.persistence.size {size!r}: give a quantity such as 1Gi or 500Mi")
        storage_class = _str(persistence, "storageClassName", "spec.persistence.storageClassName", None)
        fsync = _int(
            persistence, "fsyncMillis", "spec.persistence.fsyncMillis", None, low=0, high=MAX_FSYNC_MILLIS
        )
        redis_url, redis_secret, provisioned = _redis(spec, name)
        return cls(
            replicas=replicas,
            tube=tube,
            image=image,
            resources=_resources(spec),
            max_job_bytes=_int(
                spec, "maxJobBytes", "spec.maxJobBytes", DEFAULT_MAX_JOB_BYTES, low=1, high=MAX_MAX_JOB_BYTES
            ),
            persistence_enabled=_bool(persistence, "enabled", "spec.persistence.enabled", True),
            persistence_size=size,
            storage_class_name=storage_class,
            fsync_millis=fsync,
            delete_claim=_bool(persistence, "deleteClaim", "spec.persistence.deleteClaim", False),
            redis_url=redis_url,
            redis_secret_ref=redis_secret,
            delivery=_delivery(spec),
            redis_provisioned=provisioned,
            autoscaling=_autoscaling(spec),
        )


@dataclass(frozen=True)
class KafkaQueueSpec:
    brokers: list[str]
    topic: str
    partitions: int
    replication_factor: int | None  # None: the brokers' default
    topic_config: dict[str, str]  # Kafka topic configs, values as strings ("86400000", "true")
    group: str
    offset: str  # "first" | "last"
    dead_letter_topic: str
    deletion_policy: str  # "Retain" | "Delete"
    sasl_mechanism: str | None  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_secret_ref: SaslSecretRef | None  # set exactly when sasl_mechanism is
    tls_ca_secret_ref: SecretRef | None  # the key holds a PEM CA bundle
    delivery: dict[str, Any]  # camelCase delivery policy as given (checked parseable)
    tls: bool = False  # connect with TLS (with the system CAs unless tls_ca_secret_ref is set)
    # SASL credentials may go over a plaintext listener only when the spec says so explicitly.
    allow_plaintext: bool = False
    autoscaling: Autoscaling | None = None
    # librdkafka properties for the sidecars' consumers (spec.librdkafka), passed through.
    librdkafka: dict[str, str | int | float | bool] = field(default_factory=dict)

    @property
    def attempts_topic(self) -> str:
        """The consumers' attempts journal (queue_engine.kq.attempt_journal): compacted, small."""
        return f"{self.topic}.attempts"

    @property
    def topics(self) -> tuple[str, str, str]:
        """Every topic the resource stands for: the topic, its dead letters, its attempts journal."""
        return self.topic, self.dead_letter_topic, self.attempts_topic

    @property
    def plaintext_credentials_refused(self) -> str | None:
        """Why the SASL credentials must not be sent (a plaintext listener, not allowed), or None."""
        if self.sasl_mechanism and not self.tls and not self.allow_plaintext:
            return (
                f"SASL {self.sasl_mechanism} without TLS would send the credentials of Secret "
                f"{self.sasl_secret_ref.name if self.sasl_secret_ref else '?'} in plaintext; set "
                "spec.auth.tls, or spec.auth.allowPlaintext: true if the network is trusted"
            )
        return None

    @property
    def security_protocol(self) -> str:
        """librdkafka's ``security.protocol`` for this spec."""
        if self.sasl_mechanism:
            return "SASL_SSL" if self.tls else "SASL_PLAINTEXT"
        return "SSL" if self.tls else "PLAINTEXT"

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> KafkaQueueSpec:
        name = _metadata_name(body)
        spec = _section(body, "spec", "spec")
        _refuse_unknown(
            spec,
            "spec",
            {
                "brokers",
                "topic",
                "group",
                "offset",
                "auth",
                "deadLetterTopic",
                "deletionPolicy",
                "delivery",
                "autoscaling",
                "librdkafka",
            },
        )
        brokers = _brokers(spec)
        topic_section = _section(spec, "topic", "spec.topic")
        _refuse_unknown(topic_section, "spec.topic", {"name", "partitions", "replicationFactor", "config"})
        topic = _topic_name(_str(topic_section, "name", "spec.topic.name", name), "spec.topic.name")
        dead_letter = _topic_name(
            _str(spec, "deadLetterTopic", "spec.deadLetterTopic", f"{topic}.dlq"), "spec.deadLetterTopic"
        )
        if dead_letter == topic:
            raise SpecError(
                f"spec.deadLetterTopic {dead_letter!r} is the topic itself; name a different topic "
                f"(or leave it out for {topic + '.dlq'!r})"
            )
        # Namespaced by default: two teams' "orders" must never share a consumer group.
        namespace = str((body.get("metadata") or {}).get("namespace") or "default")
        group = _str(spec, "group", "spec.group", f"{namespace}.{name}")
        if not group.strip():
            raise SpecError("spec.group is empty; give a consumer group name or leave it out")
        sasl_mechanism, sasl_secret, tls, ca_secret = _auth(spec)
        return cls(
            brokers=brokers,
            topic=topic,
            partitions=_int(
                topic_section, "partitions", "spec.topic.partitions", DEFAULT_PARTITIONS, low=1, high=None
            ),
            replication_factor=_int(
                topic_section,
                "replicationFactor",
                "spec.topic.replicationFactor",
                DEFAULT_REPLICATION_FACTOR,
                low=1,
                high=MAX_REPLICATION_FACTOR,
            ),
            topic_config=_topic_config(topic_section),
            group=group,
            offset=_choice(spec, "offset", "spec.offset", "last", OFFSETS),
            dead_letter_topic=dead_letter,
            deletion_policy=_choice(
                spec, "deletionPolicy", "spec.deletionPolicy", "Retain", DELETION_POLICIES
            ),
            sasl_mechanism=sasl_mechanism,
            sasl_secret_ref=sasl_secret,
            tls_ca_secret_ref=ca_secret,
            delivery=_delivery(spec),
            tls=tls,
            autoscaling=_autoscaling(spec),
            allow_plaintext=_bool(
                _section(spec, "auth", "spec.auth"), "allowPlaintext", "spec.auth.allowPlaintext", False
            ),
            librdkafka=_librdkafka(spec),
        )


# --- field readers: each names the field it reads in its error -------------------------------


def _metadata_name(body: Mapping[str, Any]) -> str:
    metadata = body.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name:
        raise SpecError("metadata.name is missing")
    return name


def _section(parent: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{path} must be an object (key: value pairs), got {type(value).__name__}")
    return value


def _refuse_unknown(section: Mapping[str, Any], path: str, known: set[str]) -> None:
    unknown = sorted(set(section) - known)
    if unknown:
        fields = ", ".join(f"{path}.{key}" for key in unknown)
        raise SpecError(f"unknown field(s) {fields}; known: {', '.join(sorted(known))}")


def _int(
    section: Mapping[str, Any], key: str, path: str, default: Any, *, low: int | None, high: int | None
) -> Any:
    value = section.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{path} must be a whole number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise SpecError(f"{path} is {value}; use a number {bounds}")
    return value


def _str(section: Mapping[str, Any], key: str, path: str, default: Any) -> Any:
    value = section.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise SpecError(f"{path} must be a string, got {value!r}")
    return value


def _bool(section: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    value = section.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise SpecError(f"{path} must be true or false, got {value!r}")
    return value


def _choice(section: Mapping[str, Any], key: str, path: str, default: str, choices: tuple[str, ...]) -> str:
    value = _str(section, key, path, default)
    if value not in choices:
        raise SpecError(f"{path} is {value!r}; use one of {', '.join(choices)}")
    return str(value)


def _secret_ref(section: Mapping[str, Any], path: str, default_key: str | None) -> SecretRef:
    _refuse_unknown(section, path, {"name", "key"})
    name = _str(section, "name", f"{path}.name", None)
    if not name:
        raise SpecError(f"{path}.name is missing; name the Secret in this namespace")
    key = _str(section, "key", f"{path}.key", default_key)
    if not key:
        raise SpecError(f"{path}.key is missing; name the key of Secret {name!r} to read")
    if not _SECRET_KEY.match(key):
        raise SpecError(f"{path}.key {key!r}: a Secret key has only letters, digits, '-', '_' and '.'")
    return SecretRef(name, key)


AUTOSCALING_KINDS = ("Deployment", "StatefulSet")
DEFAULT_THRESHOLD = 10


def _autoscaling(spec: Mapping[str, Any]) -> Autoscaling | None:
    if spec.get("autoscaling") is None:
        return None
    section = _section(spec, "autoscaling", "spec.autoscaling")
    _refuse_unknown(
        section,
        "spec.autoscaling",
        {
            "target",
            "minReplicas",
            "maxReplicas",
            "threshold",
            "pollingInterval",
            "cooldownPeriod",
            "authenticationRef",
        },
    )
    target = _section(section, "target", "spec.autoscaling.target")
    _refuse_unknown(target, "spec.autoscaling.target", {"kind", "name"})
    name = _str(target, "name", "spec.autoscaling.target.name", None)
    if not name:
        raise SpecError(
            "spec.autoscaling.target.name is missing: name the Deployment (or StatefulSet) to scale"
        )
    low = _int(section, "minReplicas", "spec.autoscaling.minReplicas", 1, low=0, high=None)
    high = _int(section, "maxReplicas", "spec.autoscaling.maxReplicas", 10, low=1, high=None)
    if high < low:
        raise SpecError(f"spec.autoscaling.maxReplicas {high} is below minReplicas {low}")
    auth = _section(section, "authenticationRef", "spec.autoscaling.authenticationRef")
    _refuse_unknown(auth, "spec.autoscaling.authenticationRef", {"name"})
    return Autoscaling(
        target_kind=_choice(target, "kind", "spec.autoscaling.target.kind", "Deployment", AUTOSCALING_KINDS),
        target_name=name,
        min_replicas=low,
        max_replicas=high,
        threshold=_int(
            section, "threshold", "spec.autoscaling.threshold", DEFAULT_THRESHOLD, low=1, high=None
        ),
        polling_interval=_int(
            section, "pollingInterval", "spec.autoscaling.pollingInterval", None, low=1, high=None
        ),
        cooldown_period=_int(
            section, "cooldownPeriod", "spec.autoscaling.cooldownPeriod", None, low=0, high=None
        ),
        authentication_ref=_str(auth, "name", "spec.autoscaling.authenticationRef.name", None),
    )


def _delivery(spec: Mapping[str, Any]) -> dict[str, Any]:
    delivery = dict(_section(spec, "delivery", "spec.delivery"))
    try:
        policy = {key: value for key, value in delivery.items() if key != "bulk"}
        DeliveryPolicy.from_mapping(policy)
        if "bulk" in delivery:
            _check_bulk(delivery["bulk"])
    except (ValueError, TypeError) as exc:
        message = str(exc)
        if not message.startswith("delivery"):
            message = f"delivery: {message}"
        raise SpecError(f"spec.{message}") from exc
    return delivery


def _check_bulk(bulk: Any) -> None:
    """``spec.delivery.bulk``: what the sidecar accepts (the CRD schema says the same)."""
    if not isinstance(bulk, Mapping):
        raise ValueError("delivery.bulk: expected a mapping, e.g. {maxMessages: 100, maxWait: 10ms}")
    unknown = set(bulk) - {"maxMessages", "maxWait"}
    if unknown:
        raise ValueError(f"delivery.bulk: unknown key(s) {', '.join(sorted(unknown))}")
    count = bulk.get("maxMessages", 100)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
        raise ValueError(f"delivery.bulk.maxMessages: {count!r}; use a whole number from 1 to 1000")
    if not 0 <= parse_duration(bulk.get("maxWait", "10ms")) <= 10:
        raise ValueError("delivery.bulk.maxWait: use a duration from 0 to 10s, e.g. 10ms")


def _resources(spec: Mapping[str, Any]) -> dict[str, Any]:
    resources = _section(spec, "resources", "spec.resources")
    _refuse_unknown(resources, "spec.resources", {"limits", "requests"})
    for part in ("limits", "requests"):
        for resource, amount in _section(resources, part, f"spec.resources.{part}").items():
            text = str(amount) if isinstance(amount, int | float) and not isinstance(amount, bool) else amount
            if not isinstance(text, str) or not _QUANTITY.match(text):
                raise SpecError(
                    f"spec.resources.{part}.{resource} is {amount!r}; give a quantity such as 100m or 128Mi"
                )
    return {part: dict(value) for part, value in resources.items()}


def _redis(spec: Mapping[str, Any], name: str) -> tuple[str | None, SecretRef | None, bool]:
    """(url, secretRef, provisioned). Without ``spec.redis`` the operator provisions one, and
    its URL (password included) is in the generated Secret ``<name>-redis``, key ``url``."""
    if spec.get("redis") is None:
        return None, SecretRef(name=provisioned_redis_name(name), key=PROVISIONED_REDIS_KEY), True
    redis = _section(spec, "redis", "spec.redis")
    _refuse_unknown(redis, "spec.redis", {"url", "secretRef"})
    url = _str(redis, "url", "spec.redis.url", None)
    has_secret = redis.get("secretRef") is not None
    if url is not None and has_secret:
        raise SpecError("spec.redis has both url and secretRef; keep one")
    if url is None and not has_secret:
        raise SpecError(
            "spec.redis needs url (redis://host:6379/0) or secretRef {name, key} naming a Secret "
            "whose key holds the Redis URL; or leave spec.redis out and the operator provisions one"
        )
    if url is not None:
        if not url.startswith(_REDIS_SCHEMES):
            # The URL is not echoed: it may carry a password.
            raise SpecError(
                "spec.redis.url must start with redis://, rediss:// or unix://; "
                "to keep a password out of the resource, use spec.redis.secretRef"
            )
        return url, None, False
    ref = _secret_ref(_section(redis, "secretRef", "spec.redis.secretRef"), "spec.redis.secretRef", None)
    return None, ref, False


def provisioned_redis_name(name: str) -> str:
    """The provisioned Redis's StatefulSet, Service and Secret of DelayQueue ``name``."""
    return f"{name}-redis"


def _brokers(spec: Mapping[str, Any]) -> list[str]:
    brokers = spec.get("brokers")
    if brokers is None or brokers == []:
        raise SpecError("spec.brokers is missing; list the bootstrap brokers as host:port")
    if not isinstance(brokers, list) or not all(isinstance(b, str) for b in brokers):
        raise SpecError(f"spec.brokers must be a list of host:port strings, got {brokers!r}")
    for broker in brokers:
        port = broker.rsplit(":", 1)[-1]
        if not _BROKER.match(broker) or not 0 < int(port) < 65536:
            raise SpecError(f"spec.brokers entry {broker!r}: write it as host:port, e.g. kafka-0.kafka:9092")
    return list(brokers)


def _topic_name(topic: str, path: str) -> str:
    if not _KAFKA_TOPIC.match(topic) or topic in (".", ".."):
        raise SpecError(
            f"{path} {topic!r}: a Kafka topic name has 1-249 characters from A-Z a-z 0-9 . _ - "
            "and is not '.' or '..'"
        )
    return topic


def _topic_config(topic_section: Mapping[str, Any]) -> dict[str, str]:
    config = _section(topic_section, "config", "spec.topic.config")
    result: dict[str, str] = {}
    for key, value in config.items():
        path = f"spec.topic.config.{key}"
        if not isinstance(key, str) or not _TOPIC_CONFIG_KEY.match(key):
            raise SpecError(f"{path}: a topic config name looks like retention.ms or cleanup.policy")
        if isinstance(value, bool):
            result[key] = "true" if value else "false"
        elif isinstance(value, int | float | str):
            result[key] = str(value)
        else:
            raise SpecError(f"{path} must be a string, number or boolean, got {type(value).__name__}")
    return result


def _librdkafka(spec: Mapping[str, Any]) -> dict[str, str | int | float | bool]:
    result: dict[str, str | int | float | bool] = {}
    for key, value in _section(spec, "librdkafka", "spec.librdkafka").items():
        path = f"spec.librdkafka.{key}"
        if not isinstance(key, str) or not _TOPIC_CONFIG_KEY.match(key):
            raise SpecError(f"{path}: a librdkafka property name looks like session.timeout.ms")
        if key.startswith(("security.", "sasl.", "ssl.")):
            raise SpecError(f"{path}: security settings come from spec.auth, not spec.librdkafka")
        if not isinstance(value, bool | int | float | str):
            raise SpecError(f"{path} must be a string, number or boolean, got {type(value).__name__}")
        result[key] = value
    return result


def _auth(spec: Mapping[str, Any]) -> tuple[str | None, SaslSecretRef | None, bool, SecretRef | None]:
    auth = _section(spec, "auth", "spec.auth")
    _refuse_unknown(auth, "spec.auth", {"sasl", "tls", "allowPlaintext"})
    mechanism: str | None = None
    sasl_secret: SaslSecretRef | None = None
    if auth.get("sasl") is not None:
        sasl = _section(auth, "sasl", "spec.auth.sasl")
        _refuse_unknown(sasl, "spec.auth.sasl", {"mechanism", "secretRef"})
        if sasl.get("mechanism") is None:
            raise SpecError(f"spec.auth.sasl.mechanism is missing; use one of {', '.join(SASL_MECHANISMS)}")
        mechanism = _choice(sasl, "mechanism", "spec.auth.sasl.mechanism", "", SASL_MECHANISMS)
        ref = _section(sasl, "secretRef", "spec.auth.sasl.secretRef")
        _refuse_unknown(ref, "spec.auth.sasl.secretRef", {"name", "usernameKey", "passwordKey"})
        secret_name = _str(ref, "name", "spec.auth.sasl.secretRef.name", None)
        if not secret_name:
            raise SpecError(
                "spec.auth.sasl.secretRef.name is missing; name a Secret with keys username and password"
            )
        keys = []
        for key_field, default in (("usernameKey", "username"), ("passwordKey", "password")):
            key = _str(ref, key_field, f"spec.auth.sasl.secretRef.{key_field}", default)
            if not _SECRET_KEY.match(key):
                raise SpecError(
                    f"spec.auth.sasl.secretRef.{key_field} {key!r}: a Secret key has only letters, digits, "
                    "'-', '_' and '.'"
                )
            keys.append(key)
        sasl_secret = SaslSecretRef(secret_name, keys[0], keys[1])
    tls = auth.get("tls") is not None
    ca_secret: SecretRef | None = None
    if tls:
        tls_section = _section(auth, "tls", "spec.auth.tls")
        _refuse_unknown(tls_section, "spec.auth.tls", {"caSecretRef"})
        if tls_section.get("caSecretRef") is not None:
            ca_secret = _secret_ref(
                _section(tls_section, "caSecretRef", "spec.auth.tls.caSecretRef"),
                "spec.auth.tls.caSecretRef",
                DEFAULT_CA_KEY,
            )
    return mechanism, sasl_secret, tls, ca_secret
