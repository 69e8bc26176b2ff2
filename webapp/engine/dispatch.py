"""Putting events on their RQ queues: one job carries a batch of events for the same queue (a batch of
one is the ordinary case). Everything that enqueues work for the engine goes through here."""
from __future__ import annotations

import time

import redis
from redis.client import Pipeline
from rq import Queue, Worker

from webapp.engine.events import Event

JOB_FUNCTION = "jobs.tasks.handle_events"
RESULT_TTL_SECONDS = 24 * 3600
BATCH_MAX = 25


def job_timeout(events: int) -> int:
    # Worst case per event: three broker timeouts, backoff and a confirmation wait.
    return 60 + 40 * events


def enqueue(conn: redis.Redis, events: list[Event], pipeline: Pipeline | None = None) -> None:
    queues = {event.queue for event in events}
    if len(queues) != 1:
        raise ValueError(f"a batch goes to one queue, not {sorted(queues)}")
    Queue(queues.pop(), connection=conn).enqueue(
        JOB_FUNCTION, [event.to_dict() for event in events], job_timeout=job_timeout(len(events)),
        result_ttl=RESULT_TTL_SECONDS, description=" ".join(e.event_id for e in events)[:300], pipeline=pipeline,
    )


def batches(events: list[Event], workers: int) -> list[list[Event]]:
    """Same-queue batches, one share per live worker (so every worker starts at once), at most
    BATCH_MAX events each when a herd arrives."""
    by_queue: dict[str, list[Event]] = {}
    for event in events:
        by_queue.setdefault(event.queue, []).append(event)
    result = []
    for same in by_queue.values():
        size = max(1, min(BATCH_MAX, -(-len(same) // workers)))
        result.extend(same[i:i + size] for i in range(0, len(same), size))
    return result


_workers_seen = (0.0, 1)


def live_workers(conn: redis.Redis) -> int:
    """How many RQ workers are registered (cached for 5 s): the share to split simultaneous events into."""
    global _workers_seen
    checked, count = _workers_seen
    if time.monotonic() - checked > 5:
        count = max(1, Worker.count(connection=conn))
        _workers_seen = (time.monotonic(), count)
    return count
