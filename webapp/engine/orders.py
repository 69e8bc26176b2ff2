"""Placing one event's order, safely (DESIGN.md section 6, invariants 1, 5, 6 and 8):
- The intent row is the claim. It is inserted already claimed (status SENDING, the lock's token as holder)
  and committed before the broker hears of the order; (event_id, attempt) is unique, so only one holder
  can ever claim an attempt. Right before the broker call the holder checks that its strategy lock is
  still its own. A result is recorded only where the row's holder is still the recorder.
- A row left SENDING by another holder (its lock lost, its worker dead) is not trusted either way: once
  its claim is older than any placement call can take, the order is looked up by tag; found, it is taken
  over and followed; not found, the row is NOT_PLACED and a new attempt may be made.
- A placement that got no usable answer (timeout, reset, HTTP 5xx) is looked up by tag before anything is
  placed again. A follow-up error (order status) is never a "no": the order is followed until
  ORDER_CONFIRM_TIMEOUT, time spent waiting for the rate limiter not counted.
- Accepted is not filled: the order is followed to a final state by pushed updates, polling as the fallback.
- A LIMIT order (an entry, or the exit at sell time, of a strategy whose order type is LIMIT) left unfilled
  for its wait is modified to MARKET: a follow-up call on the same order, retried on a failure and never a
  second placement; a refusal (Kite's answer once the order is COMPLETE) means the order is final already, and
  it is followed as any other. One that cannot be turned to MARKET (the modification keeps failing, the session
  expires) and is still working at the end is cancelled, so that it cannot fill later unwatched: its final state
  then (what filled is the position) or, when it can be neither cancelled nor confirmed, OrderUnknown. An order
  found by tag is followed by its own order type (a found LIMIT gets its wait and its modification), not by the
  request rebuilt from today's strategy. What filled is the position, whichever way it filled."""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Callable

from flask import current_app
from redis.exceptions import RedisError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from webapp import clock, instruments, keys, metrics, redis_client
from webapp.brokers import (
    Broker,
    BrokerAuthFailed,
    BrokerError,
    BrokerTimeout,
    BrokerUnavailable,
    OrderRejected,
    OrderRequest,
    OrderState,
    updates,
)
from webapp.brokers.base import FINAL_STATUSES, LIMIT, MARKET, OrderNotCancellable, OrderNotModifiable
from webapp.brokers.ratelimit import time_waited
from webapp.engine import lateness
from webapp.engine.events import BUY, SELL, Event
from webapp.engine.locks import Held, Locks
from webapp.extensions import db
from webapp.models import OrderLog, Strategy, utcnow

log = logging.getLogger("engine.orders")

RESOLVED = FINAL_STATUSES
# Rows whose order the broker may have without our knowing its final state.
IN_DOUBT = frozenset({"SENDING", "TIMEOUT"})
# How long a placement call can take at most (the client's timeout) and a margin: past it, a SENDING row's
# holder is surely no longer sending, and a look-up by tag is the truth.
CLAIM_MARGIN_SECONDS = 3.0
# The price step a LIMIT is rounded to when the instrument's own is not known (Kite's NSE equity tick).
TICK = Decimal("0.05")
# The events whose order follows the strategy's order type: the entry and the exit at sell time. A STOPLOSS,
# TARGET, STOP or KILL is always MARKET: an exit that must happen now may not wait on a limit.
ORDER_TYPE_FOLLOWS_STRATEGY = frozenset({BUY, SELL})
# How many times a LIMIT order left working is asked to be cancelled (a 500, a timeout or a 429 is tried again;
# a cancellation is idempotent), all within ORDER_CONFIRM_TIMEOUT.
CANCEL_ATTEMPTS = 3


class OrderFailed(Exception):
    """The broker could not take the order after every attempt; nothing was placed."""


class MarketShut(OrderFailed):
    """The order's market no longer takes it (closed, or past the MIS cut-off): nothing was sent."""


class OrderUnknown(Exception):
    """We cannot tell whether the broker has the order, or how much of it filled. Never guess: stop and tell
    a human."""


class LoginRequired(OrderFailed):
    pass


class SessionLost(OrderUnknown, LoginRequired):
    """The broker took the order, then refused the session before its fill was known: the order may fill.
    Both a login to ask for and a position nobody can vouch for (never "failed, nothing held")."""


