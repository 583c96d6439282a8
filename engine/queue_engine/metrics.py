"""Prometheus metrics shared by both engines (and so by the sidecar that exposes them).

Labels: ``kind`` is ``delay`` or ``kafka``; ``queue`` is the queue's name; ``result`` is
``success``, ``retry``, ``drop`` or ``unavailable`` (the app could not be reached: no attempt
counted). Metrics live in the default registry unless a test passes its own.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECEIVED = Counter("queue_messages_received", "Messages taken from a queue for delivery", ["kind", "queue"])
DELIVERED = Counter(
    "queue_messages_delivered",
    "Delivery attempts to the handler, by how they ended",
    ["kind", "queue", "result"],
)
RETRIED = Counter("queue_messages_retried", "Messages scheduled for another attempt", ["kind", "queue"])
DEAD_LETTERED = Counter(
    "queue_messages_dead_lettered",
    "Messages given up on: buried (dq) or written to the dead-letter topic (kq)",
    ["kind", "queue", "reason"],
)
DUPLICATES_SUPPRESSED = Counter(
    "queue_dq_duplicates_suppressed", "dq copies not delivered because another copy was", ["queue"]
)
DELIVERY_LATENCY = Histogram(
    "queue_delivery_latency_seconds",
    "Time the handler took per attempt",
    ["kind", "queue"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DQ_LATENESS = Histogram(
    "queue_dq_lateness_seconds",
    "How long after its due time a dq job reached the handler",
    ["queue"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
)
IN_FLIGHT = Gauge("queue_in_flight", "Messages being handled now", ["kind", "queue"])
KAFKA_LAG = Gauge("queue_kafka_consumer_lag", "High watermark minus committed offset", ["queue", "partition"])
DQ_JOBS = Gauge("queue_dq_jobs", "Jobs in the tube per beanstalkd node and state", ["queue", "node", "state"])
PUBLISHED = Counter("queue_messages_published", "Messages published, by result", ["kind", "queue", "result"])
