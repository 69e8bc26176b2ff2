"""What an operator needs to see at a glance: can we reach Redis and the database, are the workers,
scheduler and listener alive, how deep are the queues, what failed, is market data fresh."""
from __future__ import annotations

import json

from flask import current_app
from rq import Queue, Worker
from rq.registry import FailedJobRegistry
from sqlalchemy import text

from webapp import keys, redis_client
from webapp.engine.events import QUEUES
from webapp.extensions import db
from webapp.feeds import session as feed_session


def snapshot() -> dict:
    report: dict = {}
    try:
        db.session.execute(text("SELECT 1"))
        report["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 — a health page reports every failure, whatever its type
        report["database"] = f"error: {type(exc).__name__}"
    else:
        # Which feed, whose session, or why there is none (Kite mode runs without one, on quotes).
        report["feed"] = feed_session.describe(current_app.config)
    conn = redis_client.current()
    try:
        conn.ping()
    except Exception as exc:  # noqa: BLE001
        report["redis"] = f"error: {type(exc).__name__}"
        return report
    report["redis"] = "ok"
    report["workers"] = sorted(w.name for w in Worker.all(connection=conn))
    report["queues"] = {name: Queue(name, connection=conn).count for name in QUEUES}
    report["failed_jobs"] = {name: FailedJobRegistry(name, connection=conn).count for name in QUEUES}
    scheduler = conn.get(keys.SCHEDULER_HEARTBEAT)
    report["scheduler"] = scheduler.decode() if scheduler else None
    listener = conn.get(keys.LISTENER_HEARTBEAT)
    report["listener"] = json.loads(listener) if listener else None
    report["feed_stale"] = {k.decode(): v.decode() for k, v in conn.hgetall(keys.FEED_STALE).items()}
    return report