class LockLost(Exception):
    """This process no longer holds the strategy's lock: another holder acts for it now. Nothing is sent."""


def event_done(kind: str, rows: list[OrderLog]) -> bool:
    """The event has had its final answer. An exit is done only when its last order filled all it asked
    for: one that filled part, or nothing (refused, cancelled), leaves a position still to be sold."""
    resolved = [row for row in rows if row.status in RESOLVED]
    if not resolved:
        return False
    return kind == BUY or (resolved[-1].filled_quantity or 0) >= resolved[-1].quantity


def rows_for(event_id: str) -> list[OrderLog]:
    return list(db.session.scalars(select(OrderLog).where(OrderLog.event_id == event_id).order_by(OrderLog.attempt)
                                   .execution_options(populate_existing=True)))


def _ctx(event: Event, strategy: Strategy, **more: object) -> dict:
    return {"strategy_id": strategy.id, "user_id": strategy.user_id, "event_id": event.event_id,
            "tag": event.tag, **more}


def request_for(strategy: Strategy, event: Event, side: str, quantity: int) -> OrderRequest:
    """The order for this event: MARKET with Kite's market protection, or, for the entry and the exit at sell
    time of a LIMIT strategy, a LIMIT at limit_price() from the last price (MARKET when no price is known)."""
    config = current_app.config
    request = OrderRequest(strategy.exchange, strategy.symbol, side, quantity, strategy.product, event.tag,
                           market_protection=config["MARKET_PROTECTION"],
                           algo_id=strategy.algo_id or config["KITE_ALGO_ID"] or None)
    if event.event not in ORDER_TYPE_FOLLOWS_STRATEGY or (strategy.order_type or MARKET).upper() != LIMIT:
        return request  # STOPLOSS, TARGET, STOP and KILL exits never wait: always MARKET
    last, tick = _last_price(strategy)
    if last is None:
        log.warning("no last price to set a limit from: sent as MARKET", extra=_ctx(event, strategy))
        return request
    buffer = limit_buffer_pct(strategy)
    return replace(request, order_type=LIMIT, price=limit_price(side, last, buffer, tick))


def limit_buffer_pct(strategy: Strategy) -> Decimal:
    if strategy.limit_buffer_pct is not None:
        return Decimal(str(strategy.limit_buffer_pct))
    return Decimal(str(current_app.config["LIMIT_BUFFER_PCT"]))


def limit_wait_seconds(strategy: Strategy) -> float:
    if strategy.limit_wait_seconds is not None:
        return float(strategy.limit_wait_seconds)
    return float(current_app.config["LIMIT_WAIT_SECONDS"])


def limit_price(side: str, last: Decimal, buffer_pct: Decimal, tick: Decimal = TICK) -> Decimal:
    """A marketable limit: `buffer_pct` percent beyond the last price in the trader's disfavour (a BUY above
    it, a SELL below it), rounded to the tick in that same direction (up for a BUY, down for a SELL), so
    the rounding never takes the limit back towards the last price."""
    tick = tick if tick and tick > 0 else TICK
    if side == "BUY":
        raw = last * (1 + buffer_pct / 100)
        steps = (raw / tick).to_integral_value(rounding=ROUND_CEILING)
    else:
        raw = last * (1 - buffer_pct / 100)
        steps = max((raw / tick).to_integral_value(rounding=ROUND_FLOOR), Decimal(1))
    return (steps * tick).quantize(Decimal("0.01"))


def _last_price(strategy: Strategy) -> tuple[Decimal | None, Decimal]:
    """The instrument's last price as the listener stored it, else (paper mode only: its prices are made up)
    the paper catalogue's; and its tick."""
    paper = current_app.config["BROKER"] != "kite"
    known = instruments.lookup(strategy.exchange, strategy.symbol) if paper else None
    tick = known.tick_size if known is not None else TICK
    try:
        raw = redis_client.current().get(keys.last_price(strategy.exchange, strategy.symbol))
    except RedisError as exc:
        log.warning("last price unreadable", extra={"strategy_id": strategy.id, "error": str(exc)})
        raw = None
    if raw:
        return Decimal(raw.decode()), tick
    return (known.last_price if known is not None and known.last_price > 0 else None), tick


