"""START and STOP from the web (pipelines 4–5 and 11). START registers the triggers; STOP hands the
strategy to the engine on the priority queue, so squaring off runs through the one engine.

A strategy with weekdays is deployed by START and undeployed by STOP; the deployer
(webapp/services/deploy.py) begins its runs on its days through the same begin_run(), after the same
start_refusal(), under the same run_lock()."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta

import redis
from flask import current_app
from redis.exceptions import LockError, RedisError
from webapp import clock, live, redis_client
from webapp.engine import dispatch, exits, runtime, schedule
from webapp.engine.events import BUY, KILL, SELL, STOP, Event
from webapp.extensions import db
from webapp.keys import runtime_lock
from webapp.market_calendar import exchange_date, instant, is_trading_day, next_trading_day, parse_time
from webapp.models import AuditEvent, Run, Strategy, kill_switch_for
from webapp.services import broker_accounts, risk, strategies
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


LOGIN_REQUIRED = "Broker login required: log in with Kite again (sessions end at 06:00 IST), then START."


def start_refusal(strategy: Strategy) -> str | None:
    """Why a run of this strategy may not begin now, or None: the one place START and the deployer
    (webapp/services/deploy.py) both ask, holding run_lock(), just before a run begins. A check added here
    (a risk limit, say) refuses START and skips a deployed strategy's day, with this text as the reason."""
    standing = _standing_refusal(strategy)
    if standing:
        return standing
    if broker_accounts.account_for(strategy.user).needs_login(clock.now()):
        return LOGIN_REQUIRED
    return risk.start_refusal(strategy.user, clock.now())  # the day's loss halt, the open-positions cap


def _standing_refusal(strategy: Strategy) -> str | None:
    """What refuses a run whatever the day, so also a deployment whose first run is on a later day (a
    broker session, by contrast, is only needed on the morning of a run)."""
    if strategy.status == Status.FAILED and strategy.needs_attention:  # failed with money at risk
        held = f"a position of {strategy.position}" if strategy.position else "a position that may be open"
        return (f"The last run ended with {held}. Check it at your broker, then acknowledge it on the strategy's "
                f"page before starting again.")
    halted = kill_switch_for(strategy.user_id)
    if halted is not None:
        return f"Trading is halted by the admin: {halted.reason}"
    if broker_accounts.account_for(strategy.user) is None:
        return "Connect a broker account first."
    late = strategies.mis_cutoff_problems(strategy.product, parse_time(strategy.buy_time),
                                          parse_time(strategy.sell_time))
    if late:  # created before the cut-off setting changed
        return " ".join(dict.fromkeys(late.values()))
    return None


@contextmanager
def run_lock(conn: redis.Redis, strategy: Strategy, blocking: bool = True) -> Iterator[bool]:
    """What START and the deployer hold from a run's checks (start_refusal) through its commit: today the
    strategy's runtime lock, which the engine also holds while it acts, then its user's lock, so the
    user's running strategies are counted against their cap one START at a time and no START slips past
    the risk watcher's halt (which takes only the user's lock: the order strategy → user cannot deadlock).
    Blocking: waits up to 10 s for each, then raises LockError (a RedisError: "engine unavailable"). Not
    blocking: yields False, holding nothing, when someone else holds either (the deployer tries again)."""
    locks = [conn.lock(runtime_lock(strategy.id), timeout=30, blocking_timeout=10),
             risk.user_lock(conn, strategy.user_id)]
    taken = []
    try:
        for lock in locks:
            if not lock.acquire(blocking=blocking):
                if blocking:
                    raise LockError("Unable to acquire lock within the time specified")
                yield False
                return
            taken.append(lock)
        yield True
    finally:
        for lock in reversed(taken):
            try:
                lock.release()
            except LockError:
                pass  # expired under us: nothing of ours left to give back


