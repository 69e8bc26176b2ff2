"""The worker process: `python -m jobs.worker [QUEUE ...]`. A non-forking RQ worker (SimpleWorker: ~2 ms a
job here against ~10 ms for the forking Worker) on `stoploss` then `orders`, so exits go first. A job
prepares its events and hands their orders to the process's pool of order threads (engine/executor.py),
so one worker keeps hundreds of orders in flight. Exits still have workers of their own (`python -m
jobs.worker stoploss`, the Procfile's `exits` line): preparing a 500-event herd batch, or a pool full of
entries waiting for fills, must never stand between a breached stop-loss and the broker. On SIGTERM the
worker takes no new job and the process exits when the orders in flight are final.

RQ's work loop retries Redis errors only while it waits for a job; one between two jobs (its suspension
check, a heartbeat, marking a job started or finished) makes it log "unhandled exception, quitting" and
return, and its teardown then raises too. So the loop is started again here, after a growing pause,
until a stop is requested: the process rides out a Redis outage at any moment."""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable

import redis
from rq import Queue
from rq.exceptions import StopRequested
from rq.worker import BaseWorker, SimpleWorker, Worker

from jobs import tasks
from jobs.resilience import REDIS_DOWN, Backoff, pause_unless_stopped
from jobs.signals import stop_requested
from webapp.engine import executor
from webapp.engine.events import QUEUES

log = logging.getLogger("worker")


class _StopAware:
    """Shares the process's stop flag with RQ, so a work loop that ended on a stop request is told from
    one that quit by itself."""

    stop: list[bool]

    def handle_warm_shutdown_request(self) -> None:  # RQ's hook, called by its SIGTERM/SIGINT handler
        self.stop.append(True)
        super().handle_warm_shutdown_request()  # type: ignore[misc]

    def check_for_suspension(self, burst: bool) -> None:  # RQ calls this first in every turn of its loop
        if self.stop:  # asked before RQ's own signal handlers were in place (booting, or between two loops)
            raise StopRequested
        super().check_for_suspension(burst)  # type: ignore[misc]


class EngineWorker(_StopAware, SimpleWorker):
    pass


class ForkingEngineWorker(_StopAware, Worker):
    pass


def work_until_stopped(make_worker: Callable[[], BaseWorker], stop: list[bool], logging_level: str) -> None:
    """Runs RQ's work loop, and again after each time it quits without a stop request."""
    backoff = Backoff()
    while not stop:
        started = time.monotonic()
        worker = None
        error = "RQ's work loop quit without a stop request (its log line above says why)"
        try:
            worker = make_worker()
            worker.register_death()  # the loop that quit may still be registered (its teardown needs Redis)
            worker.work(logging_level=logging_level, with_scheduler=False)
        except REDIS_DOWN as exc:
            error = str(exc)
        finally:
            stop_requested(stop)  # RQ's handlers stay installed after its loop and would raise into our pause
            if worker is not None and worker.pubsub_thread is not None:
                worker.pubsub_thread.stop()  # RQ's teardown stops it only when Redis answered
        if stop:
            break
        pause = backoff.after_failure(time.monotonic() - started)
        log.error("worker loop ended; restarting it", extra={"event": "worker_loop_restart",
                                                              "retry_in_seconds": pause, "error": error})
        pause_unless_stopped(pause, stop)


def main() -> None:
    stop = stop_requested()  # first: a SIGTERM while booting is a clean stop too
    app = tasks.app()  # built before the first job, so the first trigger pays no start-up cost
    with app.app_context():
        executor.warm_up(app)
    # RQ gets a connection of its own: it lengthens its socket timeout for its blocking BLPOP, which the
    # engine's pool (short timeouts, already open for the order threads) must not get.
    conn = redis.Redis.from_url(app.config["REDIS_URL"])
    # RQ_WORKER_CLASS=fork trades ~8 ms a job for a fresh process per job (isolation); measured by make bench.
    worker_class = ForkingEngineWorker if os.environ.get("RQ_WORKER_CLASS") == "fork" else EngineWorker
    names = [name for name in QUEUES if name in sys.argv[1:]] or list(QUEUES)

    def make_worker() -> BaseWorker:
        worker = worker_class([Queue(name, connection=conn) for name in names], connection=conn,
                              name=f"worker-{os.uname().nodename}-{os.getpid()}")
        worker.stop = stop
        worker.max_connection_wait_time = 10.0  # RQ backs off up to 60 s by default; come back sooner
        return worker

    log.info("worker starting", extra={"event": "worker_start", "queues": names})
    work_until_stopped(make_worker, stop, app.config["LOG_LEVEL"])
    log.info("worker stopped", extra={"event": "worker_stop"})


if __name__ == "__main__":
    main()
