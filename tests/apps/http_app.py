"""A scriptable HTTP app: ``http_app.py --port P --script F --record R [--path /messages]``."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
from pathlib import Path

from aiohttp import web

try:
    from apps.script import Script
except ImportError:  # run as a script: tests/ is not on the path
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from apps.script import Script


def build(script: Script, path: str) -> web.Application:
    in_flight = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal in_flight
        body = await request.read()
        in_flight += 1
        try:
            if request.headers.get("X-Batch-Size"):
                return await respond_batch(request, body)
            return await respond(request, body, in_flight)
        finally:
            in_flight -= 1

    async def respond_batch(request: web.Request, body: bytes) -> web.Response:
        number, whole = script.batch_answer()
        messages = json.loads(body)
        results = []
        for message in messages:
            text = message.get("body") or base64.b64decode(message.get("bodyBase64", "")).decode()
            script.record(
                {
                    "batch": number,
                    "batch_size": len(messages),
                    "path": request.path,
                    "headers": dict(request.headers),
                    **message,
                    "body": text,
                }
            )
            answer = script.answer_for(text.encode())
            result = {"id": message["id"], "status": answer.get("ack", "SUCCESS")}
            if "error" in answer:
                result["error"] = answer["error"]
            if "retryAfter" in answer:
                result["retryAfter"] = answer["retryAfter"]
            results.append(result)
        if whole.get("sleep"):
            await asyncio.sleep(float(whole["sleep"]))
        if int(whole.get("status", 200)) >= 300:
            return web.Response(status=int(whole["status"]), text=whole.get("text", "batch failed"))
        return web.json_response({"results": results})

    async def respond(request: web.Request, body: bytes, now_in_flight: int) -> web.Response:
        script.record(
            {
                "in_flight": now_in_flight,
                "method": request.method,
                "path": request.path,
                "body": body.decode("utf-8", "replace"),
                "headers": dict(request.headers),
            }
        )
        answer = script.answer_for(body)
        if answer.get("sleep"):
            await asyncio.sleep(float(answer["sleep"]))
        text = json.dumps(answer["json"]) if "json" in answer else answer.get("text", "")
        return web.Response(
            status=int(answer.get("status", 200)),
            text=text,
            headers=answer.get("headers", {}),
            content_type="application/json" if "json" in answer else "text/plain",
        )

    app = web.Application()
    app.router.add_route("*", path, handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--script", type=Path, required=True)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--path", default="/messages")
    args = parser.parse_args()
    web.run_app(
        build(Script(args.script, args.record), args.path), host="127.0.0.1", port=args.port, print=None
    )


if __name__ == "__main__":
    main()
