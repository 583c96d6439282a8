"""One place that turns engine errors into HTTP statuses and gRPC codes.

Both publish servers call :func:`classify`, so the same failure reads the same way whether the
app published over HTTP or gRPC. Messages of the engines' own errors are meant for people and
are passed on unchanged; anything else is an internal error whose details stay in the log.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from queue_engine.errors import InvalidRequest, NotFound, TooLarge, Unavailable
from queue_sidecar.publish.idempotency import InProgress, KeyReused


@dataclass(frozen=True)
class Failure:
    http_status: int
    grpc_code: grpc.StatusCode
    message: str

    @property
    def unexpected(self) -> bool:
        """A bug or an error the engines did not classify: worth a traceback in the log."""
        return self.http_status == 500


def classify(exc: BaseException) -> Failure:
    """What to answer for ``exc``; the order matters (TooLarge is an InvalidRequest)."""
    if isinstance(exc, KeyReused):
        return Failure(422, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, InProgress):
        return Failure(409, grpc.StatusCode.ABORTED, str(exc))
    if isinstance(exc, TooLarge):
        return Failure(413, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    if isinstance(exc, InvalidRequest):
        return Failure(400, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, NotFound):
        return Failure(404, grpc.StatusCode.NOT_FOUND, str(exc))
    if isinstance(exc, Unavailable):
        return Failure(503, grpc.StatusCode.UNAVAILABLE, str(exc))
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return Failure(
            504,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "the queue's servers did not answer in time; nothing was acknowledged, try again",
        )
    return Failure(
        500,
        grpc.StatusCode.INTERNAL,
        f"internal error ({type(exc).__name__}); see the sidecar's log",
    )
