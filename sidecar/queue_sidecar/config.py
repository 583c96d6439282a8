"""The sidecar's YAML config (SPEC section 6): parsed strictly, errors name the key path.

``load_config(path)`` and ``parse_config(mapping)`` return a :class:`SidecarConfig`; anything
wrong raises :class:`ConfigError` whose message lists every problem as
``queues[1].delivery.maxAtempts: unknown key``. Secrets (Redis URLs, SASL passwords) are held
as ``SecretStr`` so they never show in a repr or a log line.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel
from redis.connection import parse_url as parse_redis_url

from queue_engine.dq.membership import Membership, read_nodes_file
from queue_engine.durations import parse_duration
from queue_engine.errors import ConfigError as EngineConfigError
from queue_engine.policy import DeliveryPolicy

if TYPE_CHECKING:
    from queue_engine.kq import KafkaSecurity

__all__ = [
    "AppConfig",
    "BulkConfig",
    "ConfigError",
    "DelayQueueConfig",
    "DeliveryConfig",
    "HealthConfig",
    "KafkaQueueConfig",
    "PublishConfig",
    "QueueConfig",
    "SidecarConfig",
    "load_config",
    "parse_config",
]

DEFAULT_TIMEOUT = 30.0
MAX_BULK_MESSAGES = 1000  # messages per bulk call at most: each is held in memory until answered


class ConfigError(EngineConfigError):
    """The config file cannot be used; the message names each offending key and what to fix."""


def _duration(value: Any) -> float:
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(_duration)]

# Kafka's own words for where a new group starts (auto.offset.reset) are accepted too.
_OFFSET_ALIASES = {
    "earliest": "first",
    "smallest": "first",
    "beginning": "first",
    "latest": "last",
    "largest": "last",
    "end": "last",
}


def _offset(value: Any) -> Any:
    return _OFFSET_ALIASES.get(value, value) if isinstance(value, str) else value


Offset = Annotated[Literal["first", "last"], BeforeValidator(_offset)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Model(BaseModel):
    # camelCase in YAML, snake_case in Python; unknown keys are an error naming the key.
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True, strict=False
    )


class AppConfig(_Model):
    protocol: Literal["http", "grpc"] = "http"
    host: str = "127.0.0.1"
    port: Port
    path: str = "/messages"
    max_concurrency: int = Field(8, ge=1, le=10_000)
    timeout: Duration = DEFAULT_TIMEOUT  # per attempt, for queues whose delivery does not set one

    @model_validator(mode="after")
    def _path_is_absolute(self) -> AppConfig:
        if not self.path.startswith("/"):
            raise ValueError(f"app.path {self.path!r} must start with '/'")
        return self


class PublishConfig(_Model):
    port: Port = 3500
    grpc_port: Port | None = None
    host: str = "127.0.0.1"  # loopback: only the pod's own containers may publish


class HealthConfig(_Model):
    port: Port = 9464
    host: str = "0.0.0.0"  # kubelet probes and Prometheus come from outside the pod


class BackoffConfig(_Model):
    initial: Duration | None = None
    max: Duration | None = None
    multiplier: float | None = Field(None, ge=1)


class BulkConfig(_Model):
    """Bulk delivery: up to ``maxMessages`` messages, or what came within ``maxWait``, per call."""

    max_messages: int = Field(100, ge=1, le=MAX_BULK_MESSAGES)
    # How long the first message of a batch waits for more; the price of bulk at light load.
    max_wait: Duration = Field(0.01, ge=0, le=10)


class DeliveryConfig(_Model):
    max_attempts: int | None = Field(None, ge=1)
    backoff: BackoffConfig | None = None
    timeout: Duration | None = Field(None, gt=0)
    bulk: BulkConfig | None = None  # off unless given: one message per call

    def policy(self, default_timeout: float) -> DeliveryPolicy:
        data: dict[str, Any] = self.model_dump(by_alias=True, exclude_none=True, exclude={"bulk"})
        data.setdefault("timeout", default_timeout)
        return DeliveryPolicy.from_mapping(data)


class RedisConfig(_Model):
    # Exactly one: the URL itself, a file holding it (a mounted Secret), or an environment
    # variable holding it (a Secret passed with secretKeyRef).
    url: SecretStr | None = None
    url_file: Path | None = None
    url_env: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> RedisConfig:
        _one_of(self, "url", "urlFile", "urlEnv")
        return self

    def resolve(self) -> str:
        return _secret(self.url, self.url_file, self.url_env, "url")


class SaslConfig(_Model):
    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
    # The username as is, from a file (a mounted Secret) or from an environment variable.
    username: str | None = None
    username_file: Path | None = None
    username_env: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    password_env: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SaslConfig:
        _one_of(self, "username", "usernameFile", "usernameEnv")
        _one_of(self, "password", "passwordFile", "passwordEnv")
        return self

    def resolve_username(self) -> str:
        if self.username is not None:
            return self.username
        return _secret(None, self.username_file, self.username_env, "username")

    def resolve_password(self) -> str:
        return _secret(self.password, self.password_file, self.password_env, "password")


class TlsConfig(_Model):
    ca_file: Path | None = None


class KafkaAuthConfig(_Model):
    sasl: SaslConfig | None = None
    tls: TlsConfig | None = None


class _QueueBase(_Model):
    name: str = Field(min_length=1, max_length=253)
    delivery: DeliveryConfig = Field(default_factory=lambda: DeliveryConfig.model_validate({}))
    # Filled by SidecarConfig from app.timeout, so policy() needs no arguments.
    _default_timeout: float = PrivateAttr(DEFAULT_TIMEOUT)

    def policy(self) -> DeliveryPolicy:
        """The delivery policy: this queue's ``delivery`` over the defaults (timeout from app)."""
        return self.delivery.policy(self._default_timeout)


