"""The shared rate limiter against a real Redis: concurrent callers (as several workers would be) never
exceed any window, and a burst waits instead of failing."""
from __future__ import annotations

import threading
import time

from webapp.brokers.ratelimit import RateLimiter, parse_limits


def test_parse_limits_keeps_a_safety_margin():
    assert parse_limits("10/s,400/min") == [(1500, 10), (90000, 400)]


def test_concurrent_callers_never_exceed_the_window(redis_conn):
    limiter = RateLimiter(redis_conn, {"orders": [(300, 4)]})  # at most 4 in any 300 ms
    stamps: list[float] = []
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(4):
            limiter.acquire("key1", "orders")
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stamps.sort()
    assert len(stamps) == 12
    # Any 5 consecutive calls span at least the window, less the slack between a thread's admission (in Redis)
    # and its stamp here: up to ~20 ms with three test workers on 2 cores. Without the limit they span ~0.
    assert min(b - a for a, b in zip(stamps, stamps[4:])) >= 0.25
    # Other API keys have budgets of their own.
    assert limiter.acquire("key2", "orders") == 0.0
