"""Riding out a Redis outage: the scheduler's and listener's main loops are run again, after a pause that
doubles from 0.5 s to 10 s, whenever Redis stops answering. A restarted Redis holds nothing on this
machine; the loops then rebuild what they need (the listener resyncs, recovery re-registers triggers)."""
from __future__ import annotations

import logging
import time
from typing import Callable

import redis

log = logging.getLogger("resilience")
FIRST_PAUSE_SECONDS = 0.5
LONGEST_PAUSE_SECONDS = 10.0
HEALTHY_SECONDS = 30.0  # a loop that ran this long before failing starts its backoff afresh

REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)


def keep_running(process: str, loop: Callable[[], None], stop: list[bool]) -> None:
    """Calls `loop` (which returns when `stop` is set) until `stop` is set, through Redis outages."""
    pause = FIRST_PAUSE_SECONDS
    while not stop:
        started = time.monotonic()
        try:
            loop()
            return
        except REDIS_DOWN as exc:
            if time.monotonic() - started > HEALTHY_SECONDS:
                pause = FIRST_PAUSE_SECONDS
            log.error("redis unavailable; retrying", extra={"event": "redis_unavailable", "component": process,
                                                            "retry_in_seconds": pause, "error": str(exc)})
            deadline = time.monotonic() + pause
            while not stop and time.monotonic() < deadline:
                time.sleep(0.1)
            pause = min(pause * 2, LONGEST_PAUSE_SECONDS)
    log.info("stopping", extra={"event": "stopping", "component": process})
