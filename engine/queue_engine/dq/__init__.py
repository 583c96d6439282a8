"""dq: delayed and timed jobs on replicated beanstalkd, de-duplicated in Redis (see docs/dq.md).

- :class:`DelayProducer` / :class:`SyncDelayProducer`: ``delay``, ``at``, ``revoke``.
- :class:`DelayConsumer`: runs an async handler per due job (``Outcome`` from
  :mod:`queue_engine.policy`).
- :class:`DelayAdmin` / :class:`SyncDelayAdmin`: per-node stats, buried jobs, kick.
"""

from queue_engine.dq.admin import BuriedJob, DelayAdmin, NodeStats
from queue_engine.dq.consumer import DelayConsumer
from queue_engine.dq.envelope import HEADER_BYTES
from queue_engine.dq.job import DelayJob
from queue_engine.dq.producer import DelayProducer
from queue_engine.dq.sync import SyncDelayAdmin, SyncDelayProducer
from queue_engine.policy import DeliveryPolicy, Outcome, Verdict

__all__ = [
    "HEADER_BYTES",
    "BuriedJob",
    "DelayAdmin",
    "DelayConsumer",
    "DelayJob",
    "DelayProducer",
    "DeliveryPolicy",
    "NodeStats",
    "Outcome",
    "SyncDelayAdmin",
    "SyncDelayProducer",
    "Verdict",
]
