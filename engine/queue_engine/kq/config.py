"""Validation of user settings and the librdkafka configs built from them."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from queue_engine.errors import ConfigError, NotFound, QueueError, TooLarge, Unavailable
from queue_engine.kq.security import KafkaSecurity

log = logging.getLogger("queue_engine.kq")
librdkafka_log = logging.getLogger("queue_engine.kq.librdkafka")

OFFSET_RESETS = {"first": "earliest", "last": "latest"}

# An opt-in (``extra=FAST_GROUP``) for tests and small groups: tansu joins a group in ~3 s with
# these instead of ~23 s. Not the default: a 6 s session expires on a GC pause or a slow network,
# and each expiry is a rebalance; production keeps librdkafka's 45 s.
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


# librdkafka properties only a consumer accepts: a producer or an AdminClient built from the
# consumer's settings (dead letters, the attempts journal, lag) is given them without these.
CONSUMER_ONLY_PREFIXES = ("session.", "heartbeat.", "group.", "max.poll.", "fetch.", "queued.", "partition.")


def without_consumer_keys(config: Mapping[str, Any], also: tuple[str, ...] = ()) -> dict[str, Any]:
    """``config`` minus the consumer-only librdkafka keys (and the keys in ``also``)."""
    return {k: v for k, v in config.items() if not k.startswith(CONSUMER_ONLY_PREFIXES) and k not in also}


class TopicRefused(Unavailable):
    """The broker refuses the topic itself (invalid name, not authorized): the same write fails again."""


def check_brokers(brokers: Sequence[str] | str) -> str:
    """Return the bootstrap string; refuse an empty list or an entry without host:port."""
    items = brokers.split(",") if isinstance(brokers, str) else list(brokers)
    items = [item.strip() for item in items if item and item.strip()]
    if not items:
        raise ConfigError("brokers: no broker given; list at least one host:port")
    for item in items:
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"brokers: {item!r} is not host:port (e.g. kafka-0.kafka:9092)")
    return ",".join(items)


def check_name(field: str, value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{field}: must be a non-empty name")
    return value


def check_offset(offset: str) -> str:
    """Map go-queue's ``first``/``last`` to librdkafka's auto.offset.reset."""
    try:
        return OFFSET_RESETS[offset]
    except (KeyError, TypeError):
        raise ConfigError(f"offset: {offset!r} is not one of first, last") from None


def client_config(
    bootstrap: str,
    security: KafkaSecurity | None,
    defaults: Mapping[str, Any],
    extra: Mapping[str, Any] | None,
    managed: Mapping[str, Any],
) -> dict[str, Any]:
    """defaults < extra < managed; ``extra`` may not override what the guarantees rely on."""
    extra = dict(extra or {})
    clash = sorted(key for key in extra if key in managed or key == "bootstrap.servers")
    if clash:
        raise ConfigError(f"extra: {', '.join(clash)} is set by the engine and cannot be overridden")
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": librdkafka_log}
    config.update(defaults)
    if security is not None:
        config.update(security.librdkafka_config())
    config.update(extra)
    config.update(managed)
    return config


def check_client_config(config: Mapping[str, Any], kind: str) -> None:
    """Raise ConfigError now for what librdkafka would refuse later (unknown key, bad value).

    Builds a throwaway client without brokers (so nothing connects) and without callbacks.
    """
    probe = {k: v for k, v in config.items() if k not in ("bootstrap.servers", "logger", "error_cb")}
    probe["log_level"] = 0
    try:
        if kind == "consumer":
            Consumer(probe).close()
        else:
            Producer(probe).flush(0)
    except KafkaException as exc:
        kerr = exc.args[0] if exc.args else exc
        text = kerr.str() if isinstance(kerr, KafkaError) else str(exc)
        raise ConfigError(f"extra: {text} (in the {kind} settings)") from exc


def error_from_kafka(err: KafkaError | KafkaException | BaseException, what: str) -> QueueError:
    """Turn a librdkafka error into the engine error a caller can act on."""
    kerr = err.args[0] if isinstance(err, KafkaException) and err.args else err
    if not isinstance(kerr, KafkaError):
        return Unavailable(f"{what}: {err}")
    text = f"{what}: {kerr.str()} ({kerr.name()})"
    code = kerr.code()
    if code == KafkaError.MSG_SIZE_TOO_LARGE:
        return TooLarge(text)
    if code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION):
        return NotFound(text)
    if code in (KafkaError._INVALID_ARG, KafkaError.INVALID_CONFIG):
        return ConfigError(text)
    if code in (KafkaError.TOPIC_EXCEPTION, KafkaError.TOPIC_AUTHORIZATION_FAILED):
        return TopicRefused(text)
    return Unavailable(text)
