"""The execution engine's one entry point: handle events, each under its own strategy's lock, by the state
machine. Paper and live run every line of this; only the Broker differs.

Events come in batches (a batch of one is the ordinary case; the 09:15 herd arrives as a thousand
triggers in one second). The batch is prepared together, in one transaction: its locks taken in one
round trip, its strategies and earlier attempts read in one query, every intent row claimed in one commit
before any broker call. Then every order is in flight at once, each on a thread of its own (the broker
answers in 30–100 ms and fills in hundreds: waiting, not CPU, sets the pace; the kiteconnect client is
synchronous, so threads, not asyncio), and each strategy's new state is committed and published the
moment its own order is final. One account's failure fails only that account's strategies."""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from flask import Flask, current_app
from sqlalchemy import select, update
from redis.exceptions import RedisError
from sqlalchemy.exc import IntegrityError

from webapp import clock, live, metrics, redis_client
from webapp.brokers import Broker, BrokerAuthFailed, BrokerError, OrderState, get_broker
from webapp.engine import exits, lateness, notices, runtime, schedule
from webapp.engine.events import BUY, FAIL, KILL, SELL, STOP, STOPLOSS, TARGET, Event
from webapp.engine.committer import STRATEGY_RESULT, Result, committer
from webapp.engine.locks import Held, Locks, locks
from webapp.engine.orders import (
    LockLost,
    LoginRequired,
    MarketShut,
    OrderFailed,
    OrderUnknown,
    claim,
    event_done,
    execute,
    final_values,
    market_shut,
    record,
    request_for,
)
from webapp.extensions import db
from webapp.models import AuditEvent, BrokerAccount, Notification, OrderLog, Strategy
from webapp.state_machine import RUNNING, TERMINAL, Status, can_transition, event_may_act

log = logging.getLogger("engine")

EXIT_STATUS = {SELL: Status.COMPLETED, STOPLOSS: Status.STOPPED_LOSS, TARGET: Status.TARGET_HIT, STOP: Status.STOPPED,
               KILL: Status.KILLED}
LOCK_WAIT_SECONDS = 30
FLAGGED = "flagged_strategies"  # session.info: other strategies this unit of work changed, to publish after commit
NOTICES = "notices"  # session.info: notification rows (notices.row) to write with this unit of work's result
PARTIAL = "partial"  # an exit that filled part of the position: the rest is tried again
PUBLISH_RETRIES = (0.05, 0.2, 1.0, None)  # pauses between tries of the Redis update after a commit
PREPARE_CHUNK = 50  # events prepared (one query, one commit) before their orders are handed to the pool


@dataclass
class Work:
    """An order to place on a thread of its own: a fresh claimed attempt (row) or the careful path. The
    strategy and row come detached from the preparing session, already read: the thread needs no database
    connection before its broker call (a pool of connections shared by hundreds of threads was measured
    holding each order back ~0.3 s)."""
    event: Event
    strategy: Strategy
    held: Held
    row: OrderLog | None


_pool: ThreadPoolExecutor | None = None
_slots: threading.BoundedSemaphore | None = None
_pool_guard = threading.Lock()


def _submit(fn: Callable[[Flask, Any], str], app: Flask, item: Any) -> None:
    """Onto a thread of the process's pool; blocks while every thread is busy (back-pressure on the queue)."""
    global _pool, _slots
    with _pool_guard:
        if _pool is None:
            _pool = ThreadPoolExecutor(app.config["ORDER_THREADS"], thread_name_prefix="order")
            _slots = threading.BoundedSemaphore(app.config["ORDER_THREADS"])
    _slots.acquire()
    _pool.submit(fn, app, item).add_done_callback(lambda _: _slots.release())


def warm_up(app: Flask) -> None:
    """At worker start, before the 09:15 herd needs them: every order thread started, Redis connections
    open and the live emitter made. Made during the herd, each costs milliseconds of CPU at the worst
    moment (measured: a third of the herd's first second)."""
    ready = threading.Barrier(app.config["ORDER_THREADS"] + 1)

    def start(app: Flask, _: None) -> str:
        with app.app_context():
            redis_client.current().ping()
        ready.wait()
        return "warm"

    live.warm_up()
    for _ in range(app.config["ORDER_THREADS"]):
        _submit(start, app, None)
    ready.wait()


def _locks() -> Locks:
    return locks(redis_client.current(), current_app.config["LOCK_TIMEOUT_SECONDS"])


