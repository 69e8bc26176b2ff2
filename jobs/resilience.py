"""Riding out a Redis outage: the scheduler's and listener's main loops are run again, after a pause that
doubles from 0.5 s to 10 s, whenever Redis stops answering. A restarted Redis holds nothing on this
machine; the loops then rebuild what they need (the listener resyncs, recovery re-registers triggers).
The same growing pause spaces the worker's restarts of RQ's work loop and `make run`'s restarts of a
crashed process, so nothing that keeps failing is retried in a hot loop."""
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


class Backoff:
    """The pause before the next try: doubles after each failure up to `longest`, and starts again from
    `first` after a run of at least `healthy` seconds (an old failure says nothing about a new one)."""

    def __init__(self, first: float = FIRST_PAUSE_SECONDS, longest: float = LONGEST_PAUSE_SECONDS,
                 healthy: float = HEALTHY_SECONDS) -> None:
        self.first, self.longest, self.healthy = first, longest, healthy
        self.pause = first

    def after_failure(self, ran_for: float) -> float:
        """The pause to take now, for a run that lasted `ran_for` seconds before it failed."""
        if ran_for > self.healthy:
            self.pause = self.first
        pause = self.pause
        self.pause = min(self.pause * 2, self.longest)
        return pause


def pause_unless_stopped(seconds: float, stop: list[bool]) -> None:
    deadline = time.monotonic() + seconds
    while not stop and time.monotonic() < deadline:
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def keep_running(process: str, loop: Callable[[], None], stop: list[bool]) -> None:
    """Calls `loop` (which returns when `stop` is set) until `stop` is set, through Redis outages."""
    backoff = Backoff()
    while not stop:
        started = time.monotonic()
        try:
            loop()
            return
        except REDIS_DOWN as exc:
            pause = backoff.after_failure(time.monotonic() - started)
            log.error("redis unavailable; retrying", extra={"event": "redis_unavailable", "component": process,
                                                            "retry_in_seconds": pause, "error": str(exc)})
            pause_unless_stopped(pause, stop)
    log.info("stopping", extra={"event": "stopping", "component": process})