def claim(strategy: Strategy, event: Event, request: OrderRequest, attempt: int, held: Held) -> OrderLog:
    """The claimed intent row (the caller commits it, before any broker call)."""
    row = OrderLog(strategy_id=strategy.id, user_id=strategy.user_id, event=event.event, event_id=event.event_id,
                   side=request.side, quantity=request.quantity, tag=event.tag, status="SENDING", attempt=attempt,
                   holder=held.token, claimed_at=utcnow())
    db.session.add(row)
    return row


def _fence(locks: Locks, held: Held) -> bool:
    """Whether the lock is still this holder's, right before a broker call. While Redis cannot answer it
    is asked again, for as long as the lock would live; after that the answer is no: nothing is sent, the
    attempt is NOT_PLACED, and recovery resends the event once Redis is back."""
    deadline = time.monotonic() + current_app.config["LOCK_TIMEOUT_SECONDS"]
    pause = 0.1
    while True:
        try:
            return all(locks.still_held([held]))
        except RedisError as exc:
            if time.monotonic() >= deadline:
                log.error("lock cannot be checked: not sending", extra={"strategy_id": held.strategy_id,
                                                                        "error": str(exc)})
                return False
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def _swap(row: OrderLog, holder: str, **values: object) -> bool:
    """Compare-and-set on the row's holder and status: True when this caller changed it."""
    result = db.session.execute(update(OrderLog).where(
        OrderLog.id == row.id, OrderLog.holder == row.holder, OrderLog.status == row.status,
    ).values(holder=holder, updated_at=utcnow(), **values))
    return result.rowcount == 1


def final_values(row: OrderLog, state: OrderState, note: str | None = None) -> dict:
    """The row's columns from the broker's final answer."""
    return {"broker_order_id": state.order_id or row.broker_order_id, "status": state.status,
            "filled_quantity": state.filled_quantity, "price": state.average_price,
            "error": "; ".join(x for x in (note, state.message) if x) or None}


def record(row: OrderLog, values: dict, held: Held) -> bool:
    """Sets the row from final_values, if this holder still owns it (the caller commits it together with
    the strategy's new state). False: another holder took the event over."""
    if not _swap(row, held.token, **values):
        return False
    for name, value in values.items():
        setattr(row, name, value)
    row.holder = held.token
    return True


def _mark(row: OrderLog, held: Held, status: str, error: str) -> None:
    """An attempt's non-final outcome, committed at once (it decides what a later attempt may do)."""
    if _swap(row, held.token, status=status, error=error):
        row.status, row.error, row.holder = status, error, held.token
    db.session.commit()


def _release_connection() -> None:
    """Ends the session's transaction, giving its connection back to the pool: nothing holds a database
    connection while it waits on the broker, or a pool of 15 would cap the orders in flight at 15."""
    if db.session().in_transaction():
        db.session.commit()


def follow(broker: Broker, order_id: str, event: Event, strategy: Strategy,
           request: OrderRequest | None = None, order_type: str | None = None) -> OrderState:
    """Accepted is not filled: wait for the order's final state, pushed (postback, ticker, paper fill)
    or, when no push comes, polled. A LIMIT order still working after its wait (unfilled, or filled in part)
    is turned into a MARKET order first (_to_market), and then followed as any other. `order_type`: the order's
    own type as the broker reported it (an order found by tag); it wins over the request's, which may have been
    rebuilt since the order was placed."""
    config = current_app.config
    kind = order_type or (request.order_type if request is not None else MARKET)
    watch = updates.watch(redis_client.current())
    waiter = watch.expect(order_id)
    try:
        if kind == LIMIT:
            protection = request.market_protection if request is not None else config["MARKET_PROTECTION"]
            limit = request.price if request is not None and request.order_type == LIMIT else None
            return _follow_limit(broker, watch, waiter, order_id, event, strategy, protection, limit)
        return _confirm(broker, watch, waiter, order_id, event, strategy)
    except BrokerAuthFailed as exc:
        raise SessionLost(f"order {order_id} was placed, then the broker session expired before its fill was "
                          f"known ({exc}); it may have filled") from exc
    finally:
        watch.done(order_id)


