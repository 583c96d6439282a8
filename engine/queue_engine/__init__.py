"""go-queue's dq and kq, ported to Python and hardened.

The engines are used alike by apps (as a library), by the sidecar and by ``queuectl``:

- :mod:`queue_engine.dq`: delayed and timed jobs on replicated beanstalkd, de-duplicated in Redis.
- :mod:`queue_engine.kq`: a Kafka pusher and consumer on confluent-kafka.
- :mod:`queue_engine.policy`: the delivery policy and handler outcomes both engines share.
"""
