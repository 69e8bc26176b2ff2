"""The execution engine's one entry point: handle events, each under its strategy's lock, by the state
machine. Paper and live run every line of this; only the Broker differs.

Events come in batches (a batch of one is the ordinary case): the 09:15 herd arrives as a thousand
triggers in one second, and per-job and per-commit costs, not the broker, would then set the pace. So a
batch loads its strategies in one query, commits every intent row in one transaction before any broker
call, and commits every result with its strategy's new state in one more. An event whose first attempt
fails goes down the careful path (orders.place) at once, still under its lock."""
from __future__ import annotations

import logging
import time
from collections import defaultdict

from flask import current_app
from redis.lock import Lock
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from webapp import clock, live, redis_client
from webapp.brokers import Broker, OrderRequest, OrderState, get_broker
from webapp.engine import runtime, schedule
from webapp.engine.events import BUY, FAIL, KILL, SELL, STOP, STOPLOSS, Event
from webapp.engine.orders import (
    RESOLVED,
    DuplicateDelivery,
    LoginRequired,
    OrderFailed,
    OrderUnknown,
    attempt,
    intent,
    place,
    request_for,
)
from webapp.extensions import db
from webapp.keys import runtime_lock
from webapp.models import AuditEvent, BrokerAccount, OrderLog, Strategy
from webapp.state_machine import RUNNING, TERMINAL, Status, can_transition, event_may_act

log = logging.getLogger("engine")

EXIT_STATUS = {SELL: Status.COMPLETED, STOPLOSS: Status.STOPPED_LOSS, STOP: Status.STOPPED, KILL: Status.KILLED}
LOCK_WAIT_SECONDS = 30
FLAGGED = "flagged_strategies"  # session.info: other strategies this unit of work changed, to publish after commit


class LockBusy(Exception):
    pass


def handle(event: Event) -> str:
    return handle_many([event])[0]


def handle_many(events: list[Event]) -> list[str]:
    """Returns what happened to each event, in order, for the job result and the log."""
    early = (max(e.instant for e in events) - clock.now()).total_seconds()
    if early > 0:  # belt and braces: a trigger never acts before its instant
        time.sleep(early)
    conn = redis_client.current()
    ttl = current_app.config["LOCK_TIMEOUT_SECONDS"]
    held: dict[str, Lock] = {}
    later: list[Event] = []
    for event in events:
        lock = conn.lock(runtime_lock(event.strategy_id), timeout=ttl, blocking_timeout=LOCK_WAIT_SECONDS)
        # In a batch, a busy strategy waits its turn after the batch instead of holding the others up.
        if lock.acquire(blocking=len(events) == 1):
            held[event.event_id] = lock
        elif len(events) == 1:
            log.critical("strategy lock not acquired", extra=_ids(event))
            raise LockBusy(f"runtime lock for strategy {event.strategy_id} busy for {LOCK_WAIT_SECONDS} s")
        else:
            later.append(event)
    try:
        outcomes = _act([e for e in events if e.event_id in held], list(held.values()))
    finally:
        for event_id, lock in held.items():
            try:
                lock.release()
            except Exception:  # noqa: BLE001 — an expired lock is logged; the outcome stands
                log.error("strategy lock expired while acting", extra={"event_id": event_id})
    for event in later:
        outcomes[event.event_id] = handle(event)
    return [outcomes[e.event_id] for e in events]


def _ids(event: Event, strategy: Strategy | None = None, **more: object) -> dict:
    ids = {"event": event.event, "strategy_id": event.strategy_id, "event_id": event.event_id}
    if strategy is not None:
        ids["user_id"] = strategy.user_id
    return {**ids, **more}


def _verdict(event: Event, strategy: Strategy | None, rows: list[OrderLog]) -> str | None:
    """Why this event must be dropped, or None when it may act."""
    if strategy is None:
        log.warning("event for a missing strategy dropped", extra=_ids(event))
        return "dropped: no such strategy"
    if any(row.status in RESOLVED for row in rows):
        log.info("duplicate event dropped", extra=_ids(event, strategy))
        return "dropped: duplicate"
    if not event_may_act(event.event, strategy.status):
        log.info("event dropped by the state machine", extra=_ids(event, strategy, status=strategy.status))
        return f"dropped: {event.event} does not act in {strategy.status}"
    return None


