"""The publish API over HTTP (SPEC section 5), served by the sidecar on loopback.

- ``POST /v1/delayqueues/{name}/jobs?delay=5s`` or ``?at=<RFC 3339>``: ``201 {"id": ...}``
- ``DELETE /v1/delayqueues/{name}/jobs/{id}``: ``204``
- ``GET /v1/delayqueues/{name}/jobs/{id}``: ``200 {"state", "due_at", "attempts", ...}``
- ``POST /v1/kafkaqueues/{name}/messages``: ``201 {"topic", "partition", "offset"}`` after the
  broker's acknowledgement; ``X-Kafka-Key`` is the key and each ``X-Header-h`` a Kafka header.

Both POSTs take an ``Idempotency-Key`` header: a retry answers the first result again, marked
``Idempotent-Replayed: true``.

Every error is JSON ``{"error": "..."}`` saying what to fix; see docs/publish.md.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from datetime import datetime

import orjson
from aiohttp import web

from queue_engine.durations import parse_duration, parse_rfc3339
from queue_engine.errors import InvalidRequest
from queue_sidecar.publish import operations
from queue_sidecar.publish.errors import classify
from queue_sidecar.publish.idempotency import Result
from queue_sidecar.publish.targets import PublishTargets

log = logging.getLogger(__name__)

TARGETS = web.AppKey("targets", PublishTargets)
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
IDEMPOTENCY_KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(targets: PublishTargets) -> web.Application:
    app = web.Application(middlewares=[_json_errors], client_max_size=MAX_REQUEST_BYTES)
    app[TARGETS] = targets
    app.router.add_post("/v1/delayqueues/{name}/jobs", _delay)
    app.router.add_delete("/v1/delayqueues/{name}/jobs/{id}", _revoke)
    app.router.add_get("/v1/delayqueues/{name}/jobs/{id}", _job)
    app.router.add_post("/v1/kafkaqueues/{name}/messages", _push)
    return app


async def _delay(request: web.Request) -> web.Response:
    request.app[TARGETS].delay_queue(request.match_info["name"])  # an unknown queue first: 404
    _only_query(request, "delay", "at")
    delay, at = _when(request)
    body = await request.read()
    result = await operations.delay(
        request.app[TARGETS],
        request.match_info["name"],
        body,
        delay=delay,
        at=at,
        idempotency_key=request.headers.get(IDEMPOTENCY_KEY),
    )
    return _created(result)


def _created(answer: tuple[Result, bool]) -> web.Response:
    result, replayed = answer
    # orjson: the answer of every publish, in a fraction of json.dumps's time
    response = web.Response(body=orjson.dumps(result), status=201, content_type="application/json")
    if replayed:
        response.headers[REPLAYED] = "true"
    return response


async def _revoke(request: web.Request) -> web.Response:
    _only_query(request)
    await operations.revoke(request.app[TARGETS], request.match_info["name"], request.match_info["id"])
    return web.Response(status=204)


async def _job(request: web.Request) -> web.Response:
    _only_query(request)
    state = await operations.job(request.app[TARGETS], request.match_info["name"], request.match_info["id"])
    return web.json_response(state.to_json())


async def _push(request: web.Request) -> web.Response:
    request.app[TARGETS].kafka_queue(request.match_info["name"])
    _only_query(request)
    key = request.headers.get("X-Kafka-Key")
    headers = [
        (name[len(HEADER_PREFIX) :], value.encode())
        for name, value in request.headers.items()
        if name.lower().startswith(HEADER_PREFIX) and len(name) > len(HEADER_PREFIX)
    ]
    body = await request.read()
    result = await operations.push(
        request.app[TARGETS],
        request.match_info["name"],
        body,
        key=key.encode() if key is not None else None,
        headers=headers,
        idempotency_key=request.headers.get(IDEMPOTENCY_KEY),
    )
    return _created(result)


def _only_query(request: web.Request, *allowed: str) -> None:
    for name in request.query:
        if name not in allowed:
            hint = f"use {' or '.join(allowed)}" if allowed else "this route takes none"
            raise InvalidRequest(f"unknown query parameter {name!r}: {hint}")


def _when(request: web.Request) -> tuple[float | None, datetime | None]:
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


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"the request body is over the publish API's limit of {MAX_REQUEST_BYTES} bytes")
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return _error(405, f"{request.method} is not allowed on {request.path}; use {allowed}")
    except web.HTTPNotFound:
        return _error(404, f"no route {request.method} {request.path}; the routes are: {ROUTES}")
    except web.HTTPException:
        raise
    except Exception as exc:
        failure = classify(exc)
        fields = {"queue": request.match_info.get("name"), "error": failure.message}
        if failure.unexpected:
            log.exception("publish %s %s failed", request.method, request.path, extra=fields)
        else:
            log.info("publish %s %s failed", request.method, request.path, extra=fields)
        response = _error(failure.http_status, failure.message)
        if failure.http_status in (409, 503, 504):
            # Nothing was stored (or, 409, not yet): the app should try again, and not at once.
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
