"""Putting events on their RQ queues: one job carries a batch of events for the same queue (a batch of
one is the ordinary case). Everything that enqueues work for the engine goes through here."""
from __future__ import annotations

import time
from typing import Callable

import redis
from redis.client import Pipeline
from rq import Queue, Worker

from webapp.engine.events import Event

JOB_FUNCTION = "jobs.tasks.handle_events"
RESULT_TTL_SECONDS = 24 * 3600
# A worker keeps a whole batch's orders in flight at once (engine/executor.py), so a herd is best split
# into one batch per worker; the cap bounds one job's size and its timeout.
BATCH_MAX = 500


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


def batches(events: list[Event], workers: Callable[[str], int]) -> list[list[Event]]:
    """Same-queue batches, one share per live worker of that queue (so every worker starts at once), at
    most BATCH_MAX events each."""
    by_queue: dict[str, list[Event]] = {}
    for event in events:
        by_queue.setdefault(event.queue, []).append(event)
    result = []
    for queue, same in by_queue.items():
        size = max(1, min(BATCH_MAX, -(-len(same) // workers(queue))))
        result.extend(same[i:i + size] for i in range(0, len(same), size))
    return result


_workers_seen: dict[str, tuple[float, int]] = {}


def live_workers(conn: redis.Redis) -> Callable[[str], int]:
    """How many RQ workers listen on a queue (cached for 5 s): the share to split simultaneous events into."""
    def count(queue: str) -> int:
        checked, found = _workers_seen.get(queue, (float("-inf"), 1))
        if time.monotonic() - checked > 5:
            found = max(1, Worker.count(connection=conn, queue=Queue(queue, connection=conn)))
            _workers_seen[queue] = (time.monotonic(), found)
        return found
    return count