def accept(events: list[Event]) -> list[str]:
    """Takes a batch from the queue: prepares it here, then hands every order to the pool and returns, so
    the worker takes its next job (the next user's STOP, the next batch) while these orders are in flight.
    Returns what happened to each event so far, in order, for the job result and the log. A process that
    dies with orders in flight has their claimed intent rows in the database: recovery resends those
    events, and the careful path finds each order by tag."""
    lateness.wait_until_due(events)
    app = current_app._get_current_object()
    held = _locks().try_many(list(dict.fromkeys(e.strategy_id for e in events)))
    first, later, seen = [], [], set()
    for event in events:
        # A busy strategy (or a second event for one) waits its turn on a thread, not holding up the rest.
        (first if event.strategy_id in held and event.strategy_id not in seen else later).append(event)
        seen.add(event.strategy_id)
    outcomes: dict[str, str] = {}
    for start in range(0, len(first), PREPARE_CHUNK):  # the first orders leave while the rest are prepared
        try:
            done, work = _prepare(first[start:start + PREPARE_CHUNK], held)
        except Exception:
            # The keeper would renew these locks for as long as the process lives: nothing could act for
            # these strategies again, recovery included. Give back every lock not yet handed to a thread.
            db.session.rollback()
            for event in first[start:]:
                _locks().release(held[event.strategy_id])
            raise
        outcomes.update(done)
        for item in work:
            _submit(_run, app, item)
            outcomes[item.event.event_id] = "placing"
    for event in later:
        _submit(_alone, app, event)
        outcomes[event.event_id] = "waiting for its strategy's lock"
    return [outcomes[e.event_id] for e in events]


def _alone(app: Flask, event: Event) -> str:
    """An event whose strategy is busy: it waits for the lock. An exit waits as long as it takes (it is
    never given up); a BUY only until its lateness rule says it may no longer be placed."""
    with app.app_context():
        while (held := _locks().wait_for(event.strategy_id, LOCK_WAIT_SECONDS)) is None:
            log.critical("strategy lock busy", extra=_ids(event, waited_s=LOCK_WAIT_SECONDS))
            if lateness.missed_entry(event, current_app.config["MISSED_ENTRY_GRACE_SECONDS"]):
                return "dropped: strategy busy past the buy time's grace"
        try:
            outcomes, work = _prepare([event], {event.strategy_id: held})
        except Exception:
            db.session.rollback()
            _locks().release(held)
            raise
        return _run(app, work[0]) if work else outcomes[event.event_id]


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
    if event_done(event.event, rows):
        log.info("duplicate event dropped", extra=_ids(event, strategy))
        return "dropped: duplicate"
    if event.run_id != strategy.run_id:
        log.warning("an earlier run's event dropped", extra=_ids(event, strategy, run_id=strategy.run_id))
        return "dropped: not the strategy's current run"
    if not event_may_act(event.event, strategy.status):
        log.info("event dropped by the state machine", extra=_ids(event, strategy, status=strategy.status))
        return f"dropped: {event.event} does not act in {strategy.status}"
    return None


def _prepare(events: list[Event], held: dict[int, Held]) -> tuple[dict[str, str], list[Work]]:
    """In this thread's session: the verdicts, events that need no order finished, and every fresh
    intent row claimed in one commit. Returns the outcomes so far and the orders to place."""
    if not events:
        return {}, []
    strategies = {s.id: s for s in db.session.scalars(
        select(Strategy).where(Strategy.id.in_({e.strategy_id for e in events}))
        .execution_options(populate_existing=True))}
    prior: dict[str, list[OrderLog]] = defaultdict(list)
    for row in db.session.scalars(select(OrderLog).where(OrderLog.event_id.in_([e.event_id for e in events]))
                                  .order_by(OrderLog.attempt)):
        prior[row.event_id].append(row)

    outcomes: dict[str, str] = {}
    finished: list[Strategy] = []
    fresh: list[tuple[Event, OrderLog]] = []
    careful: list[Event] = []
    grace = current_app.config["MISSED_ENTRY_GRACE_SECONDS"]
    for event in events:
        strategy = strategies.get(event.strategy_id)
        verdict = _verdict(event, strategy, prior[event.event_id])
        if verdict:
            outcomes[event.event_id] = verdict
            continue
        log.info("event accepted", extra=_ids(event, strategy, status=strategy.status, lateness_ms=round(
            (clock.now() - event.instant).total_seconds() * 1000, 2)))
        late = lateness.missed_entry(event, grace) or market_shut(strategy)
        if event.event == FAIL:
            outcomes[event.event_id] = _fail(strategy, event, event.reason or "failed")
        elif event.event != BUY and strategy.status != Status.IN_POSITION:
            strategy.last_action = event.event  # STOP or KILL before entry: nothing to square off
            outcomes[event.event_id] = _finish(strategy, EXIT_STATUS[event.event], _reason(event))
        elif late and not prior[event.event_id]:  # never placed, first attempt included
            outcomes[event.event_id] = _fail(strategy, event, late) if event.event == BUY else \
                _exit_too_late(strategy, event, late)
        elif prior[event.event_id]:
            careful.append(event)  # an earlier attempt exists: find out before acting again
            continue
        else:
            request = request_for(strategy, event, *_order_for(event, strategy))
            fresh.append((event, claim(strategy, event, request, 1, held[event.strategy_id])))
            continue
        finished.append(strategy)
    try:
        db.session.commit()  # every claim is durable before any broker call
    except IntegrityError:
        db.session.rollback()  # another holder claimed one of these: decide again; that one goes the careful way
        db.session.info.pop(FLAGGED, None)
        return _prepare(events, held)
    _publish(finished, db.session.info.pop(FLAGGED, []))
    for event in events:
        if event.event_id in outcomes:
            _locks().release(held[event.strategy_id])
    work = [Work(event, strategies[event.strategy_id], held[event.strategy_id], row) for event, row in fresh]
    work += [Work(event, strategies[event.strategy_id], held[event.strategy_id], None) for event in careful]
    for item in work:
        db.session.expunge(item.strategy)
        if item.row is not None:
            db.session.expunge(item.row)
    return outcomes, work


