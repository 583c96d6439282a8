"""What can go wrong talking to Kafka brokers, apart from :mod:`queue_operator.topics`: the handlers
catch these without loading the Kafka client, which an operator with no KafkaQueue never needs."""

from __future__ import annotations


class BrokerUnavailable(Exception):
    """The brokers did not answer (or answered a transient error): retry later."""


class ClientConfigInvalid(Exception):
    """librdkafka refused the connection settings (e.g. a CA bundle that is not PEM)."""
