"""Each job's shared record in Redis: what makes several copies act as one job.

Per job id, in the hash ``dq:{tube}:j:{id}``:

- ``copies``: where the producer wrote the copies (``node/beanstalkd-id@server-id``
  comma-separated; the server id is the node process's ``stats`` id, which changes whenever
  beanstalkd restarts), so that revoke and a successful delivery can delete the other copies;
- ``attempts``: attempts started, counted across copies;
- ``next``: epoch seconds before which no copy may start another attempt (retry backoff);
- ``state``: ``done`` or ``buried`` (later copies are deleted or buried on sight);
- ``revoked``: the tombstone, checked right before every delivery;
- ``error``, ``buried_copy``: kept for inspecting buried jobs;
- ``unavailable``: hand-backs in a row because the app was unavailable (their backoff grows).

The lease ``dq:{tube}:lease:{id}`` (a token, with an expiry renewed while the handler runs) lets
one copy be handled at a time; if its holder dies the lease expires and another copy takes
over. ``dq:{tube}:buried`` lists buried job ids by time. Every decision is one Lua script, so
it is atomic across consumers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from redis.asyncio import Redis

from queue_engine.dq.envelope import due_of_job_id
from queue_engine.dq.redis_batch import BatchScript, ScriptBatcher

RETENTION_S = 14 * 24 * 3600  # how long a record outlives its due time (done markers, tombstones)

# Keep the record at least ARGV[n] seconds (never shorten it).
_KEEP = """
local function keep(key, seconds)
  local ttl = redis.call('TTL', key)
  if ttl >= 0 and ttl < seconds then redis.call('EXPIRE', key, seconds) end
  if ttl == -1 then redis.call('EXPIRE', key, seconds) end
end
"""

_CLAIM = (
    _KEEP
    + """
