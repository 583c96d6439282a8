"""The queue-operator sidecar: consumes dq and kq queues, delivers to the app, publishes for it."""
