"""Placing one order for one event, safely: an intent row is committed before the broker is called,
a timeout is looked up by tag before anything is placed again, and an order is followed to a final
state. Money-safety invariants 1 and 5 (DESIGN.md section 6) live here."""
from __future__ import annotations

import logging
import time
from typing import Callable

from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from webapp.brokers import (
    Broker,
    BrokerAuthFailed,
    BrokerError,
    BrokerTimeout,
    BrokerUnavailable,
    OrderRejected,
    OrderRequest,
    OrderState,
)
from webapp.engine.events import BUY, Event
from webapp.extensions import db
from webapp.models import OrderLog, Strategy, utcnow

log = logging.getLogger("engine.orders")

RESOLVED = frozenset({"COMPLETE", "REJECTED", "CANCELLED"})
# Rows an earlier attempt may have left while the broker might have the order.
AMBIGUOUS = frozenset({"PENDING", "TIMEOUT", "PLACED"})


class OrderFailed(Exception):
    """The broker could not take the order after every attempt; nothing was placed."""


class OrderUnknown(Exception):
    """We cannot tell whether the broker has the order. Never guess: stop and tell a human."""


class LoginRequired(OrderFailed):
    pass


class DuplicateDelivery(Exception):
    """Another worker is placing (or placed) this event's order."""


def rows_for(event_id: str) -> list[OrderLog]:
    return list(db.session.scalars(select(OrderLog).where(OrderLog.event_id == event_id).order_by(OrderLog.attempt)))


def already_resolved(event_id: str) -> bool:
    return any(row.status in RESOLVED for row in rows_for(event_id))


def _ctx(event: Event, strategy: Strategy, **more: object) -> dict:
    return {"strategy_id": strategy.id, "user_id": strategy.user_id, "event_id": event.event_id,
            "tag": event.tag, **more}


def _record(row: OrderLog, state: OrderState, note: str | None = None) -> None:
    """Sets the row from the broker's answer; the caller commits it together with the strategy's new state."""
    row.broker_order_id = state.order_id or row.broker_order_id
    row.status = state.status
    row.price = state.average_price
    row.error = "; ".join(x for x in (note, state.message) if x) or None
    row.updated_at = utcnow()


