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
- A position whose last price is at or beyond its stop-loss with no STOPLOSS of this run recorded: the
  stop-loss is fired (a breach whose event was lost with Redis, or a tick the listener never saw).
- An MIS position still open MIS_SQUARE_OFF_LEAD_SECONDS before the MIS cut-off: squared off (its SELL is
  sent now); after the cut-off nothing is sent, and the engine flags it for a human.
- A trigger whose time passed while nothing was scheduled: a late BUY within the grace window still runs,
  later the run stops with "missed entry"; a late SELL runs at once, closing being the safe side.
Runs when the scheduler starts and periodically after."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from flask import current_app
from sqlalchemy import select

from webapp import clock, live, redis_client
from webapp.engine import dispatch, exits, lateness, runtime, schedule
from webapp.engine.events import BUY, KILL, SELL, STOP, STOPLOSS, Event
from webapp.engine.orders import event_done
from webapp.extensions import db
from webapp.keys import last_price as last_price_key, runtime as runtime_key, runtime_lock, strategy as strategy_key
from webapp.market_calendar import exchange_date, format_time, instant, last_order_time, parse_time
from webapp.models import AuditEvent, OrderLog, Strategy, active_kill_switches
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
    stops_fired: list[str] = field(default_factory=list)
    squared_off: list[str] = field(default_factory=list)
    busy: list[int] = field(default_factory=list)

    def acted(self) -> bool:
        return bool(self.rebuilt or self.rescheduled or self.sent_now or self.missed or self.resumed or self.corrupt
                    or self.stops_fired or self.squared_off)


@dataclass
class Snapshot:
    """What Redis and the order log say about one running strategy, read in bulk for a whole round."""
    has_static: bool
    fields: dict[str, str]
    registered: set[str]  # trigger kinds still registered with the scheduler
    attempts: dict[str, list[OrderLog]]  # this strategy's order-log rows by event id
    last_price: Decimal | None = None  # the symbol's last tick the listener stored
    static_run: str = ""  # the run id in the strategy's static hash (the listener builds event ids from it)


Action = tuple  # ("kill", event) ("rebuild",) ("corrupt", problem, fields) ("send", event, report list)
#               ("register", event, at) ("missed", stop event)


def reconcile() -> Report:
    """One round. Everything is read in bulk (a few round trips and one query, however many strategies
    run) and a plan worked out for each; only a strategy whose plan is not empty is locked, read again
    and acted on, so a quiet round costs little even at 09:15 with thousands running."""
    report = Report()
    conn = redis_client.current()
    running = list(db.session.scalars(select(Strategy).where(Strategy.status.in_([s.value for s in RUNNING]),
                                                             Strategy.run_date.is_not(None),
                                                             Strategy.run_id.is_not(None))))
    halted_users = {s.user_id for s in active_kill_switches()}  # None in it: a global switch
    now = clock.now()
    snapshots = _snapshots(conn, running)
    for strategy in running:
        halted = None in halted_users or strategy.user_id in halted_users
        if not _plan(strategy, snapshots[strategy.id], now, halted):
            continue
        lock = conn.lock(runtime_lock(strategy.id), timeout=30)
        if not lock.acquire(blocking=False):
            report.busy.append(strategy.id)  # the engine is acting on it (or a dead worker's lock has not expired)
            continue
        try:
            db.session.refresh(strategy)  # under the lock, the plan is made again from a fresh read
            if Status(strategy.status) in RUNNING:
                for action in _plan(strategy, _snapshots(conn, [strategy])[strategy.id], clock.now(), halted):
                    _act(conn, strategy, action, report)
        finally:
            lock.release()
    if report.acted():
        log.warning("recovery acted", extra={"event": "recovery", "rebuilt": report.rebuilt,
                                             "rescheduled": report.rescheduled, "sent_now": report.sent_now,
                                             "missed_entry": report.missed, "resumed": report.resumed,
                                             "corrupt": report.corrupt, "stops_fired": report.stops_fired,
                                             "squared_off": report.squared_off})
    return report