def _confirm(broker: Broker, watch: updates.Watch, waiter: updates.Waiter, order_id: str, event: Event,
             strategy: Strategy) -> OrderState:
    """The order's final state within ORDER_CONFIRM_TIMEOUT, else OrderUnknown."""
    timeout = current_app.config["ORDER_CONFIRM_TIMEOUT"]
    state = _await(broker, watch, waiter, order_id, event, strategy, timeout)
    if state is None:
        raise OrderUnknown(f"order {order_id} did not reach a final state within {timeout:.0f} s")
    return state


def _follow_limit(broker: Broker, watch: updates.Watch, waiter: updates.Waiter, order_id: str, event: Event,
                  strategy: Strategy, market_protection: float, limit: Decimal | None) -> OrderState:
    """A LIMIT order: its wait, then its modification to MARKET, then followed as any order. One the
    modification did not reach (it kept failing until its deadline, or the session expired) that is still
    working once followed is cancelled (_cancel): a LIMIT must not stay open at the broker, where it could fill
    later with no stop watching it."""
    config = current_app.config
    wait = limit_wait_seconds(strategy)
    try:
        state = _await(broker, watch, waiter, order_id, event, strategy, wait, limiter_excluded=False)
        if state is not None:
            return state
        why = _to_market(broker, order_id, event, strategy, market_protection, limit, wait)
        if why is not None:  # still a LIMIT: followed as it is (its limit may yet be reached)
            state = _await(broker, watch, waiter, order_id, event, strategy, config["ORDER_CONFIRM_TIMEOUT"])
            if state is not None:
                return state
            why += f"; not final {config['ORDER_CONFIRM_TIMEOUT']:.0f} s later"
    except BrokerAuthFailed as exc:
        why = f"not turned to MARKET: the broker session expired ({exc})"
    if why is not None:
        return _cancel(broker, watch, waiter, order_id, event, strategy, why)
    return _confirm(broker, watch, waiter, order_id, event, strategy)  # modified (or final): as any order


def _await(broker: Broker, watch: updates.Watch, waiter: updates.Waiter, order_id: str, event: Event,
           strategy: Strategy, within: float, limiter_excluded: bool = True) -> OrderState | None:
    """The order's final state, or None once `within` seconds have passed without one (time spent waiting
    for the rate limiter not counted, unless limiter_excluded is False)."""
    started, limiter_before = time.monotonic(), time_waited()

    def spent() -> float:
        wall = time.monotonic() - started
        return wall - (time_waited() - limiter_before) if limiter_excluded else wall

    pause = current_app.config["ORDER_PUSH_WAIT_SECONDS"] if watch.pushes_flowing() else 0.1
    while True:
        if waiter.event.wait(max(0.01, min(pause, within - spent()))):
            return waiter.state
        try:
            state = broker.order_status(order_id)
            if state.final:
                return state
        except BrokerUnavailable as exc:  # a follow-up error is not a "no": keep following
            log.warning("order status unavailable, following on", extra=_ctx(event, strategy, error=str(exc),
                                                                              broker_order_id=order_id))
        if spent() >= within:
            return None
        pause = min(pause * 2, 1.0)


def _to_market(broker: Broker, order_id: str, event: Event, strategy: Strategy, market_protection: float,
               limit: Decimal | None, waited: float) -> str | None:
    """Modifies a LIMIT order left working after its wait to MARKET, with the market protection Kite asks of
    every MARKET order: what filled stays, the rest fills at market. A follow-up call, never a placement:
    a failure (HTTP 500, a timeout) is tried again, and it is idempotent; between tries, and after a refusal
    (Kite refuses to modify an order that is COMPLETE, CANCELLED or REJECTED: a fill raced the
    modification), the order's state is read and a final one ends it. Returns None once the order is modified
    or final; past ORDER_CONFIRM_TIMEOUT, why it is not (the caller follows the order as it is, then cancels
    it). A session that expires raises BrokerAuthFailed."""
    config = current_app.config
    deadline = time.monotonic() + config["ORDER_CONFIRM_TIMEOUT"]
    pause = 0.1
    failure = "no answer"
    log.info("limit order unfilled after its wait: turning it to MARKET", extra=_ctx(
        event, strategy, broker_order_id=order_id, limit=str(limit) if limit is not None else None, waited_s=waited))
    while True:
        try:
            broker.modify_to_market(order_id, market_protection)
            log.info("limit order modified to MARKET", extra=_ctx(event, strategy, broker_order_id=order_id,
                                                                   market_protection=market_protection))
            return None
        except OrderNotModifiable as exc:
            failure = f"modification refused: {exc}"
            log.info("modification refused: reading the order's state", extra=_ctx(
                event, strategy, broker_order_id=order_id, error=str(exc)))
        except BrokerUnavailable as exc:
            failure = f"modification failed: {exc}"
            log.warning("modification to MARKET failed: trying again", extra=_ctx(
                event, strategy, broker_order_id=order_id, error=str(exc)))
        try:
            state = broker.order_status(order_id)
        except BrokerUnavailable:
            state = None
        if state is not None and state.final:
            log.info("order already final: following it", extra=_ctx(
                event, strategy, broker_order_id=order_id, status=state.status, filled=state.filled_quantity))
            return None
        if time.monotonic() >= deadline:
            log.error("limit order not turned to MARKET: following it as it is", extra=_ctx(
                event, strategy, broker_order_id=order_id, error=failure))
            return (f"not turned to MARKET within {config['ORDER_CONFIRM_TIMEOUT']:.0f} s (last: {failure})")
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


