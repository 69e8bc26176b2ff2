"""START and STOP from the web (pipelines 4–5 and 11). START registers the triggers; STOP hands the
strategy to the engine on the priority queue, so squaring off runs through the one engine."""
from __future__ import annotations

import logging

from flask import current_app
from redis.exceptions import RedisError
from webapp import clock, live, redis_client
from webapp.engine import dispatch, runtime, schedule
from webapp.engine.events import BUY, KILL, SELL, STOP, Event
from webapp.extensions import db
from webapp.keys import runtime_lock
from webapp.market_calendar import exchange_date, instant, is_trading_day, next_trading_day, parse_time
from webapp.models import AuditEvent, Run, Strategy, kill_switch_for
from webapp.services import broker_accounts, strategies
from webapp.state_machine import Status, can_transition, is_running

log = logging.getLogger("services.lifecycle")


_RUN_FIELDS = ("status", "run_id", "run_date", "broker_account_id", "position", "entry_price", "exit_price",
               "stop_price", "target_price", "status_reason", "needs_attention", "last_action")


class StartRefused(Exception):
    code = "START_REFUSED"


class NotRunning(Exception):
    code = "NOT_RUNNING"


class EngineUnavailable(Exception):
    """Redis (the engine's transport) cannot be reached: nothing was changed."""

    code = "ENGINE_UNAVAILABLE"

    def __init__(self) -> None:
        super().__init__("The engine is unavailable right now; nothing was changed. Try again shortly.")


def start(strategy: Strategy) -> str:
    """Idempotent: START on a running strategy changes nothing."""
    try:
        return _start(strategy)
    except RedisError as exc:
        log.error("start refused: engine unavailable", extra={"event": "START", "strategy_id": strategy.id,
                                                              "user_id": strategy.user_id, "error": str(exc)})
        raise EngineUnavailable() from exc


def _start(strategy: Strategy) -> str:
    conn = redis_client.current()
    with conn.lock(runtime_lock(strategy.id), timeout=30, blocking_timeout=10):
        db.session.refresh(strategy)
        if is_running(strategy.status):
            return "Already running."
        if strategy.status == Status.FAILED and strategy.needs_attention:  # failed with money at risk
            held = f"a position of {strategy.position}" if strategy.position else "a position that may be open"
            raise StartRefused(f"The last run ended with {held}. Check it at your broker, then acknowledge it on "
                               f"the strategy's page before starting again.")
        halted = kill_switch_for(strategy.user_id)
        if halted is not None:
            raise StartRefused(f"Trading is halted by the admin: {halted.reason}")
        account = broker_accounts.account_for(strategy.user)
        if account is None:
            raise StartRefused("Connect a broker account first.")
        if account.needs_login(clock.now()):
            raise StartRefused("Broker login required: log in with Kite again (sessions end at 06:00 IST), "
                               "then START.")
        calendar = current_app.config["TRADING_CALENDAR"]
        now = clock.now()
        today = exchange_date(now)
        buy_at = instant(today, parse_time(strategy.buy_time))
        sell_at = instant(today, parse_time(strategy.sell_time))
        if not is_trading_day(today, calendar):
            raise StartRefused(f"{today:%a %d %b %Y} is not a trading day. START on "
                               f"{next_trading_day(today, calendar):%a %d %b} before {strategy.buy_time} IST.")
        if now >= buy_at:
            raise StartRefused(f"Today's buy time {strategy.buy_time} IST has passed. START on "
                               f"{next_trading_day(today, calendar):%a %d %b} before {strategy.buy_time} IST.")
        if not can_transition(strategy.status, Status.WAITING_ENTRY):
            raise StartRefused(f"Cannot start from {strategy.status}.")
        late = strategies.mis_cutoff_problems(strategy.product, parse_time(strategy.buy_time),
                                              parse_time(strategy.sell_time))
        if late:  # created before the cut-off setting changed
            raise StartRefused(" ".join(dict.fromkeys(late.values())))

        before = {f: getattr(strategy, f) for f in _RUN_FIELDS}
        closed = close_run(strategy)
        run = Run(strategy_id=strategy.id, run_date=today.isoformat(), direction=strategy.direction)
        db.session.add(run)
        db.session.flush()
        strategy.status = Status.WAITING_ENTRY.value
        strategy.run_id = run.id
        strategy.run_date = today.isoformat()
        strategy.broker_account_id = account.id
        strategy.position = 0
        strategy.entry_price = strategy.exit_price = strategy.stop_price = strategy.target_price = None
        strategy.status_reason = None
        strategy.needs_attention = False
        strategy.stop_requested_at = None
        strategy.last_action = "START"
        db.session.commit()
        triggers = [(Event.for_run(BUY, strategy.id, run.id, buy_at), buy_at),
                    (Event.for_run(SELL, strategy.id, run.id, sell_at), sell_at)]
        try:
            runtime.activate(conn, strategy)
            for event, at in triggers:
                schedule.register(conn, event, at)
        except RedisError:
            # Never leave a strategy "running" without its triggers: undo, and say so.
            for field, value in before.items():
                setattr(strategy, field, value)
            if closed is not None:
                closed.status = closed.reason = None
            db.session.delete(run)
            db.session.commit()
            raise
        if kill_switch_for(strategy.user_id) is not None:
            # The switch was engaged while this START ran: its sweep may have missed us, so stop at once.
            dispatch.enqueue(conn, [Event.for_run(KILL, strategy.id, run.id)])
            raise StartRefused("Trading was halted by the admin while this START ran; it has been stopped.")
    live.notify([strategy])
    log.info("strategy started", extra={"event": "START", "strategy_id": strategy.id, "user_id": strategy.user_id,
                                        "event_ids": [event.event_id for event, _ in triggers],
                                        "buy_at": buy_at.isoformat(), "sell_at": sell_at.isoformat()})
    return f"Running: BUY at {strategy.buy_time} IST, SELL at {strategy.sell_time} IST."


