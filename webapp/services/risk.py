"""Risk limits over all of a user's strategies (issue 13, part 5).

- Daily loss limit (User.daily_loss_limit, rupees): the day's P&L is what the user's runs of that IST day
  made from their filled orders (status.fills_pnl, either direction) with every open position marked at
  its symbol's last price (keys.last_price). The risk watcher (jobs/risk_watch.py, a thread of the scheduler
  process) totals it every RISK_CHECK_SECONDS; at or below −limit the user is halted for the day: a DayHalt
  row (unique per user and day, so two watchers cannot both act), a critical audit event and log, and a
  STOP for each of their running strategies through the engine, on the priority queue, which squares any
  position off. START is refused for the rest of that day.
- Max open positions (User.max_open_positions): START is refused while the user already has that many
  running strategies (waiting_entry or in_position). See start_refusal for why START is the place.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Iterable, NamedTuple

import redis
from redis.exceptions import LockError
from sqlalchemy import String, and_, cast, func, literal, select
from sqlalchemy.exc import IntegrityError

from webapp import clock, keys, redis_client
from webapp.money import inr
from webapp.engine import dispatch, schedule
from webapp.engine.events import STOP, Event
from webapp.extensions import db
from webapp.market_calendar import IST, exchange_date
from webapp.models import AuditEvent, DayHalt, OrderLog, Run, Strategy, User
from webapp.services.errors import ValidationFailed
from webapp.services.status import fills_pnl, open_quantity
from webapp.state_machine import RUNNING

log = logging.getLogger("services.risk")

HALT_ACTION = "daily_loss_limit_hit"
LIMITS_ACTION = "risk_limits_changed"
MAX_LOSS_LIMIT = Decimal("999999999999.99")  # Numeric(14, 2)
MAX_POSITIONS = 1000
_AMOUNT = re.compile(r"^[0-9]{1,15}(\.[0-9]+)?$")
_RUNNING = [s.value for s in RUNNING]


def trading_day(now: datetime) -> str:
    return exchange_date(now).isoformat()


# ---------------------------------------------------------------------------------------------------------
# The day's P&L


class _Fill(NamedTuple):  # what status.fills_pnl reads of an order row
    side: str
    price: Decimal
    filled_quantity: int


@dataclass
class _RunRows:
    user_id: int
    direction: str
    strategy_id: int
    position: int  # the strategy's open position when this run is its current one, else 0
    exchange: str
    symbol: str
    limit: Decimal | None
    fills: list[_Fill] = field(default_factory=list)


@dataclass
class DayPnl:
    """One user's P&L over their runs of one IST trading day."""

    user_id: int
    trading_day: str
    limit: Decimal | None = None
    realised: Decimal = Decimal(0)  # runs with no open position: what their fills made
    unrealised: Decimal = Decimal(0)  # runs in position: their fills with the position marked at the last price
    open_positions: int = 0  # runs holding a position
    unpriced: list[int] = field(default_factory=list)  # strategies in position with no last price (left out)
    runs: int = 0

    @property
    def total(self) -> Decimal:
        return self.realised + self.unrealised

    @property
    def breached(self) -> bool:
        return self.limit is not None and self.limit > 0 and self.total <= -self.limit

    def to_dict(self) -> dict:
        money = lambda v: str(Decimal(v).quantize(Decimal("0.01")))  # noqa: E731
        return {"trading_day": self.trading_day, "pnl": money(self.total), "realised": money(self.realised),
                "unrealised": money(self.unrealised), "open_positions": self.open_positions,
                "unpriced_strategies": list(self.unpriced), "runs": self.runs,
                "daily_loss_limit": None if self.limit is None else money(self.limit),
                "limit_hit": self.breached}