def _run(app: Flask, work: Work) -> str:
    """One event's order on its own thread, session and commit."""
    with app.app_context():
        try:
            return _place(work)
        except Exception:  # noqa: BLE001 — logged here; the lock is released and recovery looks again
            log.exception("event failed unexpectedly", extra=_ids(work.event))
            db.session.rollback()
            return "error: see the log"
        finally:
            _locks().release(work.held)


def _place(work: Work) -> str:
    event, strategy, row = work.event, work.strategy, work.row
    while True:
        request = request_for(strategy, event, *_order_for(event, strategy))
        try:
            state, row, note = execute(_broker(strategy), strategy, event, request, work.held, _locks(), row,
                                       tell=lambda message: _tell(strategy, message))
        except LockLost as exc:
            db.session.rollback()
            log.error("lock lost: this holder stops acting", extra=_ids(event, strategy, error=str(exc)))
            return "dropped: lock lost"
        except BrokerAuthFailed as exc:  # no usable session stored for this account
            metrics.inc(metrics.ORDERS, event.event, metrics.FAILED)
            outcome = _failed(strategy, event, LoginRequired(str(exc)))
        except MarketShut as exc:
            metrics.inc(metrics.ORDERS, event.event, metrics.FAILED)
            outcome = _failed(strategy, event, exc) if event.event == BUY else _exit_too_late(strategy, event, str(exc))
        except (OrderFailed, OrderUnknown) as exc:
            metrics.inc(metrics.ORDERS, event.event, metrics.UNKNOWN if isinstance(exc, OrderUnknown) else metrics.FAILED)
            outcome = _failed(strategy, event, exc)
        except Exception as exc:  # noqa: BLE001 — an intent row exists: the order may be at the broker
            log.exception("unexpected error while placing", extra=_ids(event, strategy))
            metrics.inc(metrics.ORDERS, event.event, metrics.UNKNOWN)
            outcome = _failed(strategy, event, OrderUnknown(f"unexpected error: {exc!r}"))
        else:
            metrics.inc(metrics.ORDERS, event.event,
                        metrics.order_outcome(state.status, state.filled_quantity, request.quantity))
            values = final_values(row, state, note)
            outcome = _apply(strategy, event, state)
            if not _commit_result(strategy, row, values, work.held, release=outcome != PARTIAL):
                log.error("attempt taken over by another holder", extra=_ids(event, strategy))
                return "dropped: taken over"
            if outcome != PARTIAL:
                return outcome
            strategy = db.session.get(Strategy, strategy.id)
            row = None  # an exit filled in part: the rest of the position is sold by a new attempt
            continue
        _attach(strategy)
        db.session.commit()
        _publish([strategy], db.session.info.pop(FLAGGED, []))
        return outcome


