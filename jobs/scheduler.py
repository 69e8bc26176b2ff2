"""The scheduler process: `python -m jobs.scheduler`. Triggers are registered with rq-scheduler (its
sorted set, score = the trigger's epoch second). Polling that set, as rq-scheduler's own loop does,
runs jobs up to one poll interval late; this loop instead sleeps until the earliest trigger's instant
(waking early when a new one is registered) and then moves every due job to its queue in one
transaction, batched (webapp/engine/dispatch.py), so a 09:15:00 herd of a thousand leaves together,
never before its second."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
from flask import Flask
from redis.exceptions import WatchError
from rq.job import Job

from jobs import risk_watch
from jobs.resilience import REDIS_DOWN, keep_running
from jobs.signals import stop_requested
from webapp import clock, create_app, keys, redis_client
from webapp.extensions import db
from webapp.engine import dispatch, recovery
from webapp.engine.events import QUEUES, Event
from webapp.engine.schedule import scheduler
from webapp.services import deploy

log = logging.getLogger("scheduler")
IDLE_WAIT_SECONDS = 1.0
HEARTBEAT_TTL_SECONDS = 10


class Mover:
    """Moves due triggers to their queues. Just before an instant it fetches the payloads of the jobs
    due then, so at the instant only the claim and one pipelined enqueue remain."""

    PREFETCH_SECONDS = 0.25

    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn
        self.key = scheduler(conn).scheduled_jobs_key
        # Job id → (its instant, its payload). A job id is reused by every run of a strategy
        # (keys.schedule_job_id), so an entry is only used for the registration at the same instant: one that
        # another scheduler moved, or that was cancelled and registered again for a later run, is not.
        self.prefetched: dict[str, tuple[float, Job]] = {}
        self.prefetched_until = float("-inf")

    def prefetch(self, until: float) -> None:
        if until <= self.prefetched_until:
            return
        scored = {i.decode(): score for i, score in self.conn.zrangebyscore(self.key, "-inf", until, withscores=True)}
        self.prefetched = {i: entry for i, entry in self.prefetched.items() if scored.get(i) == entry[0]}
        wanted = [i for i in scored if i not in self.prefetched]
        self.prefetched.update({job.id: (scored[job.id], job)
                                for job in Job.fetch_many(wanted, connection=self.conn) if job})
        self.prefetched_until = until

    def move_due(self) -> list[str]:
        """Claim and enqueue in one transaction: the due triggers leave the scheduled set in the same
        MULTI/EXEC that puts their events on the queues, so neither a crash nor a second scheduler can lose
        or double a trigger (a concurrent change to the set aborts the EXEC, and we look again)."""
        with self.conn.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.key)
                    scored = {i.decode(): score
                              for i, score in pipe.zrangebyscore(self.key, "-inf", clock.epoch(), withscores=True)}
                    due = list(scored)
                    if not due:
                        return []
                    cached = {i for i in due if i in self.prefetched and self.prefetched[i][0] == scored[i]}
                    missing = [i for i in due if i not in cached]
                    jobs = [self.prefetched[i][1] for i in due if i in cached]
                    jobs += [job for job in Job.fetch_many(missing, connection=self.conn) if job is not None]
                    events = [Event.from_dict(payload) for job in jobs for payload in job.args[0]]
                    pipe.multi()
                    pipe.zrem(self.key, *due)
                    for batch in dispatch.batches(events, dispatch.live_workers(self.conn)):
                        dispatch.enqueue(self.conn, batch, pipeline=pipe)
                    for job in jobs:
                        pipe.delete(job.key)  # the registration has become a queued event
                    pipe.execute()
                    break
                except WatchError:
                    continue
        for job_id in due:
            self.prefetched.pop(job_id, None)
        self.prefetched_until = float("-inf")
        return [event.event_id for event in events]


def reconciling(app: Flask, stop: list[bool]) -> None:
    """Rebuild Redis and triggers from the database (webapp/engine/recovery.py): at once on boot, then every
    RECONCILE_SECONDS. On a thread of its own, so a long round never delays a trigger."""
    _every(app, stop, "RECONCILE_SECONDS", recovery.reconcile, "recovery round", "recovery_failed")


def deploying(app: Flask, stop: list[bool]) -> None:
    """Begin (or skip, saying why) deployed strategies' runs of the day (webapp/services/deploy.py): at once
    on boot, then every DEPLOY_CHECK_SECONDS. On a thread of its own too: beginning a run registers its
    triggers, which this process's main loop then moves, never waiting on a round."""
    _every(app, stop, "DEPLOY_CHECK_SECONDS", deploy.deploy_round, "deploy round", "deploy_failed")


def _every(app: Flask, stop: list[bool], interval: str, work: Callable[[], object], what: str, failed: str) -> None:
    while not stop:
        with app.app_context():
            try:
                work()
            except REDIS_DOWN as exc:
                log.error(f"{what} skipped: redis unavailable", extra={"event": failed, "error": str(exc)})
            except Exception:  # noqa: BLE001 — e.g. the database down: the next round tries again
                log.exception(f"{what} failed", extra={"event": failed})
            finally:
                db.session.remove()
        deadline = time.monotonic() + app.config[interval]
        while not stop and time.monotonic() < deadline:
            time.sleep(0.2)


def run(app: Flask, conn: redis.Redis, stop: list[bool]) -> None:
    threading.Thread(target=reconciling, args=(app, stop), name="reconciler", daemon=True).start()
    threading.Thread(target=deploying, args=(app, stop), name="deployer", daemon=True).start()
    threading.Thread(target=risk_watch.watching, args=(app, stop), name="risk", daemon=True).start()
    keep_running("scheduler", lambda: _move_triggers(conn, stop), stop)


def _move_triggers(conn: redis.Redis, stop: list[bool]) -> None:
    mover = Mover(conn)
    wakeups = conn.pubsub(ignore_subscribe_messages=True)
    wakeups.subscribe(keys.SCHEDULER_WAKEUP)
    next_beat = 0.0
    while not stop:
        now = time.monotonic()
        if now >= next_beat:
            conn.set(keys.SCHEDULER_HEARTBEAT, clock.now().isoformat(), ex=HEARTBEAT_TTL_SECONDS)
            for queue in QUEUES:
                dispatch.live_workers(conn)(queue)  # refreshed off the critical path
            next_beat = now + 1.0
        first = conn.zrange(mover.key, 0, 0, withscores=True)
        delay = first[0][1] - clock.epoch() if first else IDLE_WAIT_SECONDS
        if delay > 0:
            if delay > Mover.PREFETCH_SECONDS:
                wait = min(delay - Mover.PREFETCH_SECONDS, IDLE_WAIT_SECONDS)
            else:
                mover.prefetch(first[0][1])
                wait = first[0][1] - clock.epoch()
            if wait > 0.002:
                wakeups.get_message(timeout=wait - 0.001)  # a new registration may be due sooner
            elif wait > 0:
                time.sleep(wait)
            continue
        started = clock.epoch()
        moved = mover.move_due()
        if moved:
            log.info("triggers enqueued", extra={"event": "triggers_enqueued", "count": len(moved), "event_ids": moved,
                                                 "lateness_ms": round((started - first[0][1]) * 1000, 2)})


def main() -> None:
    stop = stop_requested()  # first: a SIGTERM while booting is a clean stop too
    app = create_app(process_name="scheduler")
    log.info("scheduler starting", extra={"event": "scheduler_start"})
    run(app, redis_client.connect(app.config["REDIS_URL"]), stop)
    log.info("scheduler stopped", extra={"event": "scheduler_stop"})


if __name__ == "__main__":
    main()