def _cancel(broker: Broker, watch: updates.Watch, waiter: updates.Waiter, order_id: str, event: Event,
            strategy: Strategy, why: str) -> OrderState:
    """Cancels a LIMIT order that could not be turned to MARKET and is still working (Kite: cancel_order,
    DELETE /orders/regular/{order_id}), so that it cannot fill later unwatched. A follow-up call: a failure
    (HTTP 500, a timeout, a 429) is tried again, up to CANCEL_ATTEMPTS times, and after each try, a refusal
    too (Kite refuses to cancel an order that is final already), the order's state is read. Its final state
    (CANCELLED with what filled, or COMPLETE: a fill raced the cancel) is returned: the position is what the
    broker filled. Neither cancelled nor confirmed within ORDER_CONFIRM_TIMEOUT: OrderUnknown, for a human."""
    deadline = time.monotonic() + current_app.config["ORDER_CONFIRM_TIMEOUT"]
    pause = 0.1
    outcome = "not tried"
    log.warning("limit order not turned to MARKET and still working: cancelling it", extra=_ctx(
        event, strategy, broker_order_id=order_id, reason=why))
    for attempt in range(1, CANCEL_ATTEMPTS + 1):
        answered = expired = False
        try:
            broker.cancel_order(order_id)
            outcome, answered = "cancel accepted", True
            log.info("cancel accepted: reading the order's state", extra=_ctx(
                event, strategy, broker_order_id=order_id, attempt=attempt))
        except OrderNotCancellable as exc:
            outcome, answered = f"cancel refused: {exc}", True
            log.info("cancel refused: reading the order's state", extra=_ctx(
                event, strategy, broker_order_id=order_id, attempt=attempt, error=str(exc)))
        except BrokerUnavailable as exc:
            outcome = f"cancel failed: {exc}"
            log.warning("cancel failed: reading the order's state", extra=_ctx(
                event, strategy, broker_order_id=order_id, attempt=attempt, error=str(exc)))
        except BrokerAuthFailed as exc:
            outcome, expired = f"cancel impossible, the broker session expired: {exc}", True
            log.error("cancel impossible: the broker session expired", extra=_ctx(
                event, strategy, broker_order_id=order_id, attempt=attempt, error=str(exc)))
        left = max(0.0, deadline - time.monotonic())
        # An answered cancel gets its share of the time left to show its result; a failed one, one read.
        within = left / (CANCEL_ATTEMPTS - attempt + 1) if answered or attempt == CANCEL_ATTEMPTS else 0.0
        try:
            state = _await(broker, watch, waiter, order_id, event, strategy, within)
        except BrokerAuthFailed as exc:
            state, expired = None, True
            outcome += f"; its state cannot be read: {exc}"
        if state is not None:
            log.info("limit order final after its cancellation", extra=_ctx(
                event, strategy, broker_order_id=order_id, status=state.status, filled=state.filled_quantity,
                price=str(state.average_price)))
            if state.status == "CANCELLED" and not state.message:
                state = replace(state, message=f"cancelled by the engine: the LIMIT was {why}")
            return state
        if expired or time.monotonic() >= deadline:
            break
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 1.0)
    log.error("limit order neither cancelled nor confirmed: it may still be open at the broker", extra=_ctx(
        event, strategy, broker_order_id=order_id, reason=why, error=outcome))
    raise OrderUnknown(f"LIMIT order {order_id} {why}, and could not be cancelled or its cancellation confirmed "
                       f"({outcome}): it may still be open at the broker")


