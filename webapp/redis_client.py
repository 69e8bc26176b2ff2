"""One Redis connection pool per process and URL."""
from __future__ import annotations

from functools import lru_cache

import redis
from flask import current_app


@lru_cache(maxsize=8)
def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30)


def current() -> redis.Redis:
    return connect(current_app.config["REDIS_URL"])
