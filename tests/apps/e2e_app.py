"""The app of the end-to-end bed: records what its sidecar delivers, publishes through it.

``e2e_app.py --port P --records DIR``: every delivery (``POST /messages``) is appended as one
JSON line, with the time it arrived, to ``DIR/<pod name>.jsonl`` (a hostPath volume: the
records outlive a rolled pod);
``POST /publish/delayqueues/Q?delay=..|at=..`` and ``POST /publish/kafkaqueues/Q`` forward the
body to the sidecar at ``$QUEUE_PUBLISH_URL``, as an app would, and answer what it answered.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from pathlib import Path

import aiohttp
from aiohttp import web


def build(records: Path) -> web.Application:
    record_file = records / f"{socket.gethostname()}.jsonl"
    publish_url = os.environ["QUEUE_PUBLISH_URL"]

    async def deliver(request: web.Request) -> web.Response:
        line = {
            "pod": socket.gethostname(),
            "kind": request.headers.get("X-Queue-Kind"),
            "queue": request.headers.get("X-Queue-Name"),
            "id": request.headers.get("X-Message-Id"),
            "due": request.headers.get("X-Due-At"),
            "body": (await request.read()).decode(errors="replace"),
            "at": time.time(),  # when it arrived (checked against "due": nothing early)
        }
        with record_file.open("a") as file:
            file.write(json.dumps(line) + "\n")
        return web.json_response({"status": "SUCCESS"})

    async def publish(request: web.Request) -> web.Response:
        kind, queue = request.match_info["kind"], request.match_info["queue"]
        path = "jobs" if kind == "delayqueues" else "messages"
        url = f"{publish_url}/v1/{kind}/{queue}/{path}"
        async with request.app["session"].post(
            url, params=request.query, data=await request.read()
        ) as answer:
            return web.Response(
                status=answer.status, body=await answer.read(), content_type="application/json"
            )

    async def session(app: web.Application) -> object:
        app["session"] = aiohttp.ClientSession()
        yield
        await app["session"].close()

    app = web.Application()
    app.router.add_post("/messages", deliver)
    app.router.add_post("/publish/{kind}/{queue}", publish)
    app.cleanup_ctx.append(session)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--records", type=Path, required=True)
    args = parser.parse_args()
    args.records.mkdir(parents=True, exist_ok=True)
    web.run_app(build(args.records), host="0.0.0.0", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