def _run_rows(day: str, user_ids: Iterable[int] | None = None, with_limit_only: bool = False) -> dict[int, _RunRows]:
    """Every run of that day of these users (or of every user with a daily loss limit), with its filled
    orders, in ONE query: a run's orders are those of its strategy whose event id ends with ":{run id}"."""
    this_run = literal(":") + cast(Run.id, String)
    query = (
        select(Run.id, Run.direction, Strategy.user_id, Strategy.id, Strategy.run_id, Strategy.position,
               Strategy.exchange, Strategy.symbol, User.daily_loss_limit,
               OrderLog.side, OrderLog.price, OrderLog.filled_quantity)
        .select_from(Run)
        .join(Strategy, Strategy.id == Run.strategy_id)
        .join(User, User.id == Strategy.user_id)
        .outerjoin(OrderLog, and_(OrderLog.strategy_id == Run.strategy_id, OrderLog.filled_quantity > 0,
                                  OrderLog.price.is_not(None), OrderLog.event_id.endswith(this_run)))
        .where(Run.run_date == day)
    )
    if user_ids is not None:
        query = query.where(Strategy.user_id.in_(list(user_ids)))
    if with_limit_only:
        query = query.where(User.daily_loss_limit.is_not(None), User.disabled.is_(False))
    runs: dict[int, _RunRows] = {}
    for (run_id, direction, user_id, strategy_id, current_run, position, exchange, symbol, limit,
         side, price, filled) in db.session.execute(query):
        run = runs.get(run_id)
        if run is None:
            run = runs[run_id] = _RunRows(user_id, direction, strategy_id,
                                          position if current_run == run_id else 0, exchange, symbol, limit)
        if side is not None:
            run.fills.append(_Fill(side, price, filled))
    return runs


def _last_prices(conn: redis.Redis, runs: Iterable[_RunRows]) -> dict[tuple[str, str], Decimal | None]:
    """The last price of every instrument held, in one round trip."""
    held = sorted({(r.exchange, r.symbol) for r in runs if r.position})
    if not held:
        return {}
    raw = conn.mget([keys.last_price(exchange, symbol) for exchange, symbol in held])
    prices: dict[tuple[str, str], Decimal | None] = {}
    for pair, value in zip(held, raw):
        try:
            prices[pair] = Decimal(value.decode()) if value else None
        except (InvalidOperation, UnicodeDecodeError):
            prices[pair] = None
    return prices


def _totals(day: str, runs: dict[int, _RunRows], prices: dict[tuple[str, str], Decimal | None],
            users: dict[int, DayPnl] | None = None) -> dict[int, DayPnl]:
    users = users if users is not None else {}
    for run in runs.values():
        pnl = users.get(run.user_id)
        if pnl is None:
            pnl = users[run.user_id] = DayPnl(run.user_id, day, run.limit)
        pnl.runs += 1
        if not run.position and open_quantity(run.fills, run.direction):  # type: ignore[arg-type]
            # Closed without an exit fill of ours (the broker's MIS square-off, a position a human
            # acknowledged): what it made is not ours to guess, and counting the entry alone as a loss
            # would halt the user for nothing. Left out, and said so.
            pnl.unpriced.append(run.strategy_id)
            continue
        if not run.position:
            made, _ = fills_pnl(run.fills, run.direction, 0, None)  # type: ignore[arg-type]
            pnl.realised += made or 0
            continue
        pnl.open_positions += 1
        made, _ = fills_pnl(run.fills, run.direction, run.position,  # type: ignore[arg-type]
                            prices.get((run.exchange, run.symbol)))
        if made is None:
            pnl.unpriced.append(run.strategy_id)  # no price to mark it at: left out, and said so
        else:
            pnl.unrealised += made
    return users


def day_pnl(user: User, day: str, conn: redis.Redis | None = None, without_redis: bool = False) -> DayPnl:
    """One user's P&L for one IST trading day ("YYYY-MM-DD"): one query and one Redis round trip.
    without_redis: while Redis cannot answer, open positions are left out (listed as unpriced) instead of
    raising (pages; never the watcher or START)."""
    runs = _run_rows(day, [user.id])
    try:
        prices = _last_prices(conn or redis_client.current(), runs.values())
    except redis.RedisError:
        if not without_redis:
            raise
        prices = {}
    result = _totals(day, runs, prices)
    return result.get(user.id) or DayPnl(user.id, day, user.daily_loss_limit)


def day_pnls(day: str, conn: redis.Redis | None = None) -> dict[int, DayPnl]:
    """The watcher's round: every user with a daily loss limit and a run that day, however many, in one
    query and one Redis round trip."""
    conn = conn or redis_client.current()
    runs = _run_rows(day, with_limit_only=True)
    return _totals(day, runs, _last_prices(conn, runs.values()))


