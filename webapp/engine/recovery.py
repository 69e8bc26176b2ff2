"""Recovery: the database is the truth and Redis may be wiped at any moment. For every strategy the
database says is running, under its lock (a strategy the engine is acting on is left for the next round):
- Redis keys wiped: rebuilt from the database, triggers re-registered.
- Redis keys present but corrupt (unparsable, fields missing, or a status or position that is not the
  database's): a human must look, so the strategy is stopped (squaring off any position, by the database's
  numbers), with a CRITICAL log, an audit event and the reason on the user's page.
- An order event whose intent row exists but never got a final answer (its worker died between the
  broker's accept and the engine's records): sent again; the engine's careful path looks the order up by
  tag before anything is placed, so an order placed just before a crash is found, not doubled.
- A STOP the user asked for (recorded in the database first) that is still not carried out a round later:
  its queued event was lost, so it is sent again.
- A trigger whose time passed while nothing was scheduled: a late BUY within the grace window still runs,
  later the run stops with "missed entry"; a late SELL runs at once, closing being the safe side.
Runs when the scheduler starts and periodically after."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation

from flask import current_app
from sqlalchemy import select

from webapp import clock, live, redis_client
from webapp.engine import dispatch, runtime, schedule
from webapp.engine.events import BUY, KILL, SELL, STOP, Event
from webapp.engine.orders import RESOLVED
from webapp.extensions import db
from webapp.keys import runtime as runtime_key, runtime_lock, strategy as strategy_key
from webapp.market_calendar import instant, parse_time
from webapp.models import AuditEvent, OrderLog, Strategy
from webapp.services import kill_switch
from webapp.state_machine import RUNNING, Status, event_may_act

log = logging.getLogger("engine.recovery")


@dataclass
class Report:
    rebuilt: list[int] = field(default_factory=list)
    rescheduled: list[str] = field(default_factory=list)
    sent_now: list[str] = field(default_factory=list)
    missed: list[int] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    corrupt: list[int] = field(default_factory=list)
    busy: list[int] = field(default_factory=list)

    def acted(self) -> bool:
        return bool(self.rebuilt or self.rescheduled or self.sent_now or self.missed or self.resumed or self.corrupt)


def reconcile() -> Report:
    report = Report()
    conn = redis_client.current()
    running = list(db.session.scalars(select(Strategy).where(Strategy.status.in_([s.value for s in RUNNING]))))
    switches = kill_switch.active()
    halted = {s.user_id for s in switches}  # None in it: a global switch
    for strategy in running:
        lock = conn.lock(runtime_lock(strategy.id), timeout=30)
        if not lock.acquire(blocking=False):
            report.busy.append(strategy.id)  # the engine is acting on it (or a dead worker's lock has not expired)
            continue
        try:
            db.session.refresh(strategy)
            if Status(strategy.status) in RUNNING and strategy.run_date:
                _reconcile_one(conn, strategy, report, None in halted or strategy.user_id in halted)
        finally:
            lock.release()
    if report.acted():
        log.warning("recovery acted", extra={"event": "recovery", "rebuilt": report.rebuilt,
                                             "rescheduled": report.rescheduled, "sent_now": report.sent_now,
                                             "missed_entry": report.missed, "resumed": report.resumed,
                                             "corrupt": report.corrupt})
    return report


def _reconcile_one(conn, strategy: Strategy, report: Report, halted: bool) -> None:  # type: ignore[no-untyped-def]
    run = date.fromisoformat(strategy.run_date)
    if halted:
        # Running under an engaged kill switch (a START that raced the switch): stop it now.
        dispatch.enqueue(conn, [Event.for_run(KILL, strategy.id, run)])
        report.sent_now.append(f"{strategy.id}:{KILL}")
        return
    pipe = conn.pipeline(transaction=False)
    pipe.exists(strategy_key(strategy.id))
    pipe.hgetall(runtime_key(strategy.id))
    has_static, fields = pipe.execute()
    if not has_static and not fields:
        runtime.activate(conn, strategy)  # wiped: rebuilt from the database
        report.rebuilt.append(strategy.id)
    else:
        problem = corruption(strategy, bool(has_static), {k.decode(): v.decode(errors="replace")
                                                          for k, v in fields.items()})
        if problem:
            _stop_corrupt(conn, strategy, run, problem, fields)
            report.corrupt.append(strategy.id)
            return
    for event in _unfinished(strategy, run):
        dispatch.enqueue(conn, [event])
        report.resumed.append(event.event_id)
    now = clock.now()
    if strategy.stop_requested_at is not None and \
            (now - strategy.stop_requested_at).total_seconds() >= current_app.config["RECONCILE_SECONDS"]:
        # Still running a round after the user's STOP: its queued event was lost (e.g. with Redis). Again.
        stop = Event.for_run(STOP, strategy.id, run)
        if not _attempted(stop.event_id):
            dispatch.enqueue(conn, [stop])
            report.resumed.append(stop.event_id)
            return
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


RUNTIME_FIELDS = ("status", "position", "last_action", "entry_price", "updated_at")


def corruption(strategy: Strategy, has_static: bool, fields: dict[str, str]) -> str | None:
    """What is wrong with a running strategy's Redis state against its database row, or None."""
    if not has_static or not fields:
        return "half of its Redis keys are missing"
    missing = [name for name in RUNTIME_FIELDS if name not in fields]
    if missing:
        return f"runtime fields missing: {', '.join(missing)}"
    try:
        status = Status(fields["status"])
        position = int(fields["position"])
        if fields["entry_price"]:
            Decimal(fields["entry_price"])
    except (ValueError, InvalidOperation):
        return "runtime fields unparsable"
    if status != Status(strategy.status):
        return f"runtime status {status.value} but the database says {strategy.status}"
    if position != strategy.position:
        return f"runtime position {position} but the database says {strategy.position}"
    return None