class DelayQueueConfig(_QueueBase):
    kind: Literal["DelayQueue"]
    # Exactly one: a fixed list, or a file the operator keeps current (a mounted ConfigMap,
    # watched for changes; see queue_engine.dq.membership).
    nodes: list[str] | None = Field(None, min_length=1)
    nodes_file: Path | None = None
    tube: str = ""  # default: the queue's name
    redis: RedisConfig
    max_job_bytes: int = Field(65535, ge=1)
    _redis_url: SecretStr = PrivateAttr(SecretStr(""))

    @model_validator(mode="after")
    def _resolve(self) -> DelayQueueConfig:
        _one_of(self, "nodes", "nodesFile")
        for node in self.nodes or []:
            host, sep, port = node.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"node {node!r} must be host:port")
        if not self.tube:
            object.__setattr__(self, "tube", self.name)
        url = self.redis.resolve()
        try:
            parse_redis_url(url)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            # redis-py's message names the schemes, never the URL (which may hold a password).
            raise ValueError(f"redis: {exc}") from None
        self._redis_url = SecretStr(url)
        return self

    @property
    def redis_url(self) -> str:
        return self._redis_url.get_secret_value()

    def membership(self) -> Membership:
        """The nodes now: the fixed list (all active), or what the nodes file says (read here,
        not when the config is parsed: the file is the operator's, mounted beside the config)."""
        if self.nodes_file is not None:
            return read_nodes_file(self.nodes_file)
        return Membership.of(self.nodes or [])


class KafkaQueueConfig(_QueueBase):
    kind: Literal["KafkaQueue"]
    brokers: list[str] = Field(min_length=1)
    topic: str = ""  # default: the queue's name
    group: str = ""  # default: the queue's name
    offset: Offset = "last"
    dead_letter_topic: str = ""  # default: <topic>.dlq
    auth: KafkaAuthConfig | None = None
    # librdkafka properties for the consumer, e.g. {session.timeout.ms: 10000}; checked at start.
    librdkafka: dict[str, str | int | float | bool] = Field(default_factory=dict)
    _password: SecretStr = PrivateAttr(SecretStr(""))
    _username: str = PrivateAttr("")

    @model_validator(mode="after")
    def _defaults(self) -> KafkaQueueConfig:
        if not self.topic:
            object.__setattr__(self, "topic", self.name)
        if not self.group:
            object.__setattr__(self, "group", self.name)
        if not self.dead_letter_topic:
            object.__setattr__(self, "dead_letter_topic", f"{self.topic}.dlq")
        if self.auth is not None and self.auth.sasl is not None:
            self._password = SecretStr(self.auth.sasl.resolve_password())
            self._username = self.auth.sasl.resolve_username()
        return self

    def security(self) -> KafkaSecurity | None:
        """librdkafka security settings, or None for a plaintext broker."""
        if self.auth is None or (self.auth.sasl is None and self.auth.tls is None):
            return None
        from queue_engine.kq import KafkaSecurity  # noqa: PLC0415 - keeps config importable alone

        sasl, tls = self.auth.sasl, self.auth.tls
        return KafkaSecurity(
            sasl_mechanism=sasl.mechanism if sasl else None,
            username=self._username if sasl else None,
            password=self._password.get_secret_value() if sasl else None,
            tls=tls is not None,
            ca_location=str(tls.ca_file) if tls and tls.ca_file else None,
        )


