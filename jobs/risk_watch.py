"""The risk watcher: a thread of the scheduler process (jobs/scheduler.run starts it). Every
RISK_CHECK_SECONDS during the market session of a trading day it totals the day's P&L of every user with a
daily loss limit and a run today (realised + open positions at the last price: a few queries and one Redis
read a round, however many users) and halts any user at or past their limit: a DayHalt row, a critical audit
event and log, and a STOP through the engine for each of their running strategies (webapp/services/risk.py).
Several scheduler processes may run it at once: the DayHalt is unique per user and day, so one acts."""
from __future__ import annotations

import logging
import time

from flask import Flask

from jobs.resilience import REDIS_DOWN
from webapp import clock
from webapp.extensions import db
from webapp.market_calendar import IST, is_trading_day, session_for
from webapp.services import risk

log = logging.getLogger("risk_watch")


def in_session(app: Flask) -> bool:
    calendar = app.config["TRADING_CALENDAR"]
    local = clock.now().astimezone(IST)
    return is_trading_day(local.date(), calendar) and session_for(calendar).contains(local.time())


def watching(app: Flask, stop: list[bool]) -> None:
    """Shaped like jobs.scheduler.reconciling: a round, then a pause, until stop is set; a failed round is
    logged and the next one tries again."""
    log.info("risk watcher starting", extra={"event": "risk_watch_start",
                                             "every_seconds": app.config["RISK_CHECK_SECONDS"]})
    while not stop:
        started = time.monotonic()
        if in_session(app):
            with app.app_context():
                try:
                    risk.check(lock_wait=app.config["RISK_LOCK_WAIT_SECONDS"])
                except REDIS_DOWN as exc:
                    log.error("risk round skipped: redis unavailable", extra={"event": "risk_watch_failed",
                                                                              "error": str(exc)})
                except Exception:  # noqa: BLE001 — e.g. the database down: the next round tries again
                    log.exception("risk round failed", extra={"event": "risk_watch_failed"})
                finally:
                    db.session.remove()
        deadline = started + app.config["RISK_CHECK_SECONDS"]
        while not stop and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
