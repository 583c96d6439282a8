"""Lua script calls made in the same event-loop iteration go to Redis in one round trip.

Calls of one :class:`BatchScript` made together run as one call of its "many" form: the same
Lua body run once per call inside one script, each call with its own KEYS and ARGV, so Redis
and redis-py handle one command for the lot instead of one per job.

Guarantees: each call still sees and changes its keys atomically (a group is even one
atomic step); every caller gets its own call's answer; a connection failure fails every call
of the batch with the ``RedisError`` (a script error, which would be a bug, fails the calls of
its group), and callers handle it as for a single call. A script Redis does not know
(restarted empty) is loaded and only the calls that did not run are sent again.

Callers that give up (cancelled) do not cancel the batch: a Redis command cut midway costs
its pooled connection, and the other callers still want their answers.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

_MANY = """
local function one(KEYS, ARGV)
%s
end
local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 0, tonumber(ARGV[3]) - 1 do
  local keys, args = {}, {}
  for j = 1, nk do keys[j] = KEYS[i * nk + j] end
  for j = 1, na do args[j] = ARGV[3 + i * na + j] end
  out[i + 1] = one(keys, args)
end
return out
"""


class BatchScript:
    """A Lua script (using only its KEYS and ARGV, returning a non-nil value) that
    :class:`ScriptBatcher` may run for many calls at once."""

    def __init__(self, redis: Redis, lua: str) -> None:
        self.single = redis.register_script(lua)
        self.many = redis.register_script(_MANY % lua)


_Call = tuple[BatchScript, list[Any], list[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._queue: list[_Call] = []
        self._running: set[asyncio.Task[None]] = set()

    def call(self, script: BatchScript, keys: list[Any], args: list[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._send)
        self._queue.append((script, keys, args, fut))
        return fut

    def _send(self) -> None:
        batch, self._queue = self._queue, []
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Call]) -> None:
        groups: dict[int, list[_Call]] = {}
        for call in batch:
            groups.setdefault(id(call[0]), []).append(call)
        todo = list(groups.values())
        try:
            results = await self._execute(todo)
            # NOSCRIPT (Redis restarted empty, or first use) comes before the script runs: only
            # those groups are sent again. Resending one that ran would take a lease twice.
            missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
            if missing:
                for i in missing:
                    await self._redis.script_load(todo[i][0][0].many.script)
                for i, result in zip(missing, await self._execute([todo[i] for i in missing]), strict=True):
                    results[i] = result
        except asyncio.CancelledError:  # the loop is shutting down
            for *_, fut in batch:
                fut.cancel()
            raise
        except Exception as exc:  # handed to every caller, who decides
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for calls, answers in zip(todo, results, strict=True):
            for i, (*_, fut) in enumerate(calls):
                if fut.done():
                    continue
                if isinstance(answers, Exception):
                    fut.set_exception(answers)
                else:
                    fut.set_result(answers[i])

    async def _execute(self, groups: list[list[_Call]]) -> list[Any]:
        """One pipeline, one call of the "many" script per group; errors in place."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for calls in groups:
                script = calls[0][0]
                keys = [key for call in calls for key in call[1]]
                args = [arg for call in calls for arg in call[2]]
                head = [len(calls[0][1]), len(calls[0][2]), len(calls)]
                pipe.evalsha(script.many.sha, len(keys), *keys, *head, *args)
            return list(await pipe.execute(raise_on_error=False))

    async def aclose(self) -> None:
        """Wait for batches on their way (their callers may be gone)."""
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