def _start(strategy: Strategy) -> str:
    db.session.refresh(strategy)
    if is_running(strategy.status):
        return "Already running."  # without the locks: the engine holds the strategy's while it acts
    conn = redis_client.current()
    with run_lock(conn, strategy):
        db.session.refresh(strategy)
        if is_running(strategy.status):
            return "Already running."
        if strategy.weekdays:
            return _deploy(conn, strategy)
        refusal = start_refusal(strategy)
        if refusal:
            raise StartRefused(refusal)
        calendar = current_app.config["TRADING_CALENDAR"]
        now = clock.now()
        today = exchange_date(now)
        if not is_trading_day(today, calendar):
            raise StartRefused(f"{today:%a %d %b %Y} is not a trading day. START on "
                               f"{next_trading_day(today, calendar):%a %d %b} before {strategy.buy_time} IST.")
        if now >= instant(today, parse_time(strategy.buy_time)):
            raise StartRefused(f"Today's buy time {strategy.buy_time} IST has passed. START on "
                               f"{next_trading_day(today, calendar):%a %d %b} before {strategy.buy_time} IST.")
        return begin_run(conn, strategy, today)


def _deploy(conn: redis.Redis, strategy: Strategy) -> str:
    """START of a strategy with weekdays: deployed until STOP. Today's run begins now when today is one of
    its trading days and its buy time is ahead; otherwise the deployer (webapp/services/deploy.py) begins
    each run on its day, and the answer says when the next one is."""
    from webapp.services import deploy  # it begins runs with begin_run below

    standing = _standing_refusal(strategy)
    if standing:
        raise StartRefused(standing)
    calendar = current_app.config["TRADING_CALENDAR"]
    now = clock.now()
    today = exchange_date(now)
    days = deploy.describe_weekdays(strategy.weekdays)
    if deploy.runs_on(strategy, today, calendar) and now < instant(today, parse_time(strategy.buy_time)):
        refusal = start_refusal(strategy)
        if refusal:
            raise StartRefused(refusal)
        begin_run(conn, strategy, today, deploy=True)
        return f"Deployed ({days}) until you STOP it. Running today: {_when(strategy)}."
    following = deploy.next_run_day(strategy, today + timedelta(days=1), calendar)
    if following is None:
        raise StartRefused(f"None of its weekdays ({days}) is a trading day: it would never run.")
    message = f"Deployed: next run {following:%a %d %b}, {_entry(strategy)} at {strategy.buy_time} IST."
    if strategy.deployed:
        return (f"Already deployed ({days}). Next run {following:%a %d %b}, {_entry(strategy)} at "
                f"{strategy.buy_time} IST.")
    strategy.deployed = True
    close_run(strategy)  # the last run's reason goes to its row before the strategy's says this
    strategy.status_reason = message
    db.session.add(_audit(strategy, "strategy_deployed", {"weekdays": strategy.weekdays,
                                                          "next_run": following.isoformat()}))
    db.session.commit()
    live.notify([strategy])
    log.info("strategy deployed", extra={"event": "deployed", "strategy_id": strategy.id,
                                         "user_id": strategy.user_id, "weekdays": strategy.weekdays,
                                         "next_run": following.isoformat()})
    return message


def _entry(strategy: Strategy) -> str:
    return "SELL short" if strategy.direction == exits.SHORT else "BUY"


def _when(strategy: Strategy) -> str:
    """The run's two orders in the trader's words: a short enters with a SELL and exits with a BUY."""
    leave = "BUY back" if strategy.direction == exits.SHORT else "SELL"
    return f"{_entry(strategy)} at {strategy.buy_time} IST, {leave} at {strategy.sell_time} IST"


def _audit(strategy: Strategy, action: str, detail: dict) -> AuditEvent:
    """The owner's own action on their strategy (START and STOP are the owner's alone)."""
    return AuditEvent(actor_user_id=strategy.user_id, subject_user_id=strategy.user_id, strategy_id=strategy.id,
                      action=action, severity="info", detail=detail)


