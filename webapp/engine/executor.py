"""The execution engine's one entry point: handle an event for a strategy, under that strategy's lock,
by the state machine. Paper and live run every line of this; only the Broker differs."""
from __future__ import annotations

import logging
import time

from flask import current_app
from redis.exceptions import LockError

from webapp import clock, redis_client
from webapp.brokers import Broker, get_broker
from webapp.engine import runtime, schedule
from webapp.engine.events import BUY, KILL, SELL, STOP, STOPLOSS, Event
from webapp.engine.orders import (
    DuplicateDelivery,
    LoginRequired,
    OrderFailed,
    OrderUnknown,
    already_resolved,
    place,
)
from webapp.extensions import db
from webapp.keys import runtime_lock
from webapp.models import AuditEvent, BrokerAccount, Strategy
from webapp.state_machine import Status, can_transition, event_may_act

log = logging.getLogger("engine")

EXIT_STATUS = {SELL: Status.COMPLETED, STOPLOSS: Status.STOPPED_LOSS, STOP: Status.STOPPED, KILL: Status.KILLED}
LOCK_WAIT_SECONDS = 30


class LockBusy(Exception):
    pass


def handle(event: Event) -> str:
    """Returns what happened, for the job result and the log."""
    early = (event.instant - clock.now()).total_seconds()
    if early > 0:  # belt and braces: a trigger never acts before its instant
        time.sleep(early)
    conn = redis_client.current()
    lock = conn.lock(runtime_lock(event.strategy_id), timeout=current_app.config["LOCK_TIMEOUT_SECONDS"],
                     blocking_timeout=LOCK_WAIT_SECONDS)
    if not lock.acquire():
        log.critical("strategy lock not acquired", extra=_ids(event))
        raise LockBusy(f"runtime lock for strategy {event.strategy_id} busy for {LOCK_WAIT_SECONDS} s")
    try:
        return _act(event)
    finally:
        try:
            lock.release()
        except LockError:
            log.error("strategy lock expired while acting", extra=_ids(event))


def _ids(event: Event, strategy: Strategy | None = None, **more: object) -> dict:
    ids = {"event": event.event, "strategy_id": event.strategy_id, "event_id": event.event_id}
    if strategy is not None:
        ids["user_id"] = strategy.user_id
    return {**ids, **more}


def _act(event: Event) -> str:
    strategy = db.session.get(Strategy, event.strategy_id, populate_existing=True)
    if strategy is None:
        log.warning("event for a missing strategy dropped", extra=_ids(event))
        return "dropped: no such strategy"
    if already_resolved(event.event_id):
        log.info("duplicate event dropped", extra=_ids(event, strategy))
        return "dropped: duplicate"
    if not event_may_act(event.event, strategy.status):
        log.info("event dropped by the state machine", extra=_ids(event, strategy, status=strategy.status))
        return f"dropped: {event.event} does not act in {strategy.status}"
    log.info("event accepted", extra=_ids(event, strategy, status=strategy.status,
                                          lateness_ms=round((clock.now() - event.instant).total_seconds() * 1000, 2)))
    try:
        if event.event == BUY:
            return _enter(strategy, event)
        if strategy.status == Status.IN_POSITION:
            return _exit(strategy, event)
        strategy.last_action = event.event
        return _finish(strategy, EXIT_STATUS[event.event], _reason(event))
    except DuplicateDelivery as exc:
        log.warning("concurrent delivery dropped", extra=_ids(event, strategy, error=str(exc)))
        return "dropped: concurrent delivery"


def _broker(strategy: Strategy) -> Broker:
    return get_broker(current_app.config["BROKER"], strategy.broker_account_id or 0)


def _enter(strategy: Strategy, event: Event) -> str:
    try:
        placed = place(_broker(strategy), strategy, event, "BUY", strategy.quantity)
    except OrderUnknown as exc:
        return _fail(strategy, event, f"could not confirm the BUY ({exc}); check your broker", position_unknown=True)
    except OrderFailed as exc:
        if isinstance(exc, LoginRequired):
            _mark_login_required(strategy)
        return _fail(strategy, event, str(exc))
    state = placed.state
    if state.status != "COMPLETE" or state.filled_quantity <= 0:
        return _fail(strategy, event, f"BUY {state.status.lower()}: {state.message or 'no reason given'}")
    strategy.status = Status.IN_POSITION.value
    strategy.position = state.filled_quantity
    strategy.entry_price = state.average_price
    strategy.last_action = BUY
    db.session.commit()
    runtime.update(redis_client.current(), strategy, last_price=str(state.average_price))
    log.info("entered position", extra=_ids(event, strategy, quantity=state.filled_quantity,
                                             price=str(state.average_price)))
    return f"bought {state.filled_quantity} @ {state.average_price}"


def _exit(strategy: Strategy, event: Event) -> str:
    held = strategy.position
    try:
        placed = place(_broker(strategy), strategy, event, "SELL", held)
    except OrderUnknown as exc:
        return _fail(strategy, event, f"could not confirm the exit SELL ({exc}); position may be open",
                     position_unknown=True)
    except OrderFailed as exc:
        if isinstance(exc, LoginRequired):
            _mark_login_required(strategy)
        return _fail(strategy, event, f"exit failed, position of {held} still open: {exc}")
    state = placed.state
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


def _reason(event: Event) -> str:
    return {SELL: "sold at sell time", STOPLOSS: f"stop-loss hit at {event.price or 'the stop'}",
            STOP: "stopped by you", KILL: "stopped by the admin kill switch"}[event.event]


def _finish(strategy: Strategy, status: Status, reason: str) -> str:
    if not can_transition(strategy.status, status):
        raise RuntimeError(f"state machine forbids {strategy.status} → {status.value}")
    strategy.status = status.value
    strategy.status_reason = reason
    db.session.commit()
    conn = redis_client.current()
    schedule.cancel(conn, strategy.id)
    runtime.deactivate(conn, strategy)
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
    if strategy.broker_account_id:
        account = db.session.get(BrokerAccount, strategy.broker_account_id)
        if account is not None:
            account.status = "login_required"
            db.session.commit()
