"""The scheduler process: `python -m jobs.scheduler`. Triggers are registered with rq-scheduler (its
sorted set, score = the trigger's epoch second). Polling that set, as rq-scheduler's own loop does,
runs jobs up to one poll interval late; this loop instead sleeps until the earliest trigger's instant
(waking early when a new one is registered) and then moves every due job to its queue in one
pipeline, so a 09:15:00 herd of a thousand leaves together, never before its second."""
from __future__ import annotations

import logging
import signal
import time

import redis
from rq import Queue
from rq.job import Job

from webapp import clock, create_app, keys, redis_client
from webapp.engine.schedule import scheduler

log = logging.getLogger("scheduler")
IDLE_WAIT_SECONDS = 1.0
HEARTBEAT_TTL_SECONDS = 10


def move_due(conn: redis.Redis, scheduled_key: str, queues: dict[str, Queue]) -> int:
    """Claim each due job with ZREM (only the process whose ZREM removes it enqueues it, so two
    schedulers never double a trigger), then enqueue all claimed jobs in one round trip."""
    due = conn.zrangebyscore(scheduled_key, "-inf", clock.epoch())
    if not due:
        return 0
    claim = conn.pipeline(transaction=False)
    for job_id in due:
        claim.zrem(scheduled_key, job_id)
    claimed = [job_id.decode() for job_id, won in zip(due, claim.execute()) if won]
    pipe = conn.pipeline()
    moved = 0
    for job in Job.fetch_many(claimed, connection=conn):
        if job is None:
            continue
        queue = queues.get(job.origin) or queues.setdefault(job.origin, Queue(job.origin, connection=conn))
        queue.enqueue_job(job, pipeline=pipe)
        moved += 1
    pipe.execute()
    return moved


def run(conn: redis.Redis, stop: list[bool]) -> None:
    scheduled_key = scheduler(conn).scheduled_jobs_key
    queues: dict[str, Queue] = {}
    wakeups = conn.pubsub(ignore_subscribe_messages=True)
    wakeups.subscribe(keys.SCHEDULER_WAKEUP)
    next_beat = 0.0
    while not stop:
        now = time.monotonic()
        if now >= next_beat:
            conn.set(keys.SCHEDULER_HEARTBEAT, clock.now().isoformat(), ex=HEARTBEAT_TTL_SECONDS)
            next_beat = now + 1.0
        first = conn.zrange(scheduled_key, 0, 0, withscores=True)
        delay = first[0][1] - clock.epoch() if first else IDLE_WAIT_SECONDS
        if delay > 0:
            wait = min(delay, IDLE_WAIT_SECONDS)
            if wait > 0.002:
                wakeups.get_message(timeout=wait - 0.001)  # a new registration may be due sooner
            else:
                time.sleep(wait)
            continue
        started = clock.epoch()
        moved = move_due(conn, scheduled_key, queues)
        if moved:
            log.info("triggers enqueued", extra={"event": "triggers_enqueued", "count": moved,
                                                 "lateness_ms": round((started - first[0][1]) * 1000, 2)})


def main() -> None:
    app = create_app(process_name="scheduler")
    stop: list[bool] = []

    def request_stop(_signum: int, _frame: object) -> None:
        stop.append(True)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log.info("scheduler starting", extra={"event": "scheduler_start"})
    run(redis_client.connect(app.config["REDIS_URL"]), stop)
    log.info("scheduler stopped", extra={"event": "scheduler_stop"})


if __name__ == "__main__":
    main()