def _look_up(broker: Broker, event: Event, strategy: Strategy, known: set[str]) -> OrderState | None:
    """The event's order at the broker that no row records yet (an exit's earlier partial fill has its own
    row), or None."""
    try:
        found = [o for o in broker.orders_by_tag(event.tag) if o.order_id not in known]
    except BrokerError as exc:
        raise OrderUnknown(f"could not check the broker for order tag {event.tag}: {exc}") from exc
    log.info("looked up order by tag", extra=_ctx(event, strategy, found=len(found)))
    return found[-1] if found else None


def _settle_doubt(broker: Broker, event: Event, strategy: Strategy, row: OrderLog, held: Held,
                  rows: list[OrderLog]) -> OrderState | None:
    """An attempt that may be at the broker: its order if found (the row taken over), else the row is
    marked NOT_PLACED and None returned."""
    if row.status == "SENDING" and row.holder != held.token:
        ready_at = row.claimed_at + timedelta(seconds=current_app.config["KITE_TIMEOUT_SECONDS"]
                                              + CLAIM_MARGIN_SECONDS)
        while utcnow() < ready_at:  # its holder may still be mid-call: wait until it surely is not
            if held.lost.is_set():
                raise LockLost(f"strategy {strategy.id}: lock lost while waiting on another holder's attempt")
            time.sleep(min(0.2, (ready_at - utcnow()).total_seconds()))
    _release_connection()
    found = _look_up(broker, event, strategy, {r.broker_order_id for r in rows if r.broker_order_id})
    if found is not None:
        if not _swap(row, held.token):
            raise LockLost(f"attempt {row.attempt} of {event.event_id} was taken over meanwhile")
        db.session.commit()
        row.holder = held.token
        return found
    _mark(row, held, "NOT_PLACED", f"{row.error or 'no answer'} (not found by tag)")
    return None


def execute(broker: Broker, strategy: Strategy, event: Event, request: OrderRequest, held: Held, locks: Locks,
            fresh: OrderLog | None = None, tell: Callable[[str], None] | None = None,
            ) -> tuple[OrderState, OrderLog, str | None]:
    """The event's order, placed at most once and followed to its final state. `fresh`: an attempt row this
    holder claimed and committed, to send at once; otherwise the careful path first settles any attempt in
    doubt. A BUY has ORDER_ATTEMPTS; an exit keeps trying, its pauses growing to EXIT_RETRY_MAX_SECONDS, until
    something fills or its market shuts, and `tell` is called once, after its first failed attempt, so the
    user knows. Returns the final state, its row (not yet recorded: see record()) and a note for the row.
    Raises OrderFailed, LoginRequired, OrderUnknown, LockLost."""
    config = current_app.config
    is_exit = event.event != BUY
    row = fresh
    while True:
        if row is None:
            rows = rows_for(event.event_id)
            for doubt in [r for r in rows if r.status in IN_DOUBT]:
                found = _settle_doubt(broker, event, strategy, doubt, held, rows)
                if found is not None:
                    # Followed by its own order type: the request was rebuilt from today's strategy (MARKET
                    # when no price is known now) and may not be what was placed.
                    state = found if found.final else follow(broker, found.order_id, event, strategy, request,
                                                             order_type=found.order_type)
                    return state, doubt, "found by tag after an unanswered attempt"
            attempts = len(rows)
            if attempts >= config["ORDER_ATTEMPTS"] and not is_exit:
                raise OrderFailed(f"{request.side} failed after {attempts} attempts: "
                                  f"{rows[-1].error if rows else 'no attempt made'}")
            if attempts:
                request = request_for(strategy, event, request.side, request.quantity)  # a LIMIT at today's price
                if is_exit and tell is not None and _failed_attempts(rows) == 1 and not rows[-1].filled_quantity:
                    tell(f"Exit not done yet ({rows[-1].error or rows[-1].status}): trying again until it is, "
                         f"or until the market shuts for {strategy.product}.")
                time.sleep(retry_pause(attempts))
            late = lateness.missed_entry(event, config["MISSED_ENTRY_GRACE_SECONDS"])
            if late:  # checked last, after any pause
                raise OrderFailed(late)
            shut = market_shut(strategy)
            if shut:
                raise MarketShut(shut)
            row = claim(strategy, event, request, attempts + 1, held)
            try:
                db.session.commit()
            except IntegrityError:
                db.session.rollback()  # another holder claimed this attempt: it acts now, unless we still hold
                row = None
                if not _fence(locks, held):
                    raise LockLost(f"strategy {strategy.id}: lock lost to another holder") from None
                continue
        if not _fence(locks, held):
            _mark(row, held, "NOT_PLACED", "lock not proven ours before sending: not sent")
            raise LockLost(f"strategy {strategy.id}: lock lost before sending attempt {row.attempt}")
        _release_connection()
        state = _send(broker, strategy, event, request, row, held)
        if state is not None and is_exit and state.final and not state.filled_quantity:
            # Refused, or cancelled with nothing filled: the position is still open, so this exit is not done.
            if not record(row, final_values(row, state), held):
                raise LockLost(f"attempt {row.attempt} of {event.event_id} was taken over meanwhile")
            db.session.commit()
            log.warning("exit attempt filled nothing: trying again", extra=_ctx(event, strategy, attempt=row.attempt,
                                                                                status=state.status,
                                                                                error=state.message))
            state = None
        if state is not None:
            return state, row, None
        row = None


