"""The HTTPS server of the admission webhook, on a thread and event loop of its own.

kopf's event loop also runs the controller's handlers and watches (and, before, the webhook's
queue index); an admission waiting there behind a burst of watch events took over 100 ms. Here
the loop does nothing but answer AdmissionReviews, so an answer costs its own work only.

Connections are kept alive longer (120 s) than kube-apiserver keeps an idle one (90 s): the API
server closes first, so it never sends a request on a connection the webhook is closing (a POST
lost that way is not retried: with ``failurePolicy: Fail`` the pod would be refused). A
certificate renewed on disk (cert-manager, a re-mounted Secret) is loaded into the same TLS
context: new handshakes get it, open connections stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp.web
import orjson

from queue_operator import metrics

log = logging.getLogger("queue_operator.admission_server")

KEEPALIVE_SECONDS = 120.0  # above kube-apiserver's 90 s idle timeout for webhook connections
CERT_CHECK_SECONDS = 30.0


class BadReview(ValueError):
    """The request is no AdmissionReview this webhook can answer: HTTP 400."""


Reviewer = Callable[[Any], Awaitable[dict[str, Any]]]  # parsed AdmissionReview -> its answer


class AdmissionServer:
    """Serves ``POST <path>`` with ``reviewer`` on its own thread; see the module docs.

    The port is bound in :meth:`__init__` (a port in use fails at once), but connections are
    accepted only from :meth:`start` on: the readiness probe (a TCP connect) passes only then.
    """

    def __init__(
        self,
        reviewer: Reviewer,
        *,
        port: int,
        host: str = "0.0.0.0",
        path: str = "/inject-sidecar",
        certfile: str | None = None,
        keyfile: str | None = None,
    ) -> None:
        self._reviewer = reviewer
        self._path = path
        self._files = (certfile, keyfile) if certfile and keyfile else None
        self._context = self._tls_context() if self._files else None
        self._loaded = self._stamp()
        # Bound now, listening only once serving: until then a connect is refused, not left hanging.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port = int(self._socket.getsockname()[1])
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop_asked = False

    def start(self, before: Callable[[], object] = lambda: None) -> None:
        """Serve from a new thread, after ``before()`` returned there (e.g. a cache's first sync)."""
        self._thread = threading.Thread(
            target=self._run, args=(before,), name="admission-server", daemon=True
        )
        self._thread.start()

    @property
    def serving(self) -> bool:
        return self._started.is_set() and self._thread is not None and self._thread.is_alive()

    @property
    def failed(self) -> bool:
        """The server's thread ended without being asked to."""
        return self._thread is not None and not self._thread.is_alive() and not self._stop_asked

    def wait_serving(self, timeout: float) -> bool:
        return self._started.wait(timeout)

    def stop(self) -> None:
        self._stop_asked = True
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)

    # --- the server's thread ---------------------------------------------------------------

    def _run(self, before: Callable[[], object]) -> None:
        before()
        loop = _new_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except Exception:
            log.exception("the admission server stopped")
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        app = aiohttp.web.Application()
        app.router.add_post(self._path, self._answer)
        runner = aiohttp.web.AppRunner(
            app, handle_signals=False, access_log=None, keepalive_timeout=KEEPALIVE_SECONDS
        )
        await runner.setup()
        site = aiohttp.web.SockSite(runner, self._socket, ssl_context=self._context)
        await site.start()
        self._started.set()
        log.info(
            "serving the sidecar injection webhook on port %d (%s)",
            self.port,
            "TLS" if self._context else "plain HTTP",
        )
        try:
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), CERT_CHECK_SECONDS)
                self._reload_if_renewed()
        finally:
            await runner.cleanup()

    async def _answer(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        started = time.perf_counter()
        result = "error"
        try:
            try:
                review = orjson.loads(await request.read())
                answer = await self._reviewer(review)
            except (BadReview, orjson.JSONDecodeError) as exc:
                raise aiohttp.web.HTTPBadRequest(reason=str(exc).splitlines()[0][:200] or None) from None
            result = metrics.admission_result(answer)
            return aiohttp.web.Response(body=orjson.dumps(answer), content_type="application/json")
        finally:
            metrics.ADMISSIONS.labels(result).inc()
            metrics.ADMISSION_SECONDS.observe(time.perf_counter() - started)

    # --- TLS ----------------------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext:
        assert self._files is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*self._files)
        return context

    def _stamp(self) -> tuple[float, ...]:
        if self._files is None:
            return ()
        with contextlib.suppress(OSError):
            return tuple(os.stat(f).st_mtime for f in self._files)
        return ()

    def _reload_if_renewed(self) -> None:
        stamp = self._stamp()
        if self._context is None or self._files is None or not stamp or stamp == self._loaded:
            return
        try:
            # A pair that does not match yet (one file swapped, not the other) must never reach
            # the live context: try it on a throwaway one first.
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(*self._files)
            self._context.load_cert_chain(*self._files)
        except (OSError, ssl.SSLError) as exc:  # half-written during the swap: next round
            log.warning("loading the renewed webhook certificate failed: %s", exc)
            return
        self._loaded = stamp
        log.info("loaded the renewed webhook certificate")


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (less CPU per request), else asyncio's own."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
