"""The worker process: `python -m jobs.worker`. A non-forking RQ worker (SimpleWorker: ~2 ms a job
here against ~10 ms for the forking Worker) on `stoploss` then `orders`, so exits always go first."""
from __future__ import annotations

import logging
import os

from rq import Queue
from rq.worker import SimpleWorker, Worker

from jobs import tasks
from webapp import redis_client
from webapp.engine.events import QUEUES


def main() -> None:
    app = tasks.app()  # built before the first job, so the first trigger pays no start-up cost
    conn = redis_client.connect(app.config["REDIS_URL"])
    # RQ_WORKER_CLASS=fork trades ~8 ms a job for a fresh process per job (isolation); measured by make bench.
    worker_class = Worker if os.environ.get("RQ_WORKER_CLASS") == "fork" else SimpleWorker
    worker = worker_class([Queue(name, connection=conn) for name in QUEUES], connection=conn,
                          name=f"worker-{os.uname().nodename}-{os.getpid()}")
    worker.max_connection_wait_time = 10.0  # RQ backs off up to 60 s by default; come back sooner after an outage
    logging.getLogger("worker").info("worker starting", extra={"event": "worker_start", "queues": list(QUEUES)})
    worker.work(logging_level=app.config["LOG_LEVEL"], with_scheduler=False)


if __name__ == "__main__":
    main()
