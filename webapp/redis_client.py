"""One Redis connection pool per process and URL."""
from __future__ import annotations

from functools import lru_cache

import redis
from redis.driver_info import DriverInfo
from redis.client import Pipeline
from redis.commands.core import Script
from flask import current_app


# A worker keeps hundreds of orders in flight on threads, each needing a connection for a moment: a
# blocking pool makes a thread wait its turn for one instead of failing with "Too many connections".
MAX_CONNECTIONS = 64


@lru_cache(maxsize=8)
def connect(url: str) -> redis.Redis:
    # lib_version given: otherwise every new connection reads the package metadata (~2 ms of CPU).
    return redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=20, socket_connect_timeout=2, socket_timeout=5,
        health_check_interval=30, driver_info=DriverInfo(lib_version=redis.__version__)))


def current() -> redis.Redis:
    return connect(current_app.config["REDIS_URL"])


_scripts: dict[str, Script] = {}


def script(conn: redis.Redis | Pipeline, source: str) -> Script:
    """One Script object per Lua source for the process: a pipeline checks each distinct object's
    SHA before it runs, so a fresh object per call would cost a thousand checks in a thousand-event batch.
    Always call it with client= (the object remembers only the first connection it saw)."""
    found = _scripts.get(source)
    if found is None:
        found = _scripts[source] = conn.register_script(source)
    return found
