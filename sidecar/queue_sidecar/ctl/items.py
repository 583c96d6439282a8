"""Buried jobs (DelayQueue) and dead letters (KafkaQueue): paged listings and one item at a time.

``buried QUEUE [get|kick|delete ID]`` and ``dlq QUEUE [get|replay|skip REF]`` share one shape:
no action lists a page (``--limit``, ``--after``), an action works on one item. ``dlq`` on a
DelayQueue means its buried jobs (``replay`` is ``kick``, ``skip`` is ``delete``).
"""

from __future__ import annotations

import argparse
import re

from queue_engine.errors import InvalidRequest, NotFound
from queue_engine.kq.dead_letters import (
    get_dead_letter,
    list_dead_letters,
    replay_dead_letter,
    replay_dead_letters,
    skip_dead_letter,
)
from queue_sidecar.config import DelayQueueConfig, KafkaQueueConfig
from queue_sidecar.ctl import paging, views
from queue_sidecar.ctl.base import Report, admin, delay_queue, force_base64
from queue_sidecar.ctl.source import QueueSettings

DEFAULT_PAGE = 100
_REF = re.compile(r"(\d+):(\d+)")
_AS_BURIED = {"replay": "kick", "skip": "delete", "get": "get"}


def _need_ref(args: argparse.Namespace, what: str) -> str:
    if not args.ref:
        raise InvalidRequest(f"{args.command} {args.action} needs the {what} (as the listing shows it)")
    return str(args.ref)


async def buried(queue: QueueSettings, args: argparse.Namespace) -> Report:
    dq = delay_queue(queue, "buried")
    action = getattr(args, "action", None)
    if action is None:
        return await _buried_page(dq, args)
    job_id = _need_ref(args, "job ID")
    repair = admin(dq, args)
    try:
        if action == "get":
            info = await repair.job(job_id)
            if info.state != "buried":
                raise NotFound(
                    f"no buried job {job_id} on {dq.name}: it is {info.state} (queuectl get shows any job)"
                )
            view = views.job(info, dq.name, force_base64(args))
            return Report(view, fields=views.job_fields(view))
        if action == "kick":
            kicked = await repair.kick_job(job_id)
            return Report(
                {"queue": dq.name, "id": job_id, "kicked": kicked},
                f"job {job_id} kicked on {dq.name}: {kicked} buried cop(ies) ready again, attempts reset",
            )
        deleted = await repair.delete_job(job_id)
        return Report(
            {"queue": dq.name, "id": job_id, "deleted": deleted},
            f"buried job {job_id} deleted on {dq.name} ({deleted} cop(ies) removed; it is revoked for good)",
        )
    finally:
        await repair.close()


async def _buried_page(dq: DelayQueueConfig, args: argparse.Namespace) -> Report:
    after = paging.parse_buried_cursor(args.after, dq.name) if args.after else None
    reader = admin(dq, args)
    try:
        page = await reader.buried_page(args.limit or DEFAULT_PAGE, after)
    finally:
        await reader.close()
    items = [views.buried(job, force_base64(args)) for job in page.jobs]
    cursor = paging.buried_cursor(page.next, dq.name) if page.next else None
    return Report(
        {"queue": dq.name, "total": page.total, "buried": items, "next": cursor},
        f"{len(items)} of {page.total} buried job(s) on {dq.name}, oldest first "
        f"(queuectl buried {dq.name} kick ID re-queues one)",
        [views.buried_row(item) for item in items],
        ["id", "node", "attempts", "buried_at", "last_error", "body"],
        after=cursor or "",
    )


async def dlq(queue: QueueSettings, args: argparse.Namespace) -> Report:
    action = getattr(args, "action", None) or ("replay" if args.replay else None)
    if isinstance(queue, DelayQueueConfig):
        if args.all:
            raise InvalidRequest(
                "--all is for dead letters of a KafkaQueue; buried jobs are listed until kicked"
            )
        if action == "replay" and not args.ref:
            from queue_sidecar.ctl.commands import kick  # noqa: PLC0415 - commands imports this module

            return await kick(queue, argparse.Namespace(**{**vars(args), "count": args.limit}))
        if action:
            _need_ref(args, "job ID")  # before the action is renamed, so the message names the one given
        args.action = _AS_BURIED.get(action, action) if action else None
        return await buried(queue, args)
    assert isinstance(queue, KafkaQueueConfig)
    args.action = action
    if action is None:
        return await _letters_page(queue, args)
    security = queue.security()
    topic = queue.dead_letter_topic
    if action == "replay" and not args.ref:
        replayed = await replay_dead_letters(queue.brokers, topic, args.limit, security)
        return Report(
            {"queue": queue.name, "dead_letter_topic": topic, "replayed": replayed},
            f"replayed {replayed} dead letter(s) from {topic}",
        )
    partition, offset = _parse_ref(_need_ref(args, "PARTITION:OFFSET"))
    if action == "get":
        letter = await get_dead_letter(queue.brokers, topic, partition, offset, security=security)
        view = {"queue": queue.name, "dead_letter_topic": topic, **views.letter(letter, force_base64(args))}
        return Report(view, fields=views.letter_fields(view))
    handle = replay_dead_letter if action == "replay" else skip_dead_letter
    letter = await handle(queue.brokers, topic, partition, offset, security=security)
    return Report(
        {
            "queue": queue.name,
            "dead_letter_topic": topic,
            "ref": f"{partition}:{offset}",
            "partition": partition,
            "offset": offset,
            "state": letter.state,
        },
        f"dead letter {partition}:{offset} {letter.state} ({topic})",
    )


async def _letters_page(queue: KafkaQueueConfig, args: argparse.Namespace) -> Report:
    topic = queue.dead_letter_topic
    after = paging.parse_letters_cursor(args.after, queue.name) if args.after else None
    page = await list_dead_letters(
        queue.brokers,
        topic,
        limit=args.limit or DEFAULT_PAGE,
        after=after,
        include_handled=args.all,
        security=queue.security(),
    )
    items = [views.letter(letter, force_base64(args)) for letter in page.letters]
    cursor = paging.letters_cursor(page.next, queue.name) if page.next else None
    which = "" if args.all else "pending "
    first = page.matching - page.remaining + 1
    shown = f"{first}-{first + len(items) - 1}" if items else "none"
    message = f"{shown} of {page.matching} {which}dead letter(s) in {topic}, oldest first"
    if args.all:
        message += f" ({page.pending} pending)"
    return Report(
        {
            "queue": queue.name,
            "dead_letter_topic": topic,
            "pending": page.pending,
            "matching": page.matching,
            "dead_letters": items,
            "next": cursor,
        },
        message,
        [views.letter_row(item) for item in items],
        ["ref", "state", "original", "attempts", "reason", "last_error", "key", "body"],
        wide_columns=["timestamp", "headers"],
        after=cursor or "",
    )


def _parse_ref(text: str) -> tuple[int, int]:
    match = _REF.fullmatch(text.strip())
    if match is None:
        raise InvalidRequest(
            f"dead letter {text!r}: write PARTITION:OFFSET of the dead-letter topic, "
            "as REF shows it (e.g. 0:17)"
        )
    return int(match.group(1)), int(match.group(2))
