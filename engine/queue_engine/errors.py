"""Errors the engines raise, by what the caller should do about them.

The sidecar maps them to HTTP statuses: :class:`InvalidRequest` -> 400 (or 413 for
:class:`TooLarge`), :class:`NotFound` -> 404, :class:`Unavailable` -> 503. Messages are meant
for people: they say what is wrong and what to change, and never contain secrets.
"""

from __future__ import annotations


class QueueError(Exception):
    """Base of every error the engines raise on purpose."""


class InvalidRequest(QueueError, ValueError):
    """The caller asked for something that cannot be done as asked (bad delay, past time, ...)."""


class TooLarge(InvalidRequest):
    """A body over the queue's size limit."""


class NotFound(QueueError, LookupError):
    """A named thing (queue, job) does not exist."""


class ConfigError(QueueError, ValueError):
    """Bad configuration; the message names the field."""


class Unavailable(QueueError, ConnectionError):
    """The servers behind a queue did not acknowledge (no quorum, broker down, Redis down)."""