def begin_run(conn: redis.Redis, strategy: Strategy, today: date, *, deploy: bool = False,
              source: str = "START") -> str:
    """A new run of the strategy today: its row, the strategy reset for it, its BUY and SELL triggers. The
    one way a run begins, for START and the deployer alike; the caller holds the strategy's runtime lock
    and has asked start_refusal(). deploy: also mark the strategy deployed, in the same commit."""
    buy_at = instant(today, parse_time(strategy.buy_time))
    sell_at = instant(today, parse_time(strategy.sell_time))
    if not can_transition(strategy.status, Status.WAITING_ENTRY):
        raise StartRefused(f"Cannot start from {strategy.status}.")
    account = broker_accounts.account_for(strategy.user)
    before = {f: getattr(strategy, f) for f in _RUN_FIELDS + ("deployed",)}
    closed = close_run(strategy)
    run = Run(strategy_id=strategy.id, run_date=today.isoformat(), direction=strategy.direction)
    db.session.add(run)
    audit = None
    if deploy and not strategy.deployed:
        strategy.deployed = True
        audit = _audit(strategy, "strategy_deployed", {"weekdays": strategy.weekdays, "next_run": today.isoformat()})
        db.session.add(audit)
    db.session.flush()
    strategy.status = Status.WAITING_ENTRY.value
    strategy.run_id = run.id
    strategy.run_date = today.isoformat()
    strategy.broker_account_id = account.id
    strategy.position = 0
    strategy.entry_price = strategy.exit_price = strategy.stop_price = strategy.target_price = None
    strategy.status_reason = None
    strategy.needs_attention = False
    strategy.stop_requested_at = strategy.stop_reason = None
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
        if audit is not None:
            db.session.delete(audit)
        db.session.commit()
        raise
    if kill_switch_for(strategy.user_id) is not None:
        # The switch was engaged while this START ran: its sweep may have missed us, so stop at once.
        dispatch.enqueue(conn, [Event.for_run(KILL, strategy.id, run.id)])
        raise StartRefused("Trading was halted by the admin while this START ran; it has been stopped.")
    live.notify([strategy])
    log.info("strategy started", extra={"event": source, "strategy_id": strategy.id, "user_id": strategy.user_id,
                                        "run_id": run.id, "event_ids": [event.event_id for event, _ in triggers],
                                        "buy_at": buy_at.isoformat(), "sell_at": sell_at.isoformat(),
                                        "deployed": strategy.deployed})
    return f"Running: {_when(strategy)}."


def close_run(strategy: Strategy) -> Run | None:
    """The strategy's last run gets its outcome from the strategy's own columns, which the next run is about
    to reset: while a run is the current one, the strategy says how it ended; afterwards its row does.
    Returns the run if this call wrote it (None if there is none, or it was closed before: by a skipped
    day, a deployment or an undeployment, whose reasons then replace the strategy's)."""
    if strategy.run_id is None:
        return None
    run = db.session.get(Run, strategy.run_id)
    if run is None or run.status is not None:
        return None
    run.status, run.reason = strategy.status, strategy.status_reason
    run.stop_price, run.target_price = strategy.stop_price, strategy.target_price
    return run


UNDEPLOYED = "Undeployed: no further runs."


def request_stop(strategy: Strategy) -> str:
    """The engine squares off any position (one SELL), then halts; triggers are cancelled at once. A
    deployed strategy is undeployed first: no run begins after this."""
    db.session.refresh(strategy)
    undeployed = strategy.deployed and _undeploy(strategy)
    if not is_running(strategy.status):
        if undeployed:
            return UNDEPLOYED
        raise NotRunning("This strategy is not running.")
    conn = redis_client.current()
    event = Event.for_run(STOP, strategy.id, strategy.run_id)
    # Durable first: recovery resends a STOP lost with Redis (the owner's: no reason of another's).
    strategy.stop_requested_at, strategy.stop_reason = clock.now(), None
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
    tail = f" {UNDEPLOYED}" if undeployed else ""
    if strategy.status == Status.IN_POSITION:
        return f"Stopping: selling {strategy.position} {strategy.symbol} at market first.{tail}"
    return f"Stopping.{tail}"


def _undeploy(strategy: Strategy) -> bool:
    """deployed=False, committed before anything else, so the deployer begins no run after it. No lock is
    taken while a run is on (the engine may hold it for seconds with an order in flight, and a STOP must not
    wait): that run is stopped as any other. Otherwise the lock is taken once, after the commit, to wait
    for a deployer that may be beginning today's run at this very moment; the refresh then sees that run."""
    strategy.deployed = False
    if not is_running(strategy.status):
        close_run(strategy)
        strategy.status_reason = UNDEPLOYED
    db.session.add(_audit(strategy, "strategy_undeployed", {"weekdays": strategy.weekdays}))
    db.session.commit()
    log.info("strategy undeployed", extra={"event": "undeployed", "strategy_id": strategy.id,
                                           "user_id": strategy.user_id})
    if not is_running(strategy.status):
        try:
            with run_lock(redis_client.current(), strategy):
                db.session.refresh(strategy)
        except RedisError:
            # Redis down (or the lock held past 10 s): a deployer cannot have begun a run without Redis
            # either (it undoes a run whose triggers it could not register).
            db.session.refresh(strategy)
        live.notify([strategy])
    return True


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
