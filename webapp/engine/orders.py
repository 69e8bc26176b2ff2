"""Placing one order for one event, safely: an intent row is committed before the broker is called,
a timeout is looked up by tag before anything is placed again, and an order is followed to a final
state. Money-safety invariants 1 and 5 (DESIGN.md section 6) live here."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

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
from webapp.engine.events import Event
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


@dataclass
class Placement:
    state: OrderState
    row: OrderLog


def rows_for(event_id: str) -> list[OrderLog]:
    return list(db.session.scalars(select(OrderLog).where(OrderLog.event_id == event_id).order_by(OrderLog.attempt)))


def already_resolved(event_id: str) -> bool:
    return any(row.status in RESOLVED for row in rows_for(event_id))


def _ctx(event: Event, strategy: Strategy, **more: object) -> dict:
    return {"strategy_id": strategy.id, "user_id": strategy.user_id, "event_id": event.event_id,
            "tag": event.tag, **more}


def _record(row: OrderLog, state: OrderState, note: str | None = None) -> None:
    row.broker_order_id = state.order_id
    row.status = state.status
    row.price = state.average_price
    row.error = "; ".join(x for x in (note, state.message) if x) or None
    row.updated_at = utcnow()
    db.session.commit()


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


def place(broker: Broker, strategy: Strategy, event: Event, side: str, quantity: int) -> Placement:
    """At most one order reaches the broker for an event, whatever is retried or redelivered."""
    request = OrderRequest(strategy.exchange, strategy.symbol, side, quantity, strategy.product, event.tag)
    prior = rows_for(event.event_id)
    attempt = len(prior)
    ambiguous = next((row for row in reversed(prior) if row.status in AMBIGUOUS), None)
    max_attempts = current_app.config["ORDER_ATTEMPTS"]
    backoff = current_app.config["ORDER_RETRY_BACKOFF"]
    last_error = "no attempt made"

    while True:
        if ambiguous is not None:
            found = _look_up(broker, event, strategy)
            if found is not None:
                state = found if found.final else _confirm(broker, found.order_id, event, strategy)
                _record(ambiguous, state, "found by tag after an unanswered attempt")
                return Placement(state, ambiguous)
            ambiguous.status, ambiguous.error = "NOT_PLACED", (ambiguous.error or "") + " (not found by tag)"
            db.session.commit()
            ambiguous = None
        if attempt >= max_attempts:
            raise OrderFailed(f"{side} failed after {attempt} attempts: {last_error}")

        attempt += 1
        row = OrderLog(strategy_id=strategy.id, user_id=strategy.user_id, event=event.event, event_id=event.event_id,
                       side=side, quantity=quantity, tag=event.tag, status="PENDING", attempt=attempt)
        db.session.add(row)
        try:
            db.session.commit()  # the intent is durable before the broker hears of it
        except IntegrityError as exc:
            db.session.rollback()
            raise DuplicateDelivery(f"attempt {attempt} of {event.event_id} is already recorded") from exc
        log.info("placing order", extra=_ctx(event, strategy, side=side, quantity=quantity, attempt=attempt))
        try:
            order_id = broker.place_order(request)
        except OrderRejected as exc:
            _record(row, OrderState("", "REJECTED", event.tag, message=str(exc)))
            return Placement(OrderState("", "REJECTED", event.tag, message=str(exc)), row)
        except BrokerAuthFailed as exc:
            row.status, row.error = "ERROR", str(exc)
            db.session.commit()
            raise LoginRequired(f"broker login required: {exc}") from exc
        except BrokerTimeout as exc:
            row.status, row.error, last_error = "TIMEOUT", str(exc), str(exc)
            db.session.commit()
            log.warning("order placement timed out", extra=_ctx(event, strategy, attempt=attempt, error=str(exc)))
            ambiguous = row
        except BrokerUnavailable as exc:
            row.status, row.error, last_error = "ERROR", str(exc), str(exc)
            db.session.commit()
            log.warning("order placement failed", extra=_ctx(event, strategy, attempt=attempt, error=str(exc)))
        else:
            row.broker_order_id, row.status = order_id, "PLACED"
            db.session.commit()
            state = _confirm(broker, order_id, event, strategy)
            _record(row, state)
            log.info("order final", extra=_ctx(event, strategy, broker_order_id=order_id, status=state.status,
                                               price=str(state.average_price), attempt=attempt))
            return Placement(state, row)
        if attempt < max_attempts:
            time.sleep(backoff[min(attempt - 1, len(backoff) - 1)])