def _snapshots(conn, strategies: list[Strategy]) -> dict[int, Snapshot]:  # type: ignore[no-untyped-def]
    pipe = conn.pipeline(transaction=False)
    for strategy in strategies:
        pipe.exists(strategy_key(strategy.id))
        pipe.hgetall(runtime_key(strategy.id))
        for kind in (BUY, SELL):
            schedule.scheduled_at(pipe, strategy.id, kind)
        pipe.get(last_price_key(strategy.exchange, strategy.symbol))
        pipe.hget(strategy_key(strategy.id), "run_id")
    replies = pipe.execute()
    rows: dict[int, dict[str, list[OrderLog]]] = {s.id: {} for s in strategies}
    ids = list(rows)
    for first in range(0, len(ids), 5000):
        for row in db.session.scalars(select(OrderLog).where(OrderLog.strategy_id.in_(ids[first:first + 5000]))
                                      .order_by(OrderLog.attempt)):
            rows[row.strategy_id].setdefault(row.event_id, []).append(row)
    snapshots = {}
    for n, strategy in enumerate(strategies):
        has_static, fields, buy_at, sell_at, tick, static_run = replies[6 * n:6 * n + 6]
        snapshots[strategy.id] = Snapshot(
            bool(has_static), {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()},
            {kind for kind, at in ((BUY, buy_at), (SELL, sell_at)) if at is not None}, rows[strategy.id],
            _decimal(tick), static_run.decode(errors="replace") if static_run else "")
    return snapshots


def _plan(strategy: Strategy, snap: Snapshot, now: datetime, halted: bool) -> list[Action]:
    """What recovery must do for this strategy now: the rules, in one place."""
    day, run = date.fromisoformat(strategy.run_date), strategy.run_id
    if halted:
        # Running under an engaged kill switch (a START that raced the switch): stop it now.
        return [("kill", Event.for_run(KILL, strategy.id, run))]
    actions: list[Action] = []
    if not snap.has_static and not snap.fields:
        actions.append(("rebuild",))  # wiped: rebuilt from the database
    else:
        problem = corruption(strategy, snap.has_static, snap.fields)
        if problem:
            return [("corrupt", problem, snap.fields)]
        if snap.static_run != str(run) or any(name not in snap.fields for name in runtime.LEVEL_FIELDS):
            # Written before runs existed (or by an earlier run): the listener cannot name this run's
            # STOPLOSS from it, so it would not watch the stop; or before exit levels existed. Rebuilt from
            # the database.
            actions.append(("rebuild",))
    this_run = f":{run}"
    for event_id, attempts in snap.attempts.items():
        if event_id.endswith(this_run) and not event_done(attempts[0].event, attempts) \
                and event_may_act(attempts[0].event, strategy.status):
            # Attempted, never answered: its worker died. The engine looks the tag up before placing again.
            # A BUY keeps its buy time, so the engine will not enter late if the order is not found.
            at = instant(day, parse_time(strategy.buy_time)) if attempts[0].event == BUY else None
            actions.append(("send", Event.for_run(attempts[0].event, strategy.id, run, at), "resumed"))
    if strategy.stop_requested_at is not None and \
            (now - strategy.stop_requested_at).total_seconds() >= current_app.config["RECONCILE_SECONDS"]:
        # Still running a round after the user's STOP: its queued event was lost (e.g. with Redis). Again.
        stop = Event.for_run(STOP, strategy.id, run, reason=strategy.stop_reason)
        if stop.event_id not in snap.attempts:
            return actions + [("send", stop, "resumed")]
    if strategy.status == Status.IN_POSITION:
        actions += _exits_due(strategy, snap, now, run)
    grace = current_app.config["MISSED_ENTRY_GRACE_SECONDS"]
    wanted = [(SELL, instant(day, parse_time(strategy.sell_time)))]
    if strategy.status == Status.WAITING_ENTRY:
        wanted.insert(0, (BUY, instant(day, parse_time(strategy.buy_time))))
    for kind, at in wanted:
        event = Event.for_run(kind, strategy.id, run, at)
        if kind in snap.registered or event.event_id in snap.attempts:
            continue  # still registered, or already acted on (the engine owns it from there)
        if at > now:
            actions.append(("register", event, at))
        elif kind == SELL or not lateness.missed_entry(event, grace, now):
            if kind == SELL and strategy.status != Status.IN_POSITION:
                continue  # nothing to close: the missed BUY decides this run
            actions.append(("send", event, "sent_now"))
        else:
            actions.append(("missed", Event.for_run(STOP, strategy.id, run, reason=(
                f"missed entry: the system was down at the buy time {strategy.buy_time} IST"))))
    return actions


