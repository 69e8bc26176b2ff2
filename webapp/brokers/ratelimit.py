"""Outgoing rate limits per broker API key, shared by every worker through Redis: a burst waits for
its turn instead of drawing HTTP 429. Exact sliding windows ("at most N in any W"), checked for all of a
call's windows at once in one script, against Redis's clock so every machine agrees."""
from __future__ import annotations

import threading
import time
import uuid

import redis

from webapp import keys, metrics

_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = 0
for i, key in ipairs(KEYS) do
  local window = tonumber(ARGV[2 * i]); local limit = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= limit then
    local oldest = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2])
    wait = math.max(wait, oldest + window - now + 1)
  end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[1])
  redis.call('PEXPIRE', key, tonumber(ARGV[2 * i]))
end
return 0
"""


_waits = threading.local()


def time_waited() -> float:
    """Seconds this thread has spent waiting for its turn so far: a follow-up that waited for the limiter
    was not kept waiting by the broker, so that time does not count against the order's confirmation."""
    return getattr(_waits, "total", 0.0)


class RateLimiter:
    def __init__(self, conn: redis.Redis, limits: dict[str, list[tuple[int, int]]]) -> None:
        """limits: kind → [(window_ms, max_calls), ...]"""
        self.conn = conn
        self.limits = limits
        self.script = conn.register_script(_SCRIPT)

    def acquire(self, api_key: str, kind: str, give_up_after: float = 120.0) -> float:
        """Blocks until a call of this kind may go out; returns the seconds waited."""
        windows = self.limits[kind]
        redis_keys = [keys.rate_limit(api_key, kind, window) for window, _ in windows]
        args: list[object] = [uuid.uuid4().hex]
        for window, limit in windows:
            args += [window, limit]
        waited = 0.0
        while True:
            wait_ms = int(self.script(keys=redis_keys, args=args))
            if wait_ms <= 0:
                metrics.observe(metrics.RATE_LIMIT_WAIT_SECONDS, waited, kind)
                return waited
            if waited + wait_ms / 1000 > give_up_after:
                metrics.observe(metrics.RATE_LIMIT_WAIT_SECONDS, waited, kind)
                raise TimeoutError(f"rate limit for {kind} calls would hold this call over {give_up_after:.0f} s")
            time.sleep(wait_ms / 1000)
            waited += wait_ms / 1000
            _waits.total = time_waited() + wait_ms / 1000


# Calls spaced exactly one window apart here can reach the broker closer together: a thread that took its
# turn can be held back before its request leaves (hundreds of order threads share one interpreter), so
# every window is kept 50% longer than the broker's: 10/s becomes at most 10 in any 1.5 s. (20% drew a
# 429 now and then once orders went out concurrently.)
SAFETY = 1.5


def parse_limits(spec: str) -> list[tuple[int, int]]:
    """ "10/s,400/min,5000/day" → [(1500, 10), (90000, 400), (129600000, 5000)] (windows in ms, with SAFETY)"""
    units = {"s": 1000, "min": 60_000, "day": 86_400_000}
    result = []
    for part in spec.split(","):
        count, _, unit = part.strip().partition("/")
        result.append((int(units[unit] * SAFETY), int(count)))
    return result