def _stop_corrupt(conn, strategy: Strategy, run: date, problem: str, raw: dict) -> None:  # type: ignore[no-untyped-def]
    reason = (f"Stopped by recovery: its live state was corrupt ({problem}). The database's record was kept"
              + (f" and its position of {strategy.position} squared off." if strategy.position else "."))
    log.critical("runtime corrupt: stopping the strategy", extra={
        "event": "runtime_corrupt", "strategy_id": strategy.id, "user_id": strategy.user_id, "problem": problem,
        "database_status": strategy.status, "database_position": strategy.position})
    db.session.add(AuditEvent(subject_user_id=strategy.user_id, strategy_id=strategy.id, action="runtime_corrupt",
                              severity="critical", detail={
                                  "problem": problem, "runtime": {k.decode(errors="replace"): v.decode(errors="replace")
                                                                  for k, v in raw.items()},
                                  "database": {"status": strategy.status, "position": strategy.position}}))
    strategy.needs_attention = True
    strategy.status_reason = reason
    db.session.commit()
    # The database's view goes back into Redis first, so the listener guards the real position until the
    # STOP has squared it off.
    runtime.activate(conn, strategy)
    dispatch.enqueue(conn, [Event.for_run(STOP, strategy.id, run, reason=reason)])
    live.notify([strategy])


def _unfinished(strategy: Strategy, run: date) -> list[Event]:
    """This run's order events that have attempts but no final answer, and may still act."""
    rows = db.session.scalars(select(OrderLog).where(
        OrderLog.strategy_id == strategy.id, OrderLog.event_id.like(f"%:{run:%Y%m%d}")).order_by(OrderLog.attempt))
    by_event: dict[str, list[OrderLog]] = {}
    for row in rows:
        by_event.setdefault(row.event_id, []).append(row)
    return [Event.for_run(attempts[0].event, strategy.id, run) for attempts in by_event.values()
            if not any(row.status in RESOLVED for row in attempts) and event_may_act(attempts[0].event, strategy.status)]


def _attempted(event_id: str) -> bool:
    return db.session.scalar(select(OrderLog.id).where(OrderLog.event_id == event_id).limit(1)) is not None