def retry_pause(attempts: int) -> float:
    """The pause before attempt `attempts + 1`: ORDER_RETRY_BACKOFF, then doubling up to EXIT_RETRY_MAX_SECONDS."""
    config = current_app.config
    backoff = config["ORDER_RETRY_BACKOFF"]
    if attempts <= len(backoff):
        return backoff[attempts - 1]
    return min(backoff[-1] * 2 ** (attempts - len(backoff)), config["EXIT_RETRY_MAX_SECONDS"])


def _failed_attempts(rows: list[OrderLog]) -> int:
    return sum(1 for row in rows if not row.filled_quantity)


def market_shut(strategy: Strategy) -> str | None:
    config = current_app.config
    return lateness.market_shut(strategy.product, config["TRADING_CALENDAR"], config["MIS_CUTOFF"])


def _send(broker: Broker, strategy: Strategy, event: Event, request: OrderRequest, row: OrderLog,
          held: Held) -> OrderState | None:
    """One placement on a claimed row: its final state, or None when the broker did not take it (the row
    then says whether it surely did not, ERROR, or may have, TIMEOUT)."""
    log.info("placing order", extra=_ctx(event, strategy, side=request.side, quantity=request.quantity,
                                          attempt=row.attempt, order_type=request.order_type,
                                          **({"limit": str(request.price)} if request.order_type == LIMIT else {})))
    try:
        order_id = broker.place_order(request)
    except OrderRejected as exc:
        return OrderState("", "REJECTED", event.tag, message=str(exc))
    except BrokerAuthFailed as exc:
        _mark(row, held, "ERROR", str(exc))
        raise LoginRequired(f"broker login required: {exc}") from exc
    except BrokerUnavailable as exc:
        in_doubt = isinstance(exc, BrokerTimeout)
        _mark(row, held, "TIMEOUT" if in_doubt else "ERROR", str(exc))
        log.warning("order placement " + ("got no usable answer" if in_doubt else "failed"),
                    extra=_ctx(event, strategy, attempt=row.attempt, error=str(exc)))
        return None
    placed = time.monotonic()
    metrics.observe(metrics.ORDER_PHASE_SECONDS, max(0.0, (clock.now() - event.instant).total_seconds()),
                    metrics.TRIGGER_TO_PLACED, event.event)
    row.broker_order_id = order_id
    state = follow(broker, order_id, event, strategy, request)
    metrics.observe(metrics.ORDER_PHASE_SECONDS, time.monotonic() - placed, metrics.PLACED_TO_FINAL, event.event)
    log.info("order final", extra=_ctx(event, strategy, broker_order_id=order_id, status=state.status,
                                       filled=state.filled_quantity, price=str(state.average_price),
                                       attempt=row.attempt))
    return state