def _act(events: list[Event], locks: list[Lock]) -> dict[str, str]:
    if not events:
        return {}
    strategies = {s.id: s for s in db.session.scalars(
        select(Strategy).where(Strategy.id.in_({e.strategy_id for e in events}))
        .execution_options(populate_existing=True))}
    prior: dict[str, list[OrderLog]] = defaultdict(list)
    for row in db.session.scalars(select(OrderLog).where(OrderLog.event_id.in_([e.event_id for e in events]))
                                  .order_by(OrderLog.attempt)):
        prior[row.event_id].append(row)

    outcomes: dict[str, str] = {}
    orders: list[tuple[Event, Strategy]] = []
    careful: list[tuple[Event, Strategy]] = []
    changed: list[Strategy] = []
    for event in events:
        strategy = strategies.get(event.strategy_id)
        verdict = _verdict(event, strategy, prior[event.event_id])
        if verdict:
            outcomes[event.event_id] = verdict
            continue
        log.info("event accepted", extra=_ids(event, strategy, status=strategy.status, lateness_ms=round(
            (clock.now() - event.instant).total_seconds() * 1000, 2)))
        if event.event == FAIL:
            outcomes[event.event_id] = _fail(strategy, event, event.reason or "failed")
            changed.append(strategy)
        elif event.event != BUY and strategy.status != Status.IN_POSITION:
            strategy.last_action = event.event  # STOP or KILL before entry: nothing to square off
            outcomes[event.event_id] = _finish(strategy, EXIT_STATUS[event.event], _reason(event))
            changed.append(strategy)
        elif prior[event.event_id]:
            careful.append((event, strategy))  # an earlier attempt exists: find out before acting again
        else:
            orders.append((event, strategy))

    requests = {e.event_id: request_for(s, e, *_order_for(e, s)) for e, s in orders + careful}
    rows = {e.event_id: intent(s, e, requests[e.event_id], 1) for e, s in orders}
    try:
        db.session.commit()  # every intent is durable before any broker call
    except IntegrityError:
        db.session.rollback()  # another worker is on one of these events: each goes the careful way
        careful, orders, rows = careful + orders, [], {}

    for event, strategy in orders + careful:
        outcome = _execute(event, strategy, requests[event.event_id], rows.get(event.event_id), locks)
        outcomes[event.event_id] = outcome or "dropped: concurrent delivery"
        if outcome:
            changed.append(strategy)

    db.session.commit()  # every result with its strategy's new state
    _publish(changed, db.session.info.pop(FLAGGED, []))
    return outcomes


def _execute(event: Event, strategy: Strategy, request: OrderRequest, row: OrderLog | None,
             locks: list[Lock]) -> str | None:
    """Place the event's order: the first attempt on its committed intent row, and the careful path
    (orders.place) if that fails or if there is no fresh row. None: another worker has this event."""
    broker = _broker(strategy)
    try:
        state = attempt(broker, strategy, event, row, request) if row is not None else None
        if state is None:
            state = place(broker, strategy, event, request, _keep_alive(locks))
    except DuplicateDelivery as exc:
        log.warning("concurrent delivery dropped", extra=_ids(event, strategy, error=str(exc)))
        return None
    except (OrderFailed, OrderUnknown) as exc:
        return _failed(strategy, event, exc)
    except Exception as exc:  # noqa: BLE001 — an intent row exists: the order may be at the broker
        log.exception("unexpected error while placing", extra=_ids(event, strategy))
        return _failed(strategy, event, OrderUnknown(f"unexpected error: {exc!r}"))
    return _apply(strategy, event, state)


def _order_for(event: Event, strategy: Strategy) -> tuple[str, int]:
    return ("BUY", strategy.quantity) if event.event == BUY else ("SELL", strategy.position)


def _keep_alive(locks: list[Lock]):  # type: ignore[no-untyped-def]
    """The careful path can take tens of seconds: keep every lock this batch holds from expiring."""
    def refresh() -> None:
        for lock in locks:
            lock.reacquire()
    return refresh


def _broker(strategy: Strategy) -> Broker:
    return get_broker(current_app.config["BROKER"], strategy.broker_account_id or 0)


def _publish(strategies: list[Strategy], flagged: list[Strategy]) -> None:
    """Redis after the database. `flagged` are other strategies whose attention flag this unit of work set
    without holding their locks: only that flag is written, never their status or position, which another
    worker may be changing right now."""
    conn = redis_client.current()
    pipe = conn.pipeline(transaction=False)
    for strategy in strategies:
        if Status(strategy.status) in TERMINAL:
            schedule.cancel(pipe, strategy.id)
            runtime.deactivate(pipe, strategy)
        else:
            extra = {"last_price": str(strategy.entry_price)} if strategy.last_action == BUY else {}
            runtime.update(pipe, strategy, **extra)
    for other in flagged:
        runtime.flag(pipe, other)
    pipe.execute()
    live.notify(strategies + flagged)


