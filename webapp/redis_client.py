"""One Redis connection pool per process and URL."""
from __future__ import annotations

from functools import lru_cache

import redis
from redis.client import Pipeline
from redis.commands.core import Script
from flask import current_app


@lru_cache(maxsize=8)
def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30)


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