def _commit_result(strategy: Strategy, row: OrderLog, values: dict, held: Held, release: bool) -> bool:
    """The row's final state and the strategy's new one, in one transaction, only if this holder still
    owns the row, then published (and the lock given back when `release`). The common case goes through the
    process's group committer, which publishes its whole group in one round trip; a result that also writes
    an audit event or flags other strategies commits in this thread's session."""
    told = db.session.info.pop(NOTICES, [])
    if db.session.new or db.session.info.get(FLAGGED):
        db.session.add_all(Notification(**notice) for notice in told)
        if not record(row, values, held):
            db.session.rollback()
            return False
        _attach(strategy)
        db.session.commit()
        _publish([strategy], db.session.info.pop(FLAGGED, []))
        return True
    result = Result(row.id, held.token, values, strategy.id,
                    {name: getattr(strategy, name) for name in STRATEGY_RESULT}, notices=told,
                    context=(strategy, held, release))
    recorded = committer(current_app._get_current_object(), _committed).commit(result)
    if strategy in db.session:
        db.session.expunge(strategy)  # written by the committer: this session must not write it again
    return recorded


def _committed(results: list[Result]) -> None:
    """After a group commit (the committer's thread): the group's runtime state and locks, in one round trip."""
    _publish([r.context[0] for r in results], [], release=[r.context[1] for r in results if r.context[2]])


def _exit_too_late(strategy: Strategy, event: Event, late: str) -> str:
    """An exit its market no longer takes. Past the MIS cut-off the broker squares MIS positions off itself:
    when its positions say this one is closed, the run ends as squared off by the broker. Anything else
    (the broker cannot say, or the position is still there) is money at risk, flagged for a human."""
    if strategy.product == "MIS" and strategy.broker_account_id is not None:
        try:
            held = _broker(strategy).net_quantity(strategy.exchange, strategy.symbol, strategy.product)
        except BrokerError as exc:
            log.warning("broker positions unavailable", extra=_ids(event, strategy, error=str(exc)))
            held = None
        if held == 0:
            log.warning("position squared off by the broker at the MIS cut-off", extra=_ids(
                event, strategy, position=strategy.position))
            strategy.position, strategy.last_action = 0, event.event
            outcome = _finish(strategy, EXIT_STATUS[event.event], "squared off by the broker at the MIS cut-off "
                                                                  "(its positions show none left)")
            db.session.add(Notification(**notices.exit_filled(strategy, event.event, exits.exit_side(
                strategy.direction), 0, None, strategy.status_reason)))
            return outcome
    return _fail(strategy, event, f"exit not sent ({late}); position of {strategy.position} still open: "
                                  f"check it at your broker")


def _tell(strategy: Strategy, message: str) -> None:
    """Tells the user something while this thread still acts for the strategy (it holds the lock): the
    reason column only, committed and published."""
    strategy.status_reason = message[:255]
    db.session.execute(update(Strategy).where(Strategy.id == strategy.id).values(status_reason=strategy.status_reason))
    db.session.commit()
    _publish([strategy], [])


def _attach(strategy: Strategy) -> None:
    """The detached strategy's result columns onto this session's copy, and nothing else: the web may have
    written other columns meanwhile (a STOP request's time) that a whole-object merge would undo."""
    persistent = db.session.get(Strategy, strategy.id)
    if persistent is not strategy:
        for name in STRATEGY_RESULT:
            setattr(persistent, name, getattr(strategy, name))


def _order_for(event: Event, strategy: Strategy) -> tuple[str, int]:
    """The entry's side follows the direction (a short enters with a SELL); every other event exits."""
    if event.event == BUY:
        return exits.entry_side(strategy.direction), strategy.quantity
    return exits.exit_side(strategy.direction), strategy.position


def _broker(strategy: Strategy) -> Broker:
    return get_broker(current_app.config["BROKER"], strategy.broker_account_id or 0)


def _publish(strategies: list[Strategy], flagged: list[Strategy], release: list[Held] = ()) -> None:
    """Redis after the database, retried briefly: a runtime hash left behind the database would leave a
    position's stop-loss unwatched until recovery's next round. `flagged` are other strategies whose
    attention flag this unit of work set without holding their locks: only that flag is written, never their
    status or position, which another worker may be changing right now. `release`: locks given back in the
    same round trip (their threads are done with them)."""
    if not strategies and not flagged:
        return
    conn = redis_client.current()
    held_locks = _locks()
    for pause in PUBLISH_RETRIES:
        try:
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
            for held in release:
                held_locks.release_in(pipe, held)
            pipe.execute()
            held_locks.released(list(release))
            break
        except RedisError as exc:
            if pause is None:
                log.error("runtime not updated after commit: recovery will rebuild it", extra={
                    "strategy_ids": [s.id for s in strategies], "error": str(exc)})
                return
            time.sleep(pause)
    live.notify(strategies + flagged)


