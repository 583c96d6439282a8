"""A sample app: receives the sidecar's deliveries over HTTP and publishes through the sidecar.

Run by ``demo/run.py``; on its own: ``python demo/app.py --port 8080``. Every message it
receives is logged with the headers the sidecar sent, so you can see what an app gets.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from aiohttp import web

log = logging.getLogger("demo-app")


async def handle(request: web.Request) -> web.Response:
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower().startswith("x-")}
    record = {"body": body.decode(errors="replace"), "headers": headers}
    request.app["received"].append(record)
    log.info("received %s", json.dumps(record, sort_keys=True))
    # A body containing "fail-once" asks to be retried the first time, to show retries.
    if b"fail-once" in body and headers.get("X-Attempt") == "1":
        return web.Response(status=503, headers={"Retry-After": "1"})
    return web.json_response({"status": "SUCCESS"})


async def received(request: web.Request) -> web.Response:
    return web.json_response(request.app["received"])


def build_app() -> web.Application:
    app = web.Application()
    app["received"] = []
    app.router.add_post("/messages", handle)
    app.router.add_get("/received", received)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="app    | %(message)s")
    web.run_app(build_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
