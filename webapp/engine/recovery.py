"""Recovery: the database is the truth and Redis may be wiped at any moment. For every strategy the
database says is running, rebuild its Redis keys and its triggers; a trigger whose time passed while
nothing was scheduled is handled by the rule for it (a late BUY within the grace window still runs,
later the run stops with "missed entry"; a late SELL runs at once, closing being the safe side). Runs
when the scheduler starts and periodically after, under each strategy's lock."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date

from flask import current_app
from sqlalchemy import select

from webapp import clock, redis_client
from webapp.engine import dispatch, runtime, schedule
from webapp.engine.events import BUY, KILL, SELL, STOP, Event
from webapp.extensions import db
from webapp.keys import runtime as runtime_key, runtime_lock, strategy as strategy_key
from webapp.market_calendar import instant, parse_time
from webapp.models import OrderLog, Strategy
from webapp.services import kill_switch
from webapp.state_machine import RUNNING, Status

log = logging.getLogger("engine.recovery")


@dataclass
class Report:
    rebuilt: list[int] = field(default_factory=list)
    rescheduled: list[str] = field(default_factory=list)
    sent_now: list[str] = field(default_factory=list)
    missed: list[int] = field(default_factory=list)


def reconcile() -> Report:
    report = Report()
    conn = redis_client.current()
    running = list(db.session.scalars(select(Strategy).where(Strategy.status.in_([s.value for s in RUNNING]))))
    switches = kill_switch.active()
    halted = {s.user_id for s in switches}  # None in it: a global switch
    for strategy in running:
        with conn.lock(runtime_lock(strategy.id), timeout=30, blocking_timeout=5):
            db.session.refresh(strategy)
            if Status(strategy.status) in RUNNING and strategy.run_date:
                _reconcile_one(conn, strategy, report, None in halted or strategy.user_id in halted)
    if report.rebuilt or report.rescheduled or report.sent_now or report.missed:
        log.warning("recovery acted", extra={"event": "recovery", "rebuilt": report.rebuilt,
                                             "rescheduled": report.rescheduled, "sent_now": report.sent_now,
                                             "missed_entry": report.missed})
    return report


def _reconcile_one(conn, strategy: Strategy, report: Report, halted: bool) -> None:  # type: ignore[no-untyped-def]
    run = date.fromisoformat(strategy.run_date)
    if halted:
        # Running under an engaged kill switch (a START that raced the switch): stop it now.
        dispatch.enqueue(conn, [Event.for_run(KILL, strategy.id, run)])
        report.sent_now.append(f"{strategy.id}:{KILL}")
        return
    live_status = conn.hget(runtime_key(strategy.id), "status")
    if not conn.exists(strategy_key(strategy.id)) or live_status != strategy.status.encode():
        # Missing, or drifted from the database (e.g. the engine committed but its Redis update failed):
        # the listener must see what the database says, or an open position's stop-loss goes unwatched.
        runtime.activate(conn, strategy)
        report.rebuilt.append(strategy.id)
    now = clock.now()
    grace = current_app.config["MISSED_ENTRY_GRACE_SECONDS"]
    wanted = [(SELL, instant(run, parse_time(strategy.sell_time)))]
    if strategy.status == Status.WAITING_ENTRY:
        wanted.insert(0, (BUY, instant(run, parse_time(strategy.buy_time))))
    for kind, at in wanted:
        event = Event.for_run(kind, strategy.id, run, at)
        if schedule.scheduled_at(conn, strategy.id, kind) is not None or _attempted(event.event_id):
            continue  # still registered, or already acted on (the engine owns it from there)
        if at > now:
            schedule.register(conn, event, at)
            report.rescheduled.append(event.event_id)
        elif kind == SELL or (now - at).total_seconds() <= grace:
            if kind == SELL and strategy.status != Status.IN_POSITION:
                continue  # nothing to close: the missed BUY decides this run
            dispatch.enqueue(conn, [event])
            report.sent_now.append(event.event_id)
        else:
            dispatch.enqueue(conn, [Event.for_run(STOP, strategy.id, run, reason="missed entry: the system was "
                                                  f"down at the buy time {strategy.buy_time} IST")])
            report.missed.append(strategy.id)


def _attempted(event_id: str) -> bool:
    return db.session.scalar(select(OrderLog.id).where(OrderLog.event_id == event_id).limit(1)) is not None