def close_run(strategy: Strategy) -> Run | None:
    """The strategy's last run gets its outcome from the strategy's own columns, which the next run is about
    to reset: while a run is the current one, the strategy says how it ended; afterwards its row does."""
    if strategy.run_id is None:
        return None
    run = db.session.get(Run, strategy.run_id)
    if run is not None and run.status is None:
        run.status, run.reason = strategy.status, strategy.status_reason
        run.stop_price, run.target_price = strategy.stop_price, strategy.target_price
    return run


def request_stop(strategy: Strategy) -> str:
    """The engine squares off any position (one SELL), then halts; triggers are cancelled at once."""
    db.session.refresh(strategy)
    if not is_running(strategy.status):
        raise NotRunning("This strategy is not running.")
    conn = redis_client.current()
    event = Event.for_run(STOP, strategy.id, strategy.run_id)
    strategy.stop_requested_at = clock.now()  # durable first: recovery resends a STOP lost with Redis
    db.session.commit()
    # The STOP is queued before the triggers go: if queueing fails, the strategy keeps its SELL.
    try:
        dispatch.enqueue(conn, [event])
        schedule.cancel(conn, strategy.id)
    except RedisError as exc:
        strategy.stop_requested_at = None  # "nothing was changed", as the user is told
        db.session.commit()
        raise EngineUnavailable() from exc
    log.info("stop requested", extra={"event": "STOP", "strategy_id": strategy.id, "user_id": strategy.user_id,
                                      "event_id": event.event_id})
    if strategy.status == Status.IN_POSITION:
        return f"Stopping: selling {strategy.position} {strategy.symbol} at market first."
    return "Stopping."


class NothingToAcknowledge(Exception):
    code = "NOTHING_TO_ACKNOWLEDGE"


def acknowledge(strategy: Strategy, user_id: int) -> str:
    """A human has checked the flagged position at the broker: the flag is cleared, the position the system
    no longer vouches for is set to 0, and both are audited. Only then may the strategy start again."""
    db.session.refresh(strategy)
    if is_running(strategy.status) or not strategy.needs_attention:
        raise NothingToAcknowledge("There is nothing to acknowledge for this strategy.")
    held = strategy.position
    db.session.add(AuditEvent(actor_user_id=user_id, subject_user_id=strategy.user_id, strategy_id=strategy.id,
                              action="position_acknowledged", severity="warning",
                              detail={"position": held, "run_id": strategy.run_id,
                                      "status_reason": strategy.status_reason}))
    strategy.needs_attention = False
    strategy.position = 0
    strategy.status_reason = (f"You acknowledged the position of {held} left by the last run." if held else
                              "You acknowledged the last run's unconfirmed order.")
    db.session.commit()
    live.notify([strategy])
    log.warning("flagged position acknowledged", extra={"event": "ACK", "strategy_id": strategy.id,
                                                        "user_id": strategy.user_id, "position": held,
                                                        "run_id": strategy.run_id})
    return strategy.status_reason
