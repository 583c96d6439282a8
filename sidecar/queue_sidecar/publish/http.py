"""The publish API over HTTP (SPEC section 5), served by the sidecar on loopback.

- ``POST /v1/delayqueues/{name}/jobs?delay=5s`` or ``?at=<RFC 3339>``: ``201 {"id": ...}``
- ``DELETE /v1/delayqueues/{name}/jobs/{id}``: ``204``
- ``GET /v1/delayqueues/{name}/jobs/{id}``: ``200 {"state", "due_at", "attempts", ...}``
- ``POST /v1/kafkaqueues/{name}/messages``: ``201 {"topic", "partition", "offset"}`` after the
  broker's acknowledgement; ``X-Kafka-Key`` is the key and each ``X-Header-h`` a Kafka header.

Both POSTs take an ``Idempotency-Key`` header: a retry answers the first result again, marked
``Idempotent-Replayed: true``.

Every error is JSON ``{"error": "..."}`` saying what to fix; see docs/publish.md. Served by
the lean server in :mod:`.http_server` (aiohttp's server was most of the API's CPU per request).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from urllib.parse import unquote as _unquote

import orjson

from queue_engine.durations import parse_duration, parse_rfc3339
from queue_engine.errors import InvalidRequest
from queue_sidecar.publish import operations
from queue_sidecar.publish.errors import classify
from queue_sidecar.publish.http_server import LeanHttpServer, Request, Response
from queue_sidecar.publish.idempotency import Result
from queue_sidecar.publish.targets import PublishTargets

log = logging.getLogger(__name__)

# Memory guard only: each queue's own limit (maxJobBytes, the broker's message size) is checked
# by its producer, which says which limit it is.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
HEADER_PREFIX = "x-header-"
RETRY_AFTER_S = 1
ROUTES = (
    "POST /v1/delayqueues/{name}/jobs?delay=5s|at=<RFC 3339>, "
    "DELETE /v1/delayqueues/{name}/jobs/{id}, GET /v1/delayqueues/{name}/jobs/{id}, "
    "POST /v1/kafkaqueues/{name}/messages"
)
IDEMPOTENCY_KEY = "idempotency-key"
REPLAYED = "Idempotent-Replayed"

Route = Callable[[PublishTargets, Request, list[str]], Awaitable[Response]]


async def serve(targets: PublishTargets, host: str, port: int) -> LeanHttpServer:
    """Start the publish API on ``host:port``; ``await server.close()`` stops it."""

    async def handle(request: Request) -> Response:
        return await _answer(targets, request)

    server = LeanHttpServer(handle, _error, max_body=MAX_REQUEST_BYTES)
    await server.start(host, port)
    return server


def _route(request: Request) -> tuple[Route, list[str]] | Response:
    """The handler for the request's path and method, with the path's parameters, or a 404/405."""
    parts = request.raw_path.split("/")
    # ['', 'v1', kind, name, tail...]: each parameter a whole non-empty segment
    if len(parts) >= 5 and parts[0] == "" and parts[1] == "v1" and all(parts[3:]):
        kind, name, tail = parts[2], _decoded(parts[3]), parts[4:]
        methods: dict[str, Route] = {}
        parameters = [name]
        if kind == "delayqueues" and tail == ["jobs"]:
            methods = {"POST": _delay}
        elif kind == "delayqueues" and len(tail) == 2 and tail[0] == "jobs":
            methods = {"DELETE": _revoke, "GET": _job, "HEAD": _job}
            parameters.append(_decoded(tail[1]))
        elif kind == "kafkaqueues" and tail == ["messages"]:
            methods = {"POST": _push}
        if methods:
            route = methods.get(request.method)
            if route is None:
                allowed = ", ".join(sorted(methods))
                return _error(405, f"{request.method} is not allowed on {request.path}; use {allowed}")
            return route, parameters
    return _error(404, f"no route {request.method} {request.path}; the routes are: {ROUTES}")


def _decoded(segment: str) -> str:
    return _unquote(segment) if "%" in segment else segment


async def _answer(targets: PublishTargets, request: Request) -> Response:
    """Route and run the request; every failure becomes a JSON error saying what to fix."""
    routed = _route(request)
    if isinstance(routed, Response):
        return routed
    route, parameters = routed
    try:
        return await route(targets, request, parameters)
    except Exception as exc:
        failure = classify(exc)
        fields = {"queue": parameters[0], "error": failure.message}
        if failure.unexpected:
            log.exception("publish %s %s failed", request.method, request.path, extra=fields)
        else:
            log.info("publish %s %s failed", request.method, request.path, extra=fields)
        response = _error(failure.http_status, failure.message)
        if failure.http_status in (409, 503, 504):
            # Nothing was stored (or, 409, not yet): the app should try again, and not at once.
            response.headers.append(("Retry-After", str(RETRY_AFTER_S)))
        return response


async def _delay(targets: PublishTargets, request: Request, parameters: list[str]) -> Response:
    name = parameters[0]
    targets.delay_queue(name)  # an unknown queue first: 404
    _only_query(request, "delay", "at")
    delay, at = _when(request)
    result = await operations.delay(
        targets, name, request.body, delay=delay, at=at, idempotency_key=request.header(IDEMPOTENCY_KEY)
    )
    return _created(result)


def _created(answer: tuple[Result, bool]) -> Response:
    result, replayed = answer
    # orjson: the answer of every publish, in a fraction of json.dumps's time
    response = Response(201, orjson.dumps(result))
    if replayed:
        response.headers.append((REPLAYED, "true"))
    return response


async def _revoke(targets: PublishTargets, request: Request, parameters: list[str]) -> Response:
    _only_query(request)
    await operations.revoke(targets, parameters[0], parameters[1])
    return Response(204)


async def _job(targets: PublishTargets, request: Request, parameters: list[str]) -> Response:
    _only_query(request)
    state = await operations.job(targets, parameters[0], parameters[1])
    return Response(200, orjson.dumps(state.to_json()))


async def _push(targets: PublishTargets, request: Request, parameters: list[str]) -> Response:
    name = parameters[0]
    targets.kafka_queue(name)
    if request.query_text:
        _only_query(request)
    key: str | None = None
    idempotency_key: str | None = None
    headers: list[tuple[str, bytes]] = []
    # One pass over the headers as sent (a dict of them would cost more than the lookups).
    for header, value in request.headers:
        lower = header.lower()
        if lower == "x-kafka-key":
            key = value if key is None else key
        elif lower == IDEMPOTENCY_KEY:
            idempotency_key = value if idempotency_key is None else idempotency_key
        elif lower.startswith(HEADER_PREFIX) and len(header) > len(HEADER_PREFIX):
            headers.append((header[len(HEADER_PREFIX) :], value.encode()))
    result = await operations.push(
        targets,
        name,
        request.body,
        key=key.encode() if key is not None else None,
        headers=headers,
        idempotency_key=idempotency_key,
    )
    return _created(result)


def _only_query(request: Request, *allowed: str) -> None:
    for name in request.query:
        if name not in allowed:
            hint = f"use {' or '.join(allowed)}" if allowed else "this route takes none"
            raise InvalidRequest(f"unknown query parameter {name!r}: {hint}")


def _when(request: Request) -> tuple[float | None, datetime | None]:
    """The ``delay`` or ``at`` query parameter, parsed; exactly one must be given."""
    delay_text, at_text = request.query.get("delay"), request.query.get("at")
    if (delay_text is None) == (at_text is None):
        raise InvalidRequest(
            "give exactly one of the query parameters delay (e.g. ?delay=30s) "
            "or at (e.g. ?at=2026-01-02T15:04:05Z)"
        )
    if delay_text is not None:
        try:
            return parse_duration(delay_text), None
        except ValueError as exc:
            raise InvalidRequest(f"delay: {exc}") from None
    assert at_text is not None
    try:
        return None, parse_rfc3339(_restore_plus(at_text))
    except ValueError as exc:
        raise InvalidRequest(f"at: {exc} (URL-encode '+' in an offset as %2B)") from None


_OFFSET_SPACE = re.compile(r"(:\d\d(?:\.\d+)?) (\d\d:?\d\d)$")


def _restore_plus(text: str) -> str:
    # An unencoded '+' in a query string arrives as a space: "...T10:00:00 02:00". Take it back
    # instead of failing on the most common way people write an offset in a URL.
    return _OFFSET_SPACE.sub(r"\1+\2", text)


def _error(status: int, message: str) -> Response:
    return Response(status, orjson.dumps({"error": message}))