# ---------------------------------------------------------------------------------------------------------
# The halt


def halt_for(user_id: int, day: str) -> DayHalt | None:
    return db.session.scalar(select(DayHalt).where(DayHalt.user_id == user_id, DayHalt.trading_day == day))


def user_lock(conn: redis.Redis, user_id: int, blocking_timeout: float = 10):  # type: ignore[no-untyped-def]
    """The per-user lock (keys.user_lock): START holds it from its checks through its run's commit."""
    return conn.lock(keys.user_lock(user_id), timeout=30, blocking_timeout=blocking_timeout)


def halt(pnl: DayPnl, now: datetime, conn: redis.Redis, lock_wait: float = 2.0) -> DayHalt | None:
    """Halts the user for the day and stops every running strategy of theirs through the engine. Returns
    None when another watcher got there first (the DayHalt is unique per user and day)."""
    at = now.astimezone(IST).strftime("%H:%M")
    summary = f"Daily loss limit hit at {at} IST ({inr(pnl.total)} of {inr(-pnl.limit)})"
    lock = user_lock(conn, pnl.user_id, blocking_timeout=lock_wait)
    try:
        locked = lock.acquire()
    except redis.RedisError:
        locked = False
    if not locked:  # a START holds it too long: halt anyway; the next round's sweep catches a late START
        log.warning("halting without the user's lock", extra={"event": HALT_ACTION, "user_id": pnl.user_id})
    try:
        row = DayHalt(user_id=pnl.user_id, trading_day=pnl.trading_day, reason=summary[:255], created_at=now)
        db.session.add(row)
        db.session.add(AuditEvent(
            actor_user_id=None, subject_user_id=pnl.user_id, action=HALT_ACTION, severity="critical",
            detail={"trading_day": pnl.trading_day, "pnl": str(pnl.total), "realised": str(pnl.realised),
                    "unrealised": str(pnl.unrealised), "daily_loss_limit": str(pnl.limit),
                    "open_positions": pnl.open_positions, "unpriced_strategies": pnl.unpriced,
                    "at": now.isoformat()}))
        try:
            db.session.commit()  # from here no START of this user passes today, before any STOP goes out
        except IntegrityError:
            db.session.rollback()
            return None
        running = _running_without_stop(pnl.user_id)
        # Logged before any STOP goes out, so a Redis failure sending them still leaves the line a human reads.
        log.critical("daily loss limit hit", extra={
            "event": HALT_ACTION, "user_id": pnl.user_id, "trading_day": pnl.trading_day, "pnl": str(pnl.total),
            "realised": str(pnl.realised), "unrealised": str(pnl.unrealised), "daily_loss_limit": str(pnl.limit),
            "open_positions": pnl.open_positions, "unpriced_strategies": pnl.unpriced,
            "strategies_stopped": [s.id for s in running]})
        reason = (f"daily loss limit {inr(pnl.limit)} hit: the day's P&L was {inr(pnl.total)} at {at} IST; "
                  f"trading resumes next trading day")
        stop_running(conn, pnl.user_id, reason, running)
    finally:
        if locked:
            try:
                lock.release()
            except (LockError, redis.RedisError):
                pass
    return row


def _running_without_stop(user_id: int) -> list[Strategy]:
    return list(db.session.scalars(select(Strategy).where(
        Strategy.user_id == user_id, Strategy.status.in_(_RUNNING), Strategy.stop_requested_at.is_(None))))


def stop_running(conn: redis.Redis, user_id: int, reason: str,
                 strategies: list[Strategy] | None = None) -> list[Strategy]:
    """A STOP (with the reason the user will read) for each running strategy of the user that has none
    asked for yet, as lifecycle.request_stop does it: stop_requested_at is committed first, so recovery
    sends the STOP again if Redis loses it; then the STOPs go on the priority queue and the BUY/SELL
    triggers are cancelled. A deployed strategy stays deployed: the halt is for the day."""
    if strategies is None:
        strategies = _running_without_stop(user_id)
    if not strategies:
        return []
    now = clock.now()
    for strategy in strategies:
        strategy.stop_requested_at, strategy.stop_reason = now, reason[:255]
    db.session.commit()
    events = [Event.for_run(STOP, s.id, s.run_id, reason=reason[:255]) for s in strategies]
    for batch in dispatch.batches(events, dispatch.live_workers(conn)):
        dispatch.enqueue(conn, batch)
    pipe = conn.pipeline(transaction=False)
    for strategy in strategies:
        schedule.cancel(pipe, strategy.id)
    pipe.execute()
    log.warning("strategies stopped by the daily loss limit", extra={
        "event": STOP, "user_id": user_id, "strategy_ids": [s.id for s in strategies],
        "event_ids": [e.event_id for e in events]})
    return strategies