def _exits_due(strategy: Strategy, snap: Snapshot, now: datetime, run: int) -> list[Action]:
    """A breached stop with no STOPLOSS of this run recorded, and an MIS position the cut-off is about to
    catch: exits that must go now. An event already attempted is the engine's (resumed above if unfinished)."""
    # The stop in force: the listener's trailed one (it only tightens) over the one resolved at entry.
    stop = runtime.stop_in_force(snap.fields, strategy.direction) or strategy.stop_price or strategy.stop_loss
    breached = snap.last_price is not None and exits.stop_hit(strategy.direction, float(snap.last_price), float(stop))
    stoploss = Event.for_run(STOPLOSS, strategy.id, run, price=str(snap.last_price))
    if breached and stoploss.event_id not in snap.attempts:
        log.warning("stop-loss breached with no exit recorded: firing", extra={
            "event": STOPLOSS, "strategy_id": strategy.id, "event_id": stoploss.event_id,
            "price": str(snap.last_price), "stop": str(stop)})
        return [("send", stoploss, "stops_fired")]
    config = current_app.config
    cutoff = last_order_time(strategy.product, config["TRADING_CALENDAR"], parse_time(config["MIS_CUTOFF"]))
    square_off_at = instant(exchange_date(now), cutoff) - timedelta(seconds=config["MIS_SQUARE_OFF_LEAD_SECONDS"])
    sell = Event.for_run(SELL, strategy.id, run, reason=f"squared off before the MIS cut-off {format_time(cutoff)} IST")
    if strategy.product == "MIS" and now >= square_off_at and not any(
            event_id.endswith(f":{run}") for event_id, rows in snap.attempts.items() if rows[0].event != BUY):
        return [("send", sell, "squared_off")]
    return []


_fired_at: dict[str, float] = {}  # breached stops this process fired, by event id: not one per round


def _fire_due(event_id: str) -> bool:
    now = time.monotonic()
    if now - _fired_at.get(event_id, float("-inf")) < current_app.config["STOPLOSS_REFIRE_MAX_SECONDS"]:
        return False
    _fired_at[event_id] = now
    return True


def _decimal(raw: bytes | None) -> Decimal | None:
    try:
        return Decimal(raw.decode()) if raw else None
    except (InvalidOperation, UnicodeDecodeError):
        return None


def _act(conn, strategy: Strategy, action: Action, report: Report) -> None:  # type: ignore[no-untyped-def]
    kind = action[0]
    if kind == "rebuild":
        runtime.activate(conn, strategy)
        report.rebuilt.append(strategy.id)
    elif kind == "corrupt":
        _stop_corrupt(conn, strategy, action[1], action[2])
        report.corrupt.append(strategy.id)
    elif kind == "register":
        schedule.register(conn, action[1], action[2])
        report.rescheduled.append(action[1].event_id)
    else:  # kill, send, missed: an event for the engine
        if kind == "send" and action[2] == "stops_fired" and not _fire_due(action[1].event_id):
            return  # fired lately: the engine has it, or the listener fires it again while still breached
        dispatch.enqueue(conn, [action[1]])
        if kind == "missed":
            report.missed.append(strategy.id)
        else:
            getattr(report, action[2] if kind == "send" else "sent_now").append(action[1].event_id)


def corruption(strategy: Strategy, has_static: bool, fields: dict[str, str]) -> str | None:
    """What is wrong with a running strategy's Redis state against its database row, or None."""
    if not has_static or not fields:
        return "half of its Redis keys are missing"
    missing = [name for name in runtime.STATE_FIELDS if name not in fields]
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


def _stop_corrupt(conn, strategy: Strategy, problem: str, fields: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    reason = (f"Stopped by recovery: its live state was corrupt ({problem}). The database's record was kept"
              + (f" and its position of {strategy.position} squared off." if strategy.position else "."))
    log.critical("runtime corrupt: stopping the strategy", extra={
        "event": "runtime_corrupt", "strategy_id": strategy.id, "user_id": strategy.user_id, "problem": problem,
        "database_status": strategy.status, "database_position": strategy.position})
    db.session.add(AuditEvent(subject_user_id=strategy.user_id, strategy_id=strategy.id, action="runtime_corrupt",
                              severity="critical", detail={
                                  "problem": problem, "runtime": fields,
                                  "database": {"status": strategy.status, "position": strategy.position}}))
    strategy.needs_attention = True
    strategy.status_reason = reason
    db.session.commit()
    # The database's view goes back into Redis first, so the listener guards the real position until the
    # STOP has squared it off.
    runtime.activate(conn, strategy)
    dispatch.enqueue(conn, [Event.for_run(STOP, strategy.id, strategy.run_id, reason=reason)])
    live.notify([strategy])