def _apply(strategy: Strategy, event: Event, state: OrderState) -> str:
    """The strategy's new state from the broker's final answer (committed by the caller). The position is
    what the broker filled, whatever the order's final status."""
    filled, message = state.filled_quantity, state.message or "no reason given"
    if event.event == BUY:
        if filled <= 0:
            return _fail(strategy, event, f"BUY {state.status.lower()}: {message}")
        strategy.status = Status.IN_POSITION.value
        strategy.position = filled
        strategy.entry_price = state.average_price
        levels = exits.resolve(strategy, state.average_price)  # % and points stops from the real fill
        strategy.stop_price, strategy.target_price = levels.stop, levels.target
        if levels.stop <= 0:  # points larger than the price (no price was known to refuse them at create)
            strategy.status_reason = (f"The stop-loss resolved to ₹{levels.stop} from the entry at "
                                      f"₹{state.average_price}: no price can reach it, so only the exit at sell "
                                      f"time or your STOP will close this position.")
            log.critical("stop-loss resolved below zero", extra=_ids(event, strategy, stop=str(levels.stop)))
        strategy.last_action = BUY
        if filled < strategy.quantity:
            verb = "Sold short" if strategy.direction == exits.SHORT else "Bought"
            strategy.status_reason = (f"{verb} {filled} of {strategy.quantity}: the exchange cancelled the rest "
                                      f"({message}). The {filled} held are watched by the stop-loss and squared "
                                      f"off at sell time.")
            log.warning("entry partly filled", extra=_ids(event, strategy, quantity=filled, asked=strategy.quantity))
        log.info("entered position", extra=_ids(event, strategy, quantity=filled, price=str(state.average_price),
                                                stop=str(levels.stop), target=str(levels.target)))
        _notice(notices.entry_filled(strategy, exits.entry_side(strategy.direction), filled, state.average_price))
        return f"{'sold short' if strategy.direction == exits.SHORT else 'bought'} {filled} @ {state.average_price}"
    held = strategy.position
    if filled <= 0:
        return _fail(strategy, event, f"exit {exits.exit_side(strategy.direction)} {state.status.lower()} ({message}); "
                                      f"position of {held} still open")
    strategy.position = held - filled
    strategy.exit_price = state.average_price
    strategy.last_action = event.event
    if strategy.position:
        strategy.status_reason = f"Squared off {filled} of {held}; sending the other {strategy.position} again."
        log.warning("exit partly filled", extra=_ids(event, strategy, quantity=filled, held=held))
        return PARTIAL
    log.info("exited position", extra=_ids(event, strategy, quantity=filled, price=str(state.average_price)))
    _finish(strategy, EXIT_STATUS[event.event], _reason(event))
    _notice(notices.exit_filled(strategy, event.event, exits.exit_side(strategy.direction), held, state.average_price,
                                strategy.status_reason))
    verb = "bought back" if strategy.direction == exits.SHORT else "sold"
    return f"{verb} {filled} @ {state.average_price} ({event.event})"


def _failed(strategy: Strategy, event: Event, exc: Exception) -> str:
    if isinstance(exc, LoginRequired):
        _mark_login_required(strategy)
    if isinstance(exc, OrderUnknown):
        side = exits.entry_side(strategy.direction) if event.event == BUY else \
            f"exit {exits.exit_side(strategy.direction)}"
        return _fail(strategy, event, f"could not confirm the {side} ({exc}); check your broker",
                     position_unknown=True)
    if event.event != BUY:
        return _fail(strategy, event, f"exit failed, position of {strategy.position} still open: {exc}")
    return _fail(strategy, event, str(exc))


def _reason(event: Event) -> str:
    if event.reason:
        return event.reason
    return {SELL: "squared off at sell time", STOPLOSS: f"stop-loss hit at {event.price or 'the stop'}",
            TARGET: f"target hit at {event.price or 'the target'}",
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
    db.session.add(notices.failed(strategy, event.event, reason, at_risk))
    level = logging.CRITICAL if at_risk else logging.ERROR
    log.log(level, "strategy failed" + (" with money at risk" if at_risk else ""),
            extra=_ids(event, strategy, reason=reason, position=strategy.position))
    return _finish(strategy, Status.FAILED, reason[:255])


def _notice(notice: dict) -> None:
    """A notification written with this unit of work's result (its transaction, whichever path commits it)."""
    db.session.info.setdefault(NOTICES, []).append(notice)


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