def sweep_halted(conn: redis.Redis, day: str) -> list[Strategy]:
    """Running strategies of users halted today with no STOP asked for (a START that raced the halt past
    the lock's wait): each gets its STOP now. One query when there are none."""
    late = list(db.session.scalars(
        select(Strategy).join(DayHalt, and_(DayHalt.user_id == Strategy.user_id, DayHalt.trading_day == day))
        .where(Strategy.status.in_(_RUNNING), Strategy.stop_requested_at.is_(None))))
    by_user: dict[int, list[Strategy]] = {}
    for strategy in late:
        by_user.setdefault(strategy.user_id, []).append(strategy)
    stopped: list[Strategy] = []
    for user_id, strategies in by_user.items():
        halt_row = halt_for(user_id, day)
        reason = f"{halt_row.reason if halt_row else 'Daily loss limit hit'}: trading resumes next trading day"
        stopped += stop_running(conn, user_id, reason, strategies)
    return stopped


def check(now: datetime | None = None, conn: redis.Redis | None = None, lock_wait: float = 2.0) -> list[int]:
    """One watcher round: the users halted in it. A few queries and one Redis read however many users."""
    now = now or clock.now()
    conn = conn or redis_client.current()
    day = trading_day(now)
    already = set(db.session.scalars(select(DayHalt.user_id).where(DayHalt.trading_day == day)))
    halted = []
    for pnl in day_pnls(day, conn).values():
        if pnl.user_id in already or not pnl.breached:
            continue
        if halt(pnl, now, conn, lock_wait) is not None:
            halted.append(pnl.user_id)
    if already or halted:
        sweep_halted(conn, day)
    return halted


# ---------------------------------------------------------------------------------------------------------
# START


def start_refusal(user: User, now: datetime | None = None) -> str | None:
    """Why this user may not START a strategy now, or None.

    - The day's halt: the daily loss limit was hit today (the message says when and by how much).
    - The limit already crossed by today's P&L though no watcher has acted yet (one is down): refused too.
    - Max open positions: the user's running strategies (waiting_entry or in_position) against
      max_open_positions. The strategy being started is not running, so it is not among them.

    Why counting at START is the race-safe place: only START turns a strategy that is not running into a
    running one (the engine's BUY moves waiting_entry to in_position, already counted; every other event
    only ends runs). So the count can only grow at START, and if the caller holds the user's lock
    (`user_lock(conn, user.id)`, keys.user_lock) from this check through the commit of the new run, two
    STARTs of the same user are counted one after the other and the limit can never be overshot, while an
    exit arriving meanwhile can only make the count smaller (a refusal that might have passed a moment
    later, never the other way). Counting later, at the BUY instant, would put a cross-strategy decision
    in the middle of the 09:15 herd and refuse an entry the user was told had started. The same lock is
    taken by the watcher when it halts a user, so a START either commits before the halt's sweep (and is
    stopped by it) or checks after the DayHalt row exists (and is refused); a START that outwaits the
    watcher's lock wait is still stopped by the next round's sweep.
    """
    now = now or clock.now()
    day = trading_day(now)
    halted = halt_for(user.id, day)
    if halted is not None:
        return f"{halted.reason}: trading resumes next trading day."
    if user.daily_loss_limit is not None:
        pnl = day_pnl(user, day)
        if pnl.breached:
            return (f"Daily loss limit reached ({inr(pnl.total)} of {inr(-pnl.limit)} today): trading "
                    f"resumes next trading day.")
    if user.max_open_positions is not None:
        running = running_count(user.id)
        if running >= user.max_open_positions:
            return (f"You already have {running} running strategies, your maximum of open positions "
                    f"({user.max_open_positions}). Stop one, or raise the limit in Settings → Risk limits.")
    return None