def _apply(strategy: Strategy, event: Event, state: OrderState) -> str:
    """The strategy's new state from the broker's final answer (committed by the caller)."""
    if event.event == BUY:
        if state.status != "COMPLETE" or state.filled_quantity <= 0:
            return _fail(strategy, event, f"BUY {state.status.lower()}: {state.message or 'no reason given'}")
        strategy.status = Status.IN_POSITION.value
        strategy.position = state.filled_quantity
        strategy.entry_price = state.average_price
        strategy.last_action = BUY
        log.info("entered position", extra=_ids(event, strategy, quantity=state.filled_quantity,
                                                 price=str(state.average_price)))
        return f"bought {state.filled_quantity} @ {state.average_price}"
    held = strategy.position
    if state.status != "COMPLETE" or state.filled_quantity <= 0:
        return _fail(strategy, event, f"exit SELL {state.status.lower()} ({state.message or 'no reason given'}); "
                                      f"position of {held} still open")
    strategy.position = held - state.filled_quantity
    strategy.exit_price = state.average_price
    strategy.last_action = event.event
    if strategy.position:
        return _fail(strategy, event, f"exit filled {state.filled_quantity} of {held}; {strategy.position} still open")
    log.info("exited position", extra=_ids(event, strategy, quantity=state.filled_quantity,
                                            price=str(state.average_price)))
    _finish(strategy, EXIT_STATUS[event.event], _reason(event))
    return f"sold {state.filled_quantity} @ {state.average_price} ({event.event})"


def _failed(strategy: Strategy, event: Event, exc: Exception) -> str:
    if isinstance(exc, LoginRequired):
        _mark_login_required(strategy)
    if isinstance(exc, OrderUnknown):
        side = "BUY" if event.event == BUY else "exit SELL"
        return _fail(strategy, event, f"could not confirm the {side} ({exc}); check your broker",
                     position_unknown=True)
    if event.event != BUY:
        return _fail(strategy, event, f"exit failed, position of {strategy.position} still open: {exc}")
    return _fail(strategy, event, str(exc))


def _reason(event: Event) -> str:
    if event.reason:
        return event.reason
    return {SELL: "sold at sell time", STOPLOSS: f"stop-loss hit at {event.price or 'the stop'}",
            STOP: "stopped by you", KILL: "stopped by the admin kill switch"}[event.event]


def _finish(strategy: Strategy, status: Status, reason: str) -> str:
    if not can_transition(strategy.status, status):
        raise RuntimeError(f"state machine forbids {strategy.status} → {status.value}")
    strategy.status = status.value
    strategy.status_reason = reason
    return f"{status.value}: {reason}"


def _fail(strategy: Strategy, event: Event, reason: str, position_unknown: bool = False) -> str:
    """failed is terminal: no further order for this run. An open (or possibly open) position is money
    at risk, so it is flagged loudly for a human."""
    at_risk = position_unknown or strategy.position > 0
    strategy.needs_attention = at_risk
    db.session.add(AuditEvent(subject_user_id=strategy.user_id, strategy_id=strategy.id, action="strategy_failed",
                              severity="critical" if at_risk else "error",
                              detail={"reason": reason, "event_id": event.event_id, "position": strategy.position,
                                      "position_unknown": position_unknown}))
    level = logging.CRITICAL if at_risk else logging.ERROR
    log.log(level, "strategy failed" + (" with money at risk" if at_risk else ""),
            extra=_ids(event, strategy, reason=reason, position=strategy.position))
    return _finish(strategy, Status.FAILED, reason)


def _mark_login_required(strategy: Strategy) -> None:
    """The broker refused the session: no blind retries for anyone on this account. The account says
    "login required", and every other running strategy on it is flagged for its owner."""
    if not strategy.broker_account_id:
        return
    account = db.session.get(BrokerAccount, strategy.broker_account_id)
    if account is None:
        return
    account.status = "login_required"
    others = list(db.session.scalars(select(Strategy).where(
        Strategy.broker_account_id == account.id, Strategy.id != strategy.id,
        Strategy.status.in_([s.value for s in RUNNING]))))
    db.session.info.setdefault(FLAGGED, []).extend(others)  # their runtime (what the status API shows) too
    for other in others:
        other.needs_attention = True
        other.status_reason = "Broker login required: log in with Kite again, or this strategy's orders will fail."
