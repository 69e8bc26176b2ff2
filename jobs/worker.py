"""The worker process: `python -m jobs.worker [QUEUE ...]`. A non-forking RQ worker (SimpleWorker: ~2 ms a
job here against ~10 ms for the forking Worker) on `stoploss` then `orders`, so exits go first. A job
prepares its events and hands their orders to the process's pool of order threads (engine/executor.py),
so one worker keeps hundreds of orders in flight. Exits still have workers of their own (`python -m
jobs.worker stoploss`, the Procfile's `exits` line): preparing a 500-event herd batch, or a pool full of
entries waiting for fills, must never stand between a breached stop-loss and the broker. On SIGTERM the
worker takes no new job and the process exits when the orders in flight are final."""
from __future__ import annotations

import logging
import os
import sys

import redis
from rq import Queue
from rq.worker import SimpleWorker, Worker

from jobs import tasks
from webapp.engine import executor
from webapp.engine.events import QUEUES


def main() -> None:
    app = tasks.app()  # built before the first job, so the first trigger pays no start-up cost
    with app.app_context():
        executor.warm_up(app)
    # RQ gets a connection of its own: it lengthens its socket timeout for its blocking BLPOP, which the
    # engine's pool (short timeouts, already open for the order threads) must not get.
    conn = redis.Redis.from_url(app.config["REDIS_URL"])
    # RQ_WORKER_CLASS=fork trades ~8 ms a job for a fresh process per job (isolation); measured by make bench.
    worker_class = Worker if os.environ.get("RQ_WORKER_CLASS") == "fork" else SimpleWorker
    names = [name for name in QUEUES if name in sys.argv[1:]] or list(QUEUES)
    worker = worker_class([Queue(name, connection=conn) for name in names], connection=conn,
                          name=f"worker-{os.uname().nodename}-{os.getpid()}")
    worker.max_connection_wait_time = 10.0  # RQ backs off up to 60 s by default; come back sooner after an outage
    logging.getLogger("worker").info("worker starting", extra={"event": "worker_start", "queues": names})
    worker.work(logging_level=app.config["LOG_LEVEL"], with_scheduler=False)


if __name__ == "__main__":
    main()