def running_count(user_id: int) -> int:
    return db.session.scalar(select(func.count(Strategy.id)).where(
        Strategy.user_id == user_id, Strategy.status.in_(_RUNNING))) or 0


# ---------------------------------------------------------------------------------------------------------
# Settings


def describe(user: User, now: datetime | None = None) -> dict:
    """The user's limits, today's P&L against them, and today's halt (the settings page and the API)."""
    now = now or clock.now()
    day = trading_day(now)
    pnl = day_pnl(user, day, without_redis=True)
    pnl.limit = user.daily_loss_limit
    halted = halt_for(user.id, day)
    return {
        "daily_loss_limit": None if user.daily_loss_limit is None else str(user.daily_loss_limit),
        "max_open_positions": user.max_open_positions,
        "running_strategies": running_count(user.id),
        "today": pnl.to_dict(),
        "halt": None if halted is None else {"trading_day": halted.trading_day, "reason": halted.reason,
                                             "created_at": halted.created_at.isoformat()},
    }


def _loss_limit(raw: object) -> Decimal | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise ValueError("Enter an amount in rupees, e.g. 5000, or leave it empty for no limit.")
    text = str(raw).strip().replace(",", "").lstrip("₹").strip()
    if text.startswith("-") and _AMOUNT.match(text[1:]):
        raise ValueError("The daily loss limit must be more than ₹0 (leave it empty for no limit).")
    if not _AMOUNT.match(text):  # ASCII digits only: Decimal() would also take "٣", "1_000" or "NaN"
        raise ValueError("Enter an amount in rupees, e.g. 5000, or leave it empty for no limit.")
    value = Decimal(text)
    if value <= 0:
        raise ValueError("The daily loss limit must be more than ₹0 (leave it empty for no limit).")
    if value > MAX_LOSS_LIMIT:
        raise ValueError(f"The daily loss limit can be at most {inr(MAX_LOSS_LIMIT)}.")
    if value != value.quantize(Decimal("0.01")):
        raise ValueError("Use at most two decimals (paise).")
    return value.quantize(Decimal("0.01"))


def _max_positions(raw: object) -> int | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    message = f"Enter a whole number from 1 to {MAX_POSITIONS}, or leave it empty for no limit."
    if isinstance(raw, bool) or isinstance(raw, float) and not raw.is_integer():
        raise ValueError(message)
    text = str(int(raw)) if isinstance(raw, (int, float)) else str(raw).strip() if isinstance(raw, str) else ""
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_POSITIONS:
        raise ValueError(message)
    return int(text)


def update_limits(user: User, data: dict, actor_id: int | None = None) -> User:
    """Sets the limits present in data (a field absent is left as it is; empty or null: no limit).
    Per-field errors raise ValidationFailed; a change is audited. Today's halt stands whatever the limit
    becomes: it ends with the day."""
    parsers = {"daily_loss_limit": _loss_limit, "max_open_positions": _max_positions}
    values: dict[str, object] = {}
    errors: dict[str, str] = {}
    for name, parse in parsers.items():
        if name not in data:
            continue
        try:
            values[name] = parse(data[name])
        except ValueError as exc:
            errors[name] = str(exc)
    if errors:
        raise ValidationFailed(errors)
    before = {name: getattr(user, name) for name in values}
    changed = {name: value for name, value in values.items() if before[name] != value}
    if not changed:
        return user
    for name, value in changed.items():
        setattr(user, name, value)
    text = lambda v: None if v is None else str(v)  # noqa: E731
    db.session.add(AuditEvent(actor_user_id=actor_id or user.id, subject_user_id=user.id, action=LIMITS_ACTION,
                              detail={name: {"from": text(before[name]), "to": text(value)}
                                      for name, value in changed.items()}))
    db.session.commit()
    log.info("risk limits changed", extra={"event": LIMITS_ACTION, "user_id": user.id,
                                           **{name: text(value) for name, value in changed.items()}})
    return user


def current_halt(user_id: int) -> DayHalt | None:
    """Today's halt of this user, for the banner on every page."""
    return halt_for(user_id, trading_day(clock.now()))
