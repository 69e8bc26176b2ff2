"""What a strategy looks like right now: from Redis while it runs (the engine and listener keep it
fresh), from the database otherwise. P&L is computed from the run's filled orders, the truth."""
from __future__ import annotations

from datetime import date
from decimal import Decimal

from sqlalchemy import select

from redis.exceptions import RedisError

from webapp import clock, keys, redis_client
from webapp.engine import exits, runtime
from webapp.extensions import db
from webapp.market_calendar import exchange_date, instant, parse_time
from webapp.models import OrderLog, Strategy
from webapp.state_machine import is_running


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value.quantize(Decimal("0.01")))


def _run_rows(strategy: Strategy) -> list[OrderLog]:
    """The current run's orders (its P&L is the run's own)."""
    if not strategy.run_id:
        return []
    return [row for row in orders(strategy) if row.event_id.endswith(f":{strategy.run_id}")]


def pnl(strategy: Strategy, last_price: Decimal | None) -> tuple[Decimal | None, Decimal | None]:
    return fills_pnl(_fills(strategy), strategy.direction, strategy.position, last_price)


def open_quantity(filled: list[OrderLog], direction: str) -> int:
    """What one run's fills entered and did not exit."""
    side = exits.entry_side(direction)
    entered = sum(row.filled_quantity for row in filled if row.side == side)
    return max(entered - sum(row.filled_quantity for row in filled if row.side != side), 0)


def fills_pnl(filled: list[OrderLog], direction: str, position: int,
              last_price: Decimal | None) -> tuple[Decimal | None, Decimal | None]:
    """(rupees, percent of the entry value) of one run's filled orders, marking any open position at
    last_price: what was sold minus what was bought, whichever came first. From what the broker filled,
    partial fills included, never from what was asked for."""
    side = exits.entry_side(direction)
    entered = [row for row in filled if row.side == side]
    if not entered:
        return None, None
    value = {s: sum((row.price * row.filled_quantity for row in filled if row.side == s), Decimal(0))
             for s in ("BUY", "SELL")}
    if position and last_price is None:
        return None, None
    value[exits.exit_side(direction)] += (last_price or 0) * position
    rupees = value["SELL"] - value["BUY"]
    return rupees, (rupees / value[side] * 100) if value[side] else None


def _fills(strategy: Strategy) -> list[OrderLog]:
    return [row for row in _run_rows(strategy) if row.filled_quantity and row.price is not None]


def _decimal(text: str | None) -> Decimal | None:
    return Decimal(text) if text else None


def running_status(strategy_id: int, user_id: int) -> dict | None:
    """The status of a running strategy of this user from Redis alone (the dashboard polls this all day);
    None when it is not running or not theirs, and the caller asks the database."""
    found = runtime.read_running(redis_client.current(), strategy_id)
    if found is None or found[0] != user_id:
        return None
    return _live_status(strategy_id, found[1], found[2])


def _live_status(strategy_id: int, live: dict[str, str], tick: str | None) -> dict | None:
    """Every field from one Redis read: the engine writes the database first, then Redis, so mixing a row
    read before that with Redis read after could show, say, "in position" with no entry price. None when
    the runtime cannot be read (corrupt: the reconciler stops such a strategy; the database answers)."""
    try:
        return _from_runtime(strategy_id, live, tick)
    except (KeyError, ValueError, ArithmeticError):
        return None


def _from_runtime(strategy_id: int, live: dict[str, str], tick: str | None) -> dict:
    last_price = _decimal(tick or live.get("last_price"))
    position = int(live.get("position") or 0)
    entry = _decimal(live.get("entry_price"))
    direction = live.get("direction") or exits.LONG
    gain = (last_price - entry) * exits.sign(direction) if entry and last_price is not None else None
    rupees = gain * position if position and gain is not None else None
    percent = gain / entry * 100 if rupees is not None and entry else None
    return {
        "strategy_id": strategy_id,
        "status": live["status"],
        "source": "runtime",
        "position": position,
        "last_action": live.get("last_action") or None,
        "last_price": _money(last_price),
        "entry_price": _money(entry),
        "exit_price": _money(_decimal(live.get("exit_price"))),
        "direction": direction,
        # The stop in force: the listener's trailed one once it has moved, else the one resolved at entry.
        "stop_price": _money(runtime.stop_in_force(live, direction)),
        "target_price": _money(_decimal(live.get("target_price"))),
        "pnl": _money(rupees),
        "pnl_percent": _money(percent),
        "status_reason": live.get("status_reason") or None,
        "needs_attention": bool(live.get("needs_attention")),
        "updated_at": live.get("updated_at"),
    }