QueueConfig = Annotated[DelayQueueConfig | KafkaQueueConfig, Field(discriminator="kind")]


class SidecarConfig(_Model):
    app: AppConfig
    publish: PublishConfig = Field(default_factory=PublishConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    queues: list[QueueConfig] = Field(default_factory=list)
    shutdown_grace_period: Duration = 20.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _check(self) -> SidecarConfig:
        names = [q.name for q in self.queues]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"queues: name(s) {', '.join(dupes)} used more than once; names must be unique")
        for queue in self.queues:
            queue._default_timeout = self.app.timeout
            try:
                queue.policy()
            except ValueError as exc:
                raise ValueError(f"queue {queue.name}: {exc}") from exc
        ports = {"app.port": self.app.port, "health.port": self.health.port}
        ports["publish.port"] = self.publish.port
        if self.publish.grpc_port is not None:
            ports["publish.grpcPort"] = self.publish.grpc_port
        # All share the pod's network namespace: two of them on one port cannot both listen.
        seen: dict[int, str] = {}
        for key, port in ports.items():
            if port in seen:
                raise ValueError(f"{seen[port]} and {key} are both {port}; each must have a port of its own")
            seen[port] = key
        return self

    def queue(self, name: str) -> DelayQueueConfig | KafkaQueueConfig:
        for queue in self.queues:
            if queue.name == name:
                return queue
        raise KeyError(name)


def parse_config(data: Any) -> SidecarConfig:
    """Validate a mapping (parsed YAML) into a :class:`SidecarConfig`, or raise :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return SidecarConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def load_config(path: str | Path) -> SidecarConfig:
    """Read and validate a YAML config file, or raise :class:`ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {exc}") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"config file {path}:\n{exc}") from None


def _one_of(model: BaseModel, *keys: str) -> None:
    given = [key for key in keys if getattr(model, _snake(key)) is not None]
    if len(given) != 1:
        raise ValueError(
            f"set exactly one of {', '.join(keys)}" + (f" (got {', '.join(given)})" if given else "")
        )


def _snake(camel: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)


def _secret(value: SecretStr | None, file: Path | None, env: str | None, key: str) -> str:
    if value is not None:
        return value.get_secret_value()
    if file is not None:
        try:
            return file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"{key}File {file}: cannot read it ({exc.strerror})") from None
    assert env is not None
    found = os.environ.get(env)
    if not found:
        raise ValueError(f"{key}Env: environment variable {env} is not set or empty")
    return found


_QUEUE_KINDS = {"DelayQueue", "KafkaQueue"}


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        path = _path(error["loc"])
        kind = error["type"]
        if kind == "extra_forbidden":
            message = "unknown key" + _did_you_mean(str(error["loc"][-1]))
        elif kind == "missing":
            message = "required key missing"
        elif kind == "union_tag_invalid":
            message = "kind must be DelayQueue or KafkaQueue"
        elif kind == "union_tag_not_found":
            message = "kind missing: set DelayQueue or KafkaQueue"
        elif kind in {"model_type", "model_attributes_type", "dict_type"}:
            message = "expected a mapping (key: value lines)"
        else:
            message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        lines.append(f"{path}: {message}" if path else message)
    return "\n".join(lines)


def _path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in _QUEUE_KINDS:
            continue  # the discriminated union's tag, not a key the user wrote
        else:
            text += f".{part}" if text else str(part)
    return text


def _known_keys() -> set[str]:
    keys: set[str] = set()
    models: list[type[BaseModel]] = [SidecarConfig]
    while models:
        model = models.pop()
        for name, field in model.model_fields.items():
            keys.add(field.alias or name)
            for arg in _types_in(field.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel) and arg is not model:
                    models.append(arg)
    return keys


def _types_in(annotation: Any) -> list[Any]:
    found = [annotation]
    for arg in getattr(annotation, "__args__", ()):
        found += _types_in(arg)
    return found


def _did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(key, sorted(_known_keys()), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""
