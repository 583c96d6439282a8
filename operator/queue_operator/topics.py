"""Kafka topic administration for KafkaQueues: ensure, inspect and delete topics.

The brokers decide what is possible: a topic is created with its partitions, replication
factor and config; an existing topic gets its config applied and its partitions raised
(Kafka cannot remove partitions, so a decrease is refused and reported, never attempted).
Errors come back as values a status condition can show: :class:`BrokerUnavailable` means
"try again later", a :class:`TopicReport` with a ``problem`` means "a person must act".

Existence is checked with a metadata request for *all* topics: asking for one topic by name
makes brokers with ``auto.create.topics.enable`` (tansu, Kafka's default) create it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from queue_engine.kq.group_start import (
    TRANSIENT,
    GroupStartFailed,
    describe,
    kafka_error,
    start_group_at_end,
)
from queue_engine.kq.security import KafkaSecurity
from queue_operator.kafka_errors import BrokerUnavailable, ClientConfigInvalid

__all__ = ["AdminPool", "BrokerUnavailable", "ClientConfigInvalid", "TopicAdmin", "TopicReport"]

log = logging.getLogger("queue_operator.topics")
librdkafka_log = logging.getLogger("queue_operator.topics.librdkafka")


@dataclass(frozen=True)
class TopicReport:
    """What a topic looks like on the brokers after ensuring it, and what could not be done."""

    name: str
    partitions: int
    created: bool = False
    problem: str | None = None  # set when the topic differs from the spec and a person must act


class TopicAdmin:
    """Topic operations on one cluster; every call is bounded by ``timeout`` seconds."""

    def __init__(
        self,
        brokers: Iterable[str],
        security: KafkaSecurity | None = None,
        timeout: float = 5.0,
        ca_pem: str | None = None,
    ) -> None:
        self.brokers = ",".join(brokers)
        self.timeout = timeout
        self.cluster_id: str | None = None  # what the brokers called their cluster at the last listing
        self._ca_file: str | None = None
        if ca_pem is not None:
            # librdkafka reads the CA bundle from a file; keep it private to this process.
            fd, self._ca_file = tempfile.mkstemp(prefix="queue-operator-ca-", suffix=".pem")
            with os.fdopen(fd, "w") as handle:
                handle.write(ca_pem)
            base = security or KafkaSecurity()
            security = KafkaSecurity(
                sasl_mechanism=base.sasl_mechanism,
                username=base.username,
                password=base.password,
                tls=True,
                ca_location=self._ca_file,
            )
        config: dict[str, Any] = {
            "bootstrap.servers": self.brokers,
            "logger": librdkafka_log,
            "socket.timeout.ms": int(timeout * 1000),
            "reconnect.backoff.max.ms": 1000,
        }
        if security is not None:
            config.update(security.librdkafka_config())
        try:
            self._admin = AdminClient(config)
        except KafkaException as exc:
            self.close()
            raise ClientConfigInvalid(
                f"cannot set up a Kafka client for {self.brokers}: {describe(exc)}"
            ) from exc

    def close(self) -> None:
        if self._ca_file is not None:
            os.unlink(self._ca_file)
            self._ca_file = None

    def __enter__(self) -> TopicAdmin:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def partitions(self) -> dict[str, int]:
        """Every topic on the cluster with its partition count."""
        try:
            metadata = self._admin.list_topics(timeout=self.timeout)
        except KafkaException as exc:
            raise BrokerUnavailable(f"brokers {self.brokers} did not answer: {describe(exc)}") from exc
        self.cluster_id = metadata.cluster_id or None
        return {name: len(topic.partitions) for name, topic in metadata.topics.items() if topic.error is None}

    def ensure(
        self,
        name: str,
        partitions: int,
        replication_factor: int | None,
        config: Mapping[str, str],
        existing: Mapping[str, int] | None = None,
    ) -> TopicReport:
        """Create the topic, or bring an existing one as close to the spec as Kafka allows.

        ``existing``: a listing from :meth:`partitions` the caller already has (saves one).
        """
        existing = self.partitions() if existing is None else existing
        if name not in existing:
            return self._create(name, partitions, replication_factor, config)
        current = existing[name]
        self._apply_config(name, config)
        if current > partitions:
            return TopicReport(
                name,
                current,
                problem=(
                    f"topic {name} has {current} partitions and spec asks for {partitions}: Kafka cannot "
                    f"remove partitions, so the decrease is refused; set partitions to {current} or more"
                ),
            )
        if current < partitions:
            return self._raise_partitions(name, current, partitions)
        return TopicReport(name, current)

    def _create(
        self, name: str, partitions: int, replication_factor: int | None, config: Mapping[str, str]
    ) -> TopicReport:
        topic = NewTopic(
            name,
            num_partitions=partitions,
            # -1 asks the brokers for their default.replication.factor (KIP-464).
            replication_factor=-1 if replication_factor is None else replication_factor,
            config=dict(config),
        )
        future = self._admin.create_topics([topic], request_timeout=self.timeout)[name]
        try:
            future.result(timeout=self.timeout * 2)
        except KafkaException as exc:
            err = kafka_error(exc)
            if err is not None and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return TopicReport(name, self.partitions().get(name, partitions))
            if err is not None and not err.retriable() and err.code() not in TRANSIENT:
                return TopicReport(
                    name, 0, problem=f"the brokers refused to create topic {name}: {describe(exc)}"
                )
            raise BrokerUnavailable(f"creating topic {name} failed: {describe(exc)}") from exc
        log.info(
            "created topic %s (%d partitions, replication factor %s)",
            name,
            partitions,
            replication_factor or "the brokers' default",
        )
        return TopicReport(name, partitions, created=True)

    def _raise_partitions(self, name: str, current: int, wanted: int) -> TopicReport:
        future = self._admin.create_partitions([NewPartitions(name, wanted)], request_timeout=self.timeout)[
            name
        ]
        try:
            future.result(timeout=self.timeout * 2)
        except KafkaException as exc:
            err = kafka_error(exc)
            if err is not None and err.code() in TRANSIENT:
                raise BrokerUnavailable(f"raising partitions of {name} failed: {describe(exc)}") from exc
            return TopicReport(
                name,
                current,
                problem=(
                    f"topic {name} has {current} partitions and spec asks for {wanted}, but the brokers "
                    f"refused to add partitions: {describe(exc)}"
                ),
            )
        log.info("raised partitions of topic %s from %d to %d", name, current, wanted)
        return TopicReport(name, wanted)

    def _apply_config(self, name: str, config: Mapping[str, str]) -> None:
        if not config:
            return
        entries = [
            ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
            for key, value in config.items()
        ]
        resource = ConfigResource("topic", name, incremental_configs=entries)
        future = self._admin.incremental_alter_configs([resource], request_timeout=self.timeout)[resource]
        try:
            future.result(timeout=self.timeout * 2)
        except KafkaException as exc:
            raise BrokerUnavailable(f"applying the config of topic {name} failed: {describe(exc)}") from exc

    def start_group_at_end(self, group: str, topic: str, partitions: int) -> list[int]:
        """Commit the end offset for ``group`` on each partition where it has none; the partitions
        set (see :func:`queue_engine.kq.group_start.start_group_at_end`). Any failure to read or
        set them is retried by the caller: the resource is not Ready until the start is set."""
        try:
            return start_group_at_end(self._admin, group, topic, range(partitions), timeout=self.timeout)
        except GroupStartFailed as exc:
            raise BrokerUnavailable(str(exc)) from exc

    def _result(self, future: Any) -> Any:
        return future.result(timeout=self.timeout * 2)

    def delete(self, names: Iterable[str]) -> list[str]:
        """Delete the topics that exist; returns those deleted (absent ones are already gone)."""
        existing = self.partitions()
        present = [name for name in names if name in existing]
        if not present:
            return []
        futures = self._admin.delete_topics(present, request_timeout=self.timeout)
        for name, future in futures.items():
            try:
                future.result(timeout=self.timeout * 2)
            except KafkaException as exc:
                err = kafka_error(exc)
                if err is None or err.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise BrokerUnavailable(f"deleting topic {name} failed: {describe(exc)}") from exc
        log.info("deleted topics %s", ", ".join(present))
        return present


class AdminPool:
    """Shared :class:`TopicAdmin` clients: one per brokers and credentials, not one per call.

    A librdkafka client costs threads, sockets and a metadata round trip to set up; with one
    per KafkaQueue per check the operator's cost grew with every check. Clients idle for
    ``idle_seconds`` are dropped (a rotated Secret makes a new key, the old client ages out).
    The key holds a digest of the credentials, never the credentials themselves.
    """

    def __init__(self, idle_seconds: float = 600.0) -> None:
        self.idle_seconds = idle_seconds
        self._admins: dict[str, tuple[TopicAdmin, float]] = {}
        self._lock = threading.Lock()

    def get(
        self,
        brokers: Iterable[str],
        security: KafkaSecurity | None,
        timeout: float,
        ca_pem: str | None = None,
    ) -> TopicAdmin:
        brokers = list(brokers)
        key = _digest(brokers, security, timeout, ca_pem)
        now = time.monotonic()
        with self._lock:
            for stale in [k for k, (_, used) in self._admins.items() if now - used > self.idle_seconds]:
                self._admins.pop(stale)[0].close()
            entry = self._admins.get(key)
            if entry is None:
                entry = (TopicAdmin(brokers, security, timeout=timeout, ca_pem=ca_pem), now)
            self._admins[key] = (entry[0], now)
            return entry[0]

    def __len__(self) -> int:
        return len(self._admins)


def _digest(brokers: list[str], security: KafkaSecurity | None, timeout: float, ca_pem: str | None) -> str:
    parts = [",".join(brokers), repr(timeout), ca_pem or ""]
    if security is not None:
        parts += [
            str(security.sasl_mechanism),
            security.username or "",
            security.password or "",
            str(security.tls),
        ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()
