"""The queue-operator Kubernetes operator (kopf): DelayQueue and KafkaQueue resources."""