if redis.call('HGET', KEYS[1], 'revoked') then return {'revoked'} end
local state = redis.call('HGET', KEYS[1], 'state')
if state then return {state, redis.call('HGET', KEYS[1], 'buried_copy') or ''} end
local nxt = tonumber(redis.call('HGET', KEYS[1], 'next') or '0')
if nxt > tonumber(ARGV[3]) then return {'wait', tostring(nxt)} end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'busy', tostring(redis.call('PTTL', KEYS[2]))}
end
local n = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
-- Every attempt counted so far ended without an outcome (a settled failure at the last one
-- buries the job): they crashed their consumers. The lease is taken, to bury it unrun.
if n >= tonumber(ARGV[5]) then return {'exhausted', tostring(n)} end
n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
keep(KEYS[1], tonumber(ARGV[4]))
return {'go', tostring(n), redis.call('HGET', KEYS[1], 'unavailable') or '0'}
"""
)

# Where the copies went, and how long the record lives: one call, atomic.
_RECORD = """
redis.call('HSET', KEYS[1], 'copies', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# The claim's checks without taking anything: what a copy would be told now.
_PEEK = """
if redis.call('HGET', KEYS[1], 'revoked') then return {'revoked'} end
local state = redis.call('HGET', KEYS[1], 'state')
if state then return {state, redis.call('HGET', KEYS[1], 'buried_copy') or ''} end
local nxt = tonumber(redis.call('HGET', KEYS[1], 'next') or '0')
if nxt > tonumber(ARGV[1]) then return {'wait', tostring(nxt)} end
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then return {'busy', tostring(ttl)} end
return {'free'}
"""

_RELEASE_LEASE = """
local function release_lease(key, token)
  if redis.call('GET', key) == token then redis.call('DEL', key) end
end
"""

_DONE = (
    _KEEP
    + _RELEASE_LEASE
    + """
redis.call('HSET', KEYS[1], 'state', 'done')
redis.call('HDEL', KEYS[1], 'next', 'error')
keep(KEYS[1], tonumber(ARGV[2]))
release_lease(KEYS[2], ARGV[1])
return redis.call('HGET', KEYS[1], 'copies') or ''
"""
)

_RETRY = (
    _KEEP
    + _RELEASE_LEASE
    + """
if ARGV[3] == '0' then
  if tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') > 0 then
    redis.call('HINCRBY', KEYS[1], 'attempts', -1)
  end
  if ARGV[6] == '1' then redis.call('HINCRBY', KEYS[1], 'unavailable', 1) end
else
  redis.call('HDEL', KEYS[1], 'unavailable')
end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'next', ARGV[2])
  keep(KEYS[1], tonumber(ARGV[5]))
end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
release_lease(KEYS[2], ARGV[1])
return 1
"""
)

_BURY = (
    _KEEP
    + _RELEASE_LEASE
    + """
redis.call('HSET', KEYS[1], 'state', 'buried', 'error', ARGV[2], 'buried_copy', ARGV[3])
redis.call('HDEL', KEYS[1], 'next')
redis.call('PERSIST', KEYS[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
release_lease(KEYS[2], ARGV[1])
return redis.call('HGET', KEYS[1], 'copies') or ''
"""
)

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""

_REVOKE = (
    _KEEP
    + """
redis.call('HSET', KEYS[1], 'revoked', ARGV[1])
keep(KEYS[1], tonumber(ARGV[2]))
return redis.call('HGET', KEYS[1], 'copies') or ''
"""
)

_UNBURY = (
    _KEEP
    + """
if redis.call('HGET', KEYS[1], 'state') == 'buried' then redis.call('HDEL', KEYS[1], 'state') end
redis.call('HDEL', KEYS[1], 'attempts', 'next', 'buried_copy')
keep(KEYS[1], tonumber(ARGV[2]))
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""
)


@dataclass(frozen=True)
class Claim:
    """What a consumer may do with the copy it holds."""

    action: str  # go | free (peek only) | busy | wait | done | buried | revoked | exhausted
    attempt: int = 0  # for go: this attempt's number, 1-based; for exhausted: attempts counted
    until: float = 0.0  # for busy: seconds the lease still runs; for wait: epoch seconds
    kept: str = ""  # for buried: node/beanstalkd-id of the copy kept buried ("" if unknown)
    unavailable: int = 0  # for go: hand-backs in a row so far because the app was unavailable


@dataclass(frozen=True)
class BuriedRecord:
    job_id: str
    attempts: int
    error: str
    copy: str  # node/beanstalkd-id of the buried copy, if known
    buried_at: float


class Copy(NamedTuple):
    """Where one copy of a job was written."""

    node: str
    jid: int  # beanstalkd's job id on that node
    server: str = ""  # that node process's `stats` id at the time ("" in records made before it)


def parse_copies(text: str) -> list[Copy]:
    copies = []
    for item in filter(None, text.split(",")):
        node, _, rest = item.rpartition("/")
        jid, _, server = rest.partition("@")
        if node and jid.isdigit():
            copies.append(Copy(node, int(jid), server))
    return copies


def format_copies(copies: list[Copy]) -> str:
    return ",".join(f"{c.node}/{c.jid}@{c.server}" if c.server else f"{c.node}/{c.jid}" for c in copies)


class JobRecords:
    """The Redis side of one tube. With ``batched``, the per-job scripts (record, claim, peek,
    done) called in the same loop iteration share one round trip (see :mod:`redis_batch`)."""

    def __init__(self, redis: Redis, tube: str, *, batched: bool = False) -> None:
        self.redis = redis
        self._prefix = f"dq:{tube}"
        self._record = BatchScript(redis, _RECORD)
        self._claim = BatchScript(redis, _CLAIM)
        self._peek = BatchScript(redis, _PEEK)
        self._done = BatchScript(redis, _DONE)
        batchable = [self._record, self._claim, self._peek, self._done]
        self._batcher = ScriptBatcher(redis, batchable) if batched else None
        self._retry = redis.register_script(_RETRY)
        self._bury = redis.register_script(_BURY)
        self._renew = redis.register_script(_RENEW)
        self._revoke = redis.register_script(_REVOKE)
        self._unbury = redis.register_script(_UNBURY)

    async def _run(self, script: BatchScript, keys: list[Any], args: list[Any]) -> Any:
        if self._batcher is not None:
            return await self._batcher.call(script, keys, args)
        return await script.single(keys=keys, args=args)

    async def aclose(self) -> None:
        if self._batcher is not None:
            await self._batcher.aclose()

    def _job(self, job_id: str) -> str:
        return f"{self._prefix}:j:{job_id}"

    def _lease(self, job_id: str) -> str:
        return f"{self._prefix}:lease:{job_id}"

    @property
    def _buried(self) -> str:
        return f"{self._prefix}:buried"

    async def record_copies(self, job_id: str, copies: list[Copy], keep_s: float) -> None:
        args: list[str | int] = [format_copies(copies), int(keep_s) + RETENTION_S]
        await self._run(self._record, [self._job(job_id)], args)

    async def claim(self, job_id: str, token: str, lease_s: float, now: float, max_attempts: int) -> Claim:
        """Take the job's lease and count an attempt, unless the record says otherwise
        (``exhausted``, with the lease taken: ``max_attempts`` were counted and none settled)."""
        keys = [self._job(job_id), self._lease(job_id)]
        args = [token, int(lease_s * 1000), now, RETENTION_S, max_attempts]
        reply: list[Any] = await self._run(self._claim, keys, args)
        return _to_claim(reply)

    async def peek(self, job_id: str, now: float) -> Claim:
        """What a claim would answer now (``free`` for go), changing nothing."""
        return _to_claim(await self._run(self._peek, [self._job(job_id), self._lease(job_id)], [now]))

    async def renew(self, job_id: str, token: str, lease_s: float) -> None:
        await self._renew(keys=[self._lease(job_id)], args=[token, int(lease_s * 1000)])

    async def mark_done(self, job_id: str, token: str) -> list[Copy]:
        keys = [self._job(job_id), self._lease(job_id)]
        return parse_copies(_text(await self._run(self._done, keys, [token, RETENTION_S])))

    async def schedule_retry(
        self,
        job_id: str,
        token: str,
        *,
        next_at: float | None,
        attempted: bool,
        error: str = "",
        unavailable: bool = False,
    ) -> None:
        """Let the lease go; the next attempt may start at ``next_at``; an unattempted try is not
        counted. ``unavailable``: the app was down (counted in a row, for the backoff)."""
        keys = [self._job(job_id), self._lease(job_id)]
        nxt = "" if next_at is None else repr(next_at)
        # The record must outlive the next attempt: a retry far off extends it.
        keep_s = RETENTION_S + max(0, int((next_at or 0) - time.time()))
        args = [token, nxt, "1" if attempted else "0", error[:1000], keep_s, "1" if unavailable else "0"]
        await self._retry(keys=keys, args=args)

    async def mark_buried(self, job_id: str, token: str, *, error: str, copy: str, now: float) -> list[Copy]:
        keys = [self._job(job_id), self._lease(job_id), self._buried]
        reply = await self._bury(keys=keys, args=[token, error[:1000], copy, now, job_id])
        return parse_copies(_text(reply))

    async def revoke(self, job_id: str) -> list[Copy]:
        # The tombstone outlives the job's due time (carried in its id), however far off.
        keep_s = max(0, int(due_of_job_id(job_id) - time.time())) + RETENTION_S
        reply = await self._revoke(keys=[self._job(job_id)], args=["1", keep_s])
        return parse_copies(_text(reply))

    async def unbury(self, job_id: str) -> None:
        """Before a kick: the job starts over with its attempts reset."""
        await self._unbury(keys=[self._job(job_id), self._buried], args=[job_id, RETENTION_S])

    async def buried(self, limit: int) -> list[BuriedRecord]:
        entries = cast(
            list[tuple[bytes, float]],
            await self.redis.zrange(self._buried, 0, max(0, limit - 1), withscores=True),
        )
        records = []
        for member, score in entries:
            job_id = _text(member)
            data = {_text(k): _text(v) for k, v in (await self.redis.hgetall(self._job(job_id))).items()}
            records.append(
                BuriedRecord(
                    job_id=job_id,
                    attempts=int(data.get("attempts", "0") or 0),
                    error=data.get("error", ""),
                    copy=data.get("buried_copy", ""),
                    buried_at=float(score),
                )
            )
        return records

    async def copies(self, job_id: str) -> list[Copy]:
        """Where the producer wrote the job's copies ([] if not recorded)."""
        return parse_copies(_text(await self.redis.hget(self._job(job_id), "copies")))

    async def record(self, job_id: str) -> dict[str, str]:
        """The raw record, for inspection and tests."""
        return {_text(k): _text(v) for k, v in (await self.redis.hgetall(self._job(job_id))).items()}


def _to_claim(reply: list[Any]) -> Claim:
    action = _text(reply[0])
    if action == "go":
        return Claim("go", attempt=int(reply[1]), unavailable=int(reply[2]) if len(reply) > 2 else 0)
    if action == "busy":
        return Claim("busy", until=max(0, int(reply[1])) / 1000)
    if action == "wait":
        return Claim("wait", until=float(reply[1]))
    if action == "buried":
        return Claim("buried", kept=_text(reply[1]))
    if action == "exhausted":
        return Claim("exhausted", attempt=int(reply[1]))
    return Claim(action)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return "" if value is None else str(value)