def _confirm(broker: Broker, order_id: str, event: Event, strategy: Strategy) -> OrderState:
    """Accepted is not filled: follow the order until COMPLETE, REJECTED or CANCELLED."""
    deadline = time.monotonic() + current_app.config["ORDER_CONFIRM_TIMEOUT"]
    pause = 0.02
    while True:
        try:
            state = broker.order_status(order_id)
            if state.final:
                return state
        except BrokerUnavailable as exc:
            log.warning("order status unavailable, retrying", extra=_ctx(event, strategy, error=str(exc)))
        if time.monotonic() >= deadline:
            raise OrderUnknown(f"order {order_id} did not reach a final state within "
                               f"{current_app.config['ORDER_CONFIRM_TIMEOUT']:.0f} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _look_up(broker: Broker, event: Event, strategy: Strategy) -> OrderState | None:
    try:
        found = broker.orders_by_tag(event.tag)
    except BrokerError as exc:
        raise OrderUnknown(f"could not check the broker for order tag {event.tag}: {exc}") from exc
    log.info("looked up order by tag", extra=_ctx(event, strategy, found=len(found)))
    return found[-1] if found else None


def request_for(strategy: Strategy, event: Event, side: str, quantity: int) -> OrderRequest:
    return OrderRequest(strategy.exchange, strategy.symbol, side, quantity, strategy.product, event.tag)


def intent(strategy: Strategy, event: Event, request: OrderRequest, attempt: int) -> OrderLog:
    """The row that must be durable (committed) before the broker hears of the order."""
    row = OrderLog(strategy_id=strategy.id, user_id=strategy.user_id, event=event.event, event_id=event.event_id,
                   side=request.side, quantity=request.quantity, tag=event.tag, status="PENDING", attempt=attempt)
    db.session.add(row)
    return row


def attempt(broker: Broker, strategy: Strategy, event: Event, row: OrderLog, request: OrderRequest) -> OrderState | None:
    """One placement against a committed intent row. Returns the order's final state (the row set but not
    committed), or None when the broker did not take it: the row, committed, then says whether a retry is
    safe (ERROR) or must look up the tag first (TIMEOUT). Raises LoginRequired and OrderUnknown."""
    log.info("placing order", extra=_ctx(event, strategy, side=request.side, quantity=request.quantity,
                                          attempt=row.attempt))
    try:
        order_id = broker.place_order(request)
    except OrderRejected as exc:
        state = OrderState("", "REJECTED", event.tag, message=str(exc))
        _record(row, state)
        return state
    except BrokerAuthFailed as exc:
        row.status, row.error = "ERROR", str(exc)
        db.session.commit()
        raise LoginRequired(f"broker login required: {exc}") from exc
    except BrokerUnavailable as exc:
        timed_out = isinstance(exc, BrokerTimeout)
        row.status, row.error = ("TIMEOUT" if timed_out else "ERROR"), str(exc)
        db.session.commit()
        log.warning("order placement " + ("timed out" if timed_out else "failed"),
                    extra=_ctx(event, strategy, attempt=row.attempt, error=str(exc)))
        return None
    row.broker_order_id = order_id
    state = _confirm(broker, order_id, event, strategy)
    _record(row, state)
    log.info("order final", extra=_ctx(event, strategy, broker_order_id=order_id, status=state.status,
                                       price=str(state.average_price), attempt=row.attempt))
    return state


def place(broker: Broker, strategy: Strategy, event: Event, request: OrderRequest,
          keep_alive: Callable[[], None] = lambda: None) -> OrderState:
    """The careful path, after a first attempt failed or when earlier attempts exist (a redelivery, a
    crash): looks up by tag whenever the broker may have the order, and places again only when it does
    not, up to ORDER_ATTEMPTS in all. At most one order reaches the broker for an event."""
    prior = rows_for(event.event_id)
    attempts = len(prior)
    ambiguous = next((row for row in reversed(prior) if row.status in AMBIGUOUS), None)
    last_error = prior[-1].error if prior else "no attempt made"
    max_attempts = current_app.config["ORDER_ATTEMPTS"]
    backoff = current_app.config["ORDER_RETRY_BACKOFF"]
    while True:
        keep_alive()
        if ambiguous is not None:
            found = _look_up(broker, event, strategy)
            if found is not None:
                state = found if found.final else _confirm(broker, found.order_id, event, strategy)
                _record(ambiguous, state, "found by tag after an unanswered attempt")
                return state
            ambiguous.status = "NOT_PLACED"
            ambiguous.error = f"{ambiguous.error or 'no answer'} (not found by tag)"
            db.session.commit()
            ambiguous = None
        if attempts >= max_attempts:
            raise OrderFailed(f"{request.side} failed after {attempts} attempts: {last_error}")
        late = (utcnow() - event.instant).total_seconds()
        if event.event == BUY and attempts and late > current_app.config["MISSED_ENTRY_GRACE_SECONDS"]:
            # A BUY resent long after its time (its worker died, recovery found no order): the same rule as
            # a missed trigger. Entering late is a trade the user did not ask for.
            raise OrderFailed(f"missed entry: the BUY was not placed within "
                              f"{current_app.config['MISSED_ENTRY_GRACE_SECONDS']:.0f} s of the buy time")
        if attempts:
            time.sleep(backoff[min(attempts - 1, len(backoff) - 1)])
        attempts += 1
        row = intent(strategy, event, request, attempts)
        try:
            db.session.commit()
        except IntegrityError as exc:
            db.session.rollback()
            raise DuplicateDelivery(f"attempt {attempts} of {event.event_id} is already recorded") from exc
        state = attempt(broker, strategy, event, row, request)
        if state is not None:
            return state
        last_error = row.error or "no answer"
        if row.status == "TIMEOUT":
            ambiguous = row
