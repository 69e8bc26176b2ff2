"""Registering triggers with rq-scheduler. Its sorted set holds the jobs (score = whole epoch second,
which is exact for HH:MM:SS trading times); the scheduler process (jobs/scheduler.py) moves them to
their queues at the instant, precisely."""
from __future__ import annotations

from datetime import datetime

import redis
from redis.client import Pipeline
from rq_scheduler import Scheduler

from webapp import keys
from webapp.engine.dispatch import JOB_FUNCTION, RESULT_TTL_SECONDS, job_timeout
from webapp.engine.events import BUY, SELL, Event



def scheduler(conn: redis.Redis) -> Scheduler:
    return Scheduler(queue_name="orders", connection=conn)


def register(conn: redis.Redis, event: Event, at: datetime) -> None:
    if at.microsecond:
        raise ValueError("trigger instants are whole seconds: the scheduler stores whole seconds")
    scheduler(conn).enqueue_at(
        at, JOB_FUNCTION, [event.to_dict()], job_id=keys.schedule_job_id(event.strategy_id, event.event),
        queue_name=event.queue, timeout=job_timeout(1), job_result_ttl=RESULT_TTL_SECONDS,
        job_description=event.event_id,
    )
    conn.publish(keys.SCHEDULER_WAKEUP, at.timestamp())


def cancel(conn: redis.Redis | Pipeline, strategy_id: int) -> None:
    """As Scheduler.cancel, but on a pipeline too."""
    conn.zrem(Scheduler.scheduled_jobs_key, *(keys.schedule_job_id(strategy_id, kind) for kind in (BUY, SELL)))


def scheduled_at(conn: redis.Redis | Pipeline, strategy_id: int, kind: str) -> float | None:
    """The registration's instant (epoch seconds), or None; on a pipeline, queued for its execute()."""
    return conn.zscore(Scheduler.scheduled_jobs_key, keys.schedule_job_id(strategy_id, kind))