def status_for(strategy: Strategy) -> dict:
    """From Redis while running (see _live_status), from the database otherwise."""
    tick = None
    if is_running(strategy.status):
        live, tick = runtime.read_with_price(redis_client.current(), strategy)
        answer = _live_status(strategy.id, live, tick) if live else None
        if answer is not None:
            return answer
    return _from_database(strategy, tick)


def for_page(strategy: Strategy) -> dict:
    """status_for, or while Redis is down the database's record marked engine_unavailable: the dashboard
    says so plainly instead of failing."""
    try:
        return status_for(strategy)
    except RedisError:
        return {**_from_database(strategy, None), "engine_unavailable": True}


def _from_database(strategy: Strategy, tick: str | None) -> dict:
    try:
        last_price = _decimal(tick)
    except ArithmeticError:
        last_price = None
    rupees, percent = pnl(strategy, last_price if strategy.position else None)
    return {
        "strategy_id": strategy.id,
        "status": strategy.status,
        "source": "database",
        "position": strategy.position,
        "last_action": strategy.last_action,
        "last_price": _money(last_price),
        "entry_price": _money(strategy.entry_price),
        "exit_price": _money(strategy.exit_price),
        "direction": strategy.direction,
        "stop_price": _money(strategy.stop_price),
        "target_price": _money(strategy.target_price),
        "pnl": _money(rupees),
        "pnl_percent": _money(percent),
        "status_reason": strategy.status_reason,
        "needs_attention": strategy.needs_attention,
        "updated_at": strategy.updated_at.isoformat(),
    }


def orders(strategy: Strategy) -> list[OrderLog]:
    return list(db.session.scalars(select(OrderLog).where(OrderLog.strategy_id == strategy.id).order_by(OrderLog.id)))


def order_to_dict(row: OrderLog) -> dict:
    return {
        "id": row.id, "event": row.event, "event_id": row.event_id, "side": row.side, "quantity": row.quantity,
        "filled_quantity": row.filled_quantity, "price": _money(row.price), "broker_order_id": row.broker_order_id, "tag": row.tag, "status": row.status,
        "attempt": row.attempt, "error": row.error, "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


def stale_symbols() -> set[str]:
    """EXCHANGE:SYMBOL keys the listener has marked stale (no ticks during market hours)."""
    try:
        return {key.decode() for key in redis_client.current().hkeys(keys.FEED_STALE)}
    except RedisError:
        return set()


def chart_data(strategy: Strategy) -> dict:
    """Today's price samples for the strategy's symbol, its buy/sell instants, its filled orders as markers,
    and the run's exits: the stop as it moved (a step series of [time, price] from the stop resolved at the
    entry fill, then each move the listener made), the target and the direction. `stop_loss` is the stop in
    force as one number (before the entry fills, a price stop's price; None for % and points). `now` is the
    server's clock, so the chart can range to the present in a browser whose clock is off."""
    day = date.fromisoformat(strategy.run_date) if strategy.run_date else exchange_date(clock.now())
    pipe = redis_client.current().pipeline(transaction=False)
    pipe.lrange(keys.ticks(strategy.exchange, strategy.symbol, day.isoformat()), 0, -1)
    pipe.lrange(keys.stop_moves(strategy.id, strategy.run_id or 0), 0, -1)
    raw, moved = pipe.execute()
    ticks = []
    for item in raw:
        stamp, _, price = item.decode().partition(":")
        ticks.append([int(stamp) / 1000, float(price)])
    fills = _fills(strategy)
    markers = [{"t": row.updated_at.timestamp(), "price": float(row.price), "side": row.side, "event": row.event}
               for row in fills]
    stop: list[list[float]] = []
    entered = [row for row in fills if row.side == exits.entry_side(strategy.direction)]
    if strategy.stop_price is not None and entered:
        stop.append([entered[0].updated_at.timestamp(), float(strategy.stop_price)])
        for item in moved:
            stamp, _, price = item.decode().partition(":")
            stop.append([max(int(stamp) / 1000, stop[0][0]), float(price)])
    if stop:
        stop_loss: float | None = stop[-1][1]
    else:
        stop_loss = float(strategy.stop_loss) if strategy.stop_loss_type in (None, exits.PRICE) else None
    return {"symbol": f"{strategy.exchange}:{strategy.symbol}", "ticks": ticks, "markers": markers,
            "stop_loss": stop_loss, "stop": stop,
            "target": float(strategy.target_price) if strategy.target_price is not None else None,
            "direction": strategy.direction or exits.LONG,
            "buy_at": instant(day, parse_time(strategy.buy_time)).timestamp(),
            "sell_at": instant(day, parse_time(strategy.sell_time)).timestamp(),
            "now": clock.now().timestamp()}  # the server's clock: the chart's x range runs to now while live
